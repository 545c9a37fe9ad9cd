"""What every suite is to the entry point (`python -m bench <suite>`): a module with a
`run(options) -> Outcome`. The suite measures; the entry point prints, keeps the figures and
writes the section."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.stack import Stores


@dataclass(frozen=True)
class Options:
    quick: bool = False  # seconds, not minutes: a smoke run that proves the suite still runs
    stores: Stores | None = None  # servers already running (the test suite's), else its own


@dataclass
class Outcome:
    lines: list[str]  # the section of BENCHMARKS.md, Markdown
    figures: dict[str, Any] = field(default_factory=dict)  # raw, to bench/results/<suite>.json
    problems: list[str] = field(default_factory=list)  # what went wrong: the run fails
    skipped: str | None = None  # why the suite cannot run on this machine (nothing measured)


def command(name: str) -> str:
    """How a section says it was made."""
    return f"python -m bench {name} --write"
