"""`python -m bench <suite>|all [--quick] [--write]`: the one entry point of the benchmarks.

Each suite starts its own stack (bench/stack.py), prints its section, keeps its raw figures in
bench/results/<suite>.json (an output: git-ignored, rewritten by every run) and, with --write,
replaces its section of BENCHMARKS.md (bench/sections.py). --quick runs it in seconds, as
tests/bench/ does in CI, and never writes BENCHMARKS.md. Exit status: 0 measured, 1 a suite
reported problems or failed, 2 bad arguments; a suite that cannot run on this machine (a model
that is not bundled) says why and counts as skipped, not failed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

from bench.sections import write_section
from bench.suite import Options, Outcome

# `all` (`make bench`), in this order: the front half first, the long real-time ones last.
SUITES = (
    "ingestion",
    "backhalf",
    "access_cost",
    "fanout",
    "cluster",
    "ai_quality",
    "real_calls",
    "capacity",
    "live_transcripts",
    "local_model",
    "ai_retries",
    "pbx_feeds",
    "search",
    "redaction",
    "redis_residue",
    "idle",
)
ON_DEMAND = ("wait_cost",)  # its figures are quoted by hand (the reliability runs' section)
RESULTS = Path(__file__).resolve().parent / "results"


def run_suite(name: str, options: Options) -> Outcome:
    module = importlib.import_module(f"bench.{name}")
    outcome: Outcome = module.run(options)
    return outcome


def keep(name: str, outcome: Outcome, quick: bool) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}{'-quick' if quick else ''}.json"
    path.write_text(json.dumps(outcome.figures, indent=1, default=str))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("suite", choices=(*SUITES, *ON_DEMAND, "all"))
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds")
    parser.add_argument("--write", action="store_true", help="write the section(s)")
    args = parser.parse_args(argv)
    if args.quick and args.write:
        parser.error("--quick figures are a smoke run's: they never go to BENCHMARKS.md")
    names = SUITES if args.suite == "all" else (args.suite,)
    failed: list[str] = []
    for name in names:
        print(f"== bench {name}{' (quick)' if args.quick else ''}", flush=True)
        started = time.monotonic()
        try:
            outcome = run_suite(name, Options(quick=args.quick))
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        if outcome.skipped:
            print(f"skipped: {outcome.skipped}", flush=True)
            continue
        print("\n".join(outcome.lines), flush=True)
        print(f"figures: {keep(name, outcome, args.quick)} ({time.monotonic() - started:.0f} s)")
        if outcome.problems:
            print("problems:\n  " + "\n  ".join(outcome.problems), flush=True)
            failed.append(name)
        elif args.write:
            print(f"wrote its section of {write_section(name, outcome.lines)}", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
