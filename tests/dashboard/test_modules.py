"""The dashboard's modules (service/dashboard/*.js): the pure ones under `node --test`
(tests/dashboard/*.test.mjs: the board's state model, a call's conversation), and every module
the page loads held to the page's rules: served, small, text-only."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.dashboard.modules import SOURCE, page_modules
from tests.needs import missing

HERE = Path(__file__).resolve().parent  # the *.test.mjs files
MAX_LINES = 300  # a module over this does more than one job
NODE_HINT = "install Node.js 18 or later: `make system-packages` as root (Debian/Ubuntu: nodejs)"


def test_the_state_model_and_the_conversation_pass_their_node_tests():
    node = shutil.which("node")
    if node is None:
        missing(f"node is missing: {NODE_HINT}")
    files = sorted(HERE.glob("*.test.mjs"))
    assert len(files) >= 2, files
    ran = subprocess.run(
        [node, "--test", "--test-reporter=tap", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=HERE,
    )
    report = ran.stdout + ran.stderr
    assert ran.returncode == 0, report
    # Every test of every file ran and passed: none was skipped or filtered out.
    written = sum(len(re.findall(r"^test\(", f.read_text(), re.MULTILINE)) for f in files)
    passed = re.search(r"^# pass (\d+)$", report, re.MULTILINE)
    assert passed, report
    assert int(passed[1]) == written >= 15, report
    assert re.search(r"^# fail 0$", report, re.MULTILINE), report


def test_the_page_loads_every_module_of_the_dashboard_and_each_is_small():
    loaded = {m.name for m in page_modules()}
    on_disk = {m.name for m in SOURCE.glob("*.js")}
    assert loaded == on_disk  # none unused, none missing
    for module in page_modules():
        lines = len(module.read_text().splitlines())
        assert lines <= MAX_LINES, f"{module.name}: {lines} lines"
