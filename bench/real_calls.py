"""Real calls (`python -m bench.real_calls --write`, part of `make bench`): minutes of real speech
(espeak-ng, else simulate/recordings/) as 8 kHz μ-law in 20 ms frames, two tracks (Twilio
`both_tracks`), over the media WebSocket, against `make run`'s layout (bench/real_calls_layout.py)
with an instant mock AI; the client shares the machine's cores with the stack.

Phases (bench/real_calls_phases.py): length (1-minute against --minutes calls), fast, ramp, soak.
The figures of a run go to bench/results/real_calls.json (or --out); --write renders BENCHMARKS.md's
"Real calls" section from them and from the before figures (--before), if that file exists;
--render "<command>" renders it again from --out's figures without a run.
--quick is a smoke run of a few seconds a phase (under 2 minutes in all); it never writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import uvloop

from bench import real_calls_report
from bench.real_calls_frames import Dialogue, real_dialogue
from bench.real_calls_layout import INSTANT_AI, start_layout
from bench.real_calls_load import ramp_phase, soak_phase
from bench.real_calls_phases import QUICK, Bench, Plan, fast_phase, length_phase
from bench.sections import loadavg
from devstack.stack import ROOT

RESULTS = ROOT / "bench" / "results"
PHASES = ("length", "fast", "ramp", "soak")


async def run_phases(plan: Plan, phases: tuple[str, ...], dialogue: Dialogue) -> dict[str, Any]:
    layout = start_layout()
    b = Bench(layout, plan, dialogue)
    figures: dict[str, Any] = {"meta": meta(plan, layout.cores, dialogue)}
    try:
        for name, phase in (("length", length_phase), ("fast", fast_phase), ("ramp", ramp_phase)):
            if name in phases:
                print(f"real calls: {name}…", flush=True)
                figures[name] = await phase(b)
                print(real_calls_report.one_line(name, figures[name]), flush=True)
        if "soak" in phases:
            held = figures.get("ramp", {}).get("most_calls_held") or plan.ramp[0]
            print(f"real calls: soak at {max(1, held // 2)} calls…", flush=True)
            figures["soak"] = await soak_phase(b, max(1, held // 2))
            print(real_calls_report.one_line("soak", figures["soak"]), flush=True)
    finally:
        figures["meta"]["loadavg_end"] = loadavg()
        await b.close()
        await layout.redis.aclose()
        layout.stack.close(keep_logs=RESULTS / "real_calls_logs")
    return figures


def meta(plan: Plan, cores: int, dialogue: Dialogue) -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.rstrip()  # not strip(): a porcelain line may start with a space

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "subject": git("log", "-1", "--format=%s"),
        "uncommitted": [  # others' work in the tree measured; this benchmark's own files aside
            path
            for line in git("status", "--porcelain").splitlines()
            if not (path := line[3:]).startswith(
                ("bench/real_calls", "bench/results", "tests/bench")
            )
        ],
        "tree": str(ROOT),
        "started_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {cores} cores, Python {platform.python_version()}",
        "layout": f"{cores} API processes (WEB_CONCURRENCY), {cores} arq workers, "
        "embedded PostgreSQL and Redis (AOF everysec), as `make run` starts them",
        "ai": INSTANT_AI,
        "speech": dialogue.source,
        "dialogue_s": len(dialogue) / 50,
        "loadavg_start": loadavg(),
        "plan": dataclasses.asdict(plan),
    }


def ramp_repeat(run: dict[str, Any]) -> dict[str, Any]:
    """What the section shows of another run's ramp."""
    keep = ("calls", "loadavg", "lag_p99_ms", "pace_slip_p99_ms", "lost_frames", "holds")
    return {
        **{k: run["meta"][k] for k in ("commit", "started_at", "loadavg_start")},
        "most_calls_held": run["ramp"]["most_calls_held"],
        "steps": [{k: step.get(k) for k in keep} for step in run["ramp"]["steps"]],
    }


def plan_of(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else Plan()
    changes: dict[str, Any] = {}
    if args.minutes is not None:
        changes["long_s"] = 60 * args.minutes
    if args.soak_s is not None:
        changes["soak_s"] = args.soak_s
    if args.ramp is not None:
        changes["ramp"] = tuple(int(n) for n in args.ramp.split(","))
    if args.ramp_s is not None:
        changes["ramp_s"] = args.ramp_s
    return dataclasses.replace(plan, **changes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smoke run, a few seconds a phase")
    parser.add_argument("--minutes", type=float, help="the long calls' length (default 10)")
    parser.add_argument("--soak-s", type=float, help="the soak's length (default 600)")
    parser.add_argument(
        "--ramp", help="calls at once, step by step (default 5,10,20,40,80,160,320)"
    )
    parser.add_argument("--ramp-s", type=float, help="each ramp step's calls' length (default 30)")
    parser.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset")
    parser.add_argument("--out", type=Path, default=RESULTS / "real_calls.json")
    parser.add_argument("--before", type=Path, default=RESULTS / "real_calls_before.json")
    parser.add_argument("--write", action="store_true", help='write the "Real calls" section')
    parser.add_argument(
        "--render", help="no run: write the section from --out's figures, naming this command"
    )
    parser.add_argument(
        "--add-ramp",
        type=Path,
        nargs="+",
        help="no run: add these runs' ramps (e.g. --phases ramp, before and after in turn) to "
        "--out's figures as repeats: a shared machine's load moves the ramp's answer",
    )
    args = parser.parse_args()
    if args.add_ramp:
        figures = json.loads(args.out.read_text())
        figures.setdefault("ramp_repeats", []).extend(
            ramp_repeat(json.loads(p.read_text())) for p in args.add_ramp
        )
        args.out.write_text(json.dumps(figures, indent=1))
        return 0
    before = json.loads(args.before.read_text()) if args.before.exists() else None
    if args.render:
        figures = json.loads(args.out.read_text())
        print(f"wrote {real_calls_report.write(figures, before, args.render)}")
        return 0
    plan = plan_of(args)
    phases = tuple(p for p in args.phases.split(",") if p)
    figures = uvloop.run(run_phases(plan, phases, real_dialogue()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=1))
    print(f"real calls: figures in {args.out}")
    if args.write and not args.quick:
        command = " ".join(["python -m bench.real_calls", *sys.argv[1:]])
        print(f"wrote {real_calls_report.write(figures, before, command)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
