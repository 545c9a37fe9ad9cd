"""The event feed's section of BENCHMARKS.md (bench/fanout.py measures it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPORT = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADING = "## Live event feed: fan-out to 500 subscribers"


def section(figures: dict[str, Any], command: str) -> list[str]:
    return [HEADING, "", f"Command: `{command}`", "", "```", str(figures)[:2000], "```", ""]


def write(lines: list[str]) -> Path:
    raise NotImplementedError
