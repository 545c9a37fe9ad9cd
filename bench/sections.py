"""BENCHMARKS.md is written by several benchmarks, a section each: the one home of how a section
replaces its earlier version without touching the others'."""

from __future__ import annotations

from pathlib import Path

REPORT = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"

# The sections after the front half's (bench/run.py), in the order `make bench` writes them: a
# section runs from its heading to the next of these headings, or to the end of the file.
SECTIONS = (
    "## The back half",
    "## Access control on the fast path",
    "## Live event feed",
    "## Redis Cluster",
    "<!-- ai-quality -->",  # bench/ai_quality.py's section starts with its marker
    "## Reliability runs",  # written by hand from the chaos runs: no benchmark rewrites it
    "## Capacity model: a worked example",  # by hand too, from the figures of the others
    "## Real calls",  # bench/real_calls.py's
    "## Live transcripts",  # bench/live_transcripts.py's
)


def write_section(heading: str, lines: list[str]) -> Path:
    """Replace the section that starts with `heading` by `lines` (which start with it), or add
    them at the end; every other section stays as it was."""
    text = REPORT.read_text() if REPORT.exists() else "# Benchmarks\n"
    body = "\n".join(lines).rstrip("\n") + "\n"
    start = text.find(heading)
    if start < 0:
        REPORT.write_text(text.rstrip("\n") + "\n\n" + body)
        return REPORT
    after = [found for h in SECTIONS if (found := text.find(h, start + len(heading))) > start]
    end = min(after, default=len(text))
    rest = text[end:]
    REPORT.write_text(text[:start] + body + ("\n" + rest if rest else ""))
    return REPORT


def later_sections(text: str) -> str:
    """Everything from the first of SECTIONS on: what the front half keeps when it rewrites."""
    starts = [text.index(h) for h in SECTIONS if h in text]
    return "\n" + text[min(starts) :] if starts else ""


def loadavg() -> str:
    """The machine's load average (1, 5, 15 min): every section says how busy the machine was."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"
