"""The dashboard's script modules as the page loads them: from index.html's entry module through
every `import ... from "./x.js"`, so that a test can hold each one to the page's rules."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import ROOT

SOURCE = ROOT / "service" / "dashboard"
ENTRY = re.compile(r'<script type="module" src="/dashboard/([a-z-]+\.js)"></script>')
IMPORT = re.compile(r'^import [^;]*? from "\./([^"]+)";', re.MULTILINE | re.DOTALL)


def page_modules() -> list[Path]:
    """Every module the page loads, the entry first, each once."""
    entries = ENTRY.findall((SOURCE / "index.html").read_text())
    found: list[Path] = []
    pending = [SOURCE / name for name in entries]
    while pending:
        module = pending.pop(0)
        if module in found:
            continue
        found.append(module)
        pending.extend(SOURCE / name for name in IMPORT.findall(module.read_text()))
    return found
