"""The one report writer: each suite owns one section of BENCHMARKS.md, between
`<!-- bench:NAME -->` and `<!-- /bench:NAME -->`. Writing a section replaces only what lies
between its markers; the previous figures move into a folded "previous run" block beside the new
ones (one run back, so the file does not grow), and everything outside the markers (the
introduction, the sections written by hand) is never touched."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

REPORT = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
PREVIOUS_OPEN = "<details><summary>The previous run's figures</summary>"
PREVIOUS_CLOSE = "</details>"


def ratio(part: float, whole: float) -> float:
    """part / whole, or NaN (printed "nan") where a measured divisor is zero: a quick run on a
    loaded machine can measure no CPU at all in a short window, and a report never fails for it."""
    return part / whole if whole > 0 else float("nan")


def markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"


def read_section(name: str, text: str) -> str | None:
    """What lies between a section's markers, or None when the file has no such section."""
    begin, end = markers(name)
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < start:
        return None
    return text[start + len(begin) : stop].strip("\n")


def _without_previous(body: str) -> str:
    at = body.find(PREVIOUS_OPEN)
    return body[:at].rstrip("\n") if at >= 0 else body


def _folded(body: str) -> list[str]:
    """An earlier section's figures, headings made bold so they leave the page's outline alone."""
    lines = [
        f"**{m.group(1)}**" if (m := re.match(r"#+\s+(.*)", line)) else line
        for line in _without_previous(body).splitlines()
    ]
    return ["", PREVIOUS_OPEN, "", *lines, "", PREVIOUS_CLOSE]


def render(name: str, lines: list[str], text: str) -> str:
    """`text` with section `name` replaced by `lines` (the earlier figures folded beside them),
    or with the section added at the end."""
    begin, end = markers(name)
    old = read_section(name, text)
    body = [*lines] if old is None or not old.strip() else [*lines, *_folded(old)]
    block = "\n".join([begin, *body, end])
    if old is None:
        return text.rstrip("\n") + "\n\n" + block + "\n"
    start, stop = text.find(begin), text.find(end) + len(end)
    return text[:start] + block + text[stop:]


def write_section(name: str, lines: list[str]) -> Path:
    text = REPORT.read_text() if REPORT.exists() else "# Benchmarks\n"
    REPORT.write_text(render(name, [line.rstrip() for line in lines], text))
    return REPORT


def loadavg() -> str:
    """The machine's load average (1, 5, 15 min): every section says how busy the machine was."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def machine() -> str:
    """The machine, in one line, for every section."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                model,
            )
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}"
