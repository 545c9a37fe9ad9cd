"""Real calls (`python -m bench real_calls`): minutes of real speech
(espeak-ng, else simulate/recordings/) as 8 kHz μ-law in 20 ms frames, two tracks (Twilio
`both_tracks`), over the media WebSocket, against `make run`'s layout (bench/real_calls_layout.py)
with an instant mock AI; the client shares the machine's cores with the stack.

Phases (bench/real_calls_phases.py): length (1-minute against 10-minute calls), fast, ramp,
soak. The stack's logs are kept in bench/results/real_calls_logs/ (not by a --quick run).
"""

from __future__ import annotations

import dataclasses
import platform
import subprocess
import time
from typing import Any

import uvloop

from bench import real_calls_report
from bench.real_calls_frames import Dialogue, real_dialogue
from bench.real_calls_layout import start_layout
from bench.real_calls_load import ramp_phase, soak_phase
from bench.real_calls_phases import QUICK, Bench, Plan, fast_phase, length_phase
from bench.sections import loadavg
from bench.stack import CORES, INSTANT_AI
from bench.suite import Options, Outcome, command
from devstack.stack import ROOT

LOGS = ROOT / "bench" / "results" / "real_calls_logs"
PHASES = ("length", "fast", "ramp", "soak")


async def run_phases(
    plan: Plan, phases: tuple[str, ...], dialogue: Dialogue, options: Options
) -> dict[str, Any]:
    layout = start_layout(options.stores, processes=1 if options.quick else CORES)
    b = Bench(layout, plan, dialogue)
    figures: dict[str, Any] = {"meta": meta(plan, layout.processes, dialogue)}
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
        layout.stack.stack.close(keep_logs=None if options.quick else LOGS)
    return figures


def meta(plan: Plan, processes: int, dialogue: Dialogue) -> dict[str, Any]:
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
        "machine": f"{platform.machine()}, {CORES} cores, Python {platform.python_version()}",
        "layout": f"{processes} API processes (WEB_CONCURRENCY), {processes} arq workers, "
        "embedded PostgreSQL and Redis (AOF everysec), as `make run` starts them",
        "ai": INSTANT_AI,
        "speech": dialogue.source,
        "dialogue_s": len(dialogue) / 50,
        "loadavg_start": loadavg(),
        "plan": dataclasses.asdict(plan),
    }


def run(options: Options) -> Outcome:
    plan = QUICK if options.quick else Plan()
    figures = uvloop.run(run_phases(plan, PHASES, real_dialogue(), options))
    lines = real_calls_report.section(figures, command("real_calls"))
    return Outcome(lines, figures)
