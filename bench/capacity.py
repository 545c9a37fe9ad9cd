"""Real-time capacity (`python -m bench capacity`): how many two-track calls at real-time pace
this box holds, and what a call-minute costs each part of the stack.

Each step runs N calls of real speech (bench/real_calls_frames.py) over the Twilio media
WebSocket, both tracks every 20 ms, their starts spread over `stagger_s`, against `make run`'s
layout with an instant mock AI (bench/real_calls_layout.py), from empty stores; the client
shares the machine's cores with the stack. The calls, the lag samplers and the accounting are
the real-calls suite's (bench/real_calls_load.py's ramp step); this suite only chooses the
sizes and judges a step by the issue's bar: every frame stored and every call ARCHIVED, the
status lag p99 within LAG_TARGET_MS, the client on its schedule (its slip p99 within
SLIP_TARGET_MS: a client starved of CPU offers less than real-time load, so its step measures
the client, not the server). Steps go up until one does not hold.

Knobs (environment, as the entry point takes no suite arguments):
- BENCH_CAPACITY_STEPS: the calls of each step, e.g. "60,120,150,180": all of them run (the
  default sizes stop at the first step that does not hold);
- BENCH_CAPACITY_BEFORE: the figures (bench/results/capacity.json) of a run against another
  tree, e.g. a baseline checkout, measured just before: the section sets this run's steps
  against its steps of the same size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import uvloop

from bench import capacity_report
from bench.real_calls import meta
from bench.real_calls_frames import real_dialogue
from bench.real_calls_layout import start_layout
from bench.real_calls_load import ramp_step
from bench.real_calls_phases import Bench, Plan
from bench.sections import loadavg
from bench.stack import CORES
from bench.suite import Options, Outcome, command

LAG_TARGET_MS = 250.0  # status lag p99 (issue 27)
SLIP_TARGET_MS = 100.0  # the client's lateness p99 past which its load is not real-time
STEPS = (60, 90, 120, 150, 180, 210, 240)
# The status lag's reads (GET /v1/calls/{id}, round-robin over the live calls): a read costs the
# API a few ms of CPU (PostgreSQL's erasure ledger and row, then Redis), so at the real-calls
# suite's 64 a second they would be a good part of what a step measures; 10 a second still
# gives ~800 samples a step.
STATUS_READS_PER_S = 10.0
PLAN = Plan(ramp_s=60.0, stagger_s=20.0, final_cap_s=180.0, reads_per_s=STATUS_READS_PER_S)
QUICK_STEPS = (2,)
QUICK = Plan(ramp_s=1.0, stagger_s=0.2, final_cap_s=60.0, reads_per_s=STATUS_READS_PER_S)


def steps_of(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
    if not text:
        return default
    steps = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    if not steps or min(steps) < 1:
        raise ValueError(f"BENCH_CAPACITY_STEPS must be positive counts of calls: {text!r}")
    return steps


def verdict(step: dict[str, Any]) -> dict[str, Any]:
    """Whether a step holds by this suite's bar, and if not, why (the first reasons found)."""
    why = []
    if step["lost_frames"]:
        why.append(f"{step['lost_frames']} frames lost")
    if step["states"] != {"ARCHIVED": step["calls"]}:
        why.append(f"states {step['states']}")
    if step["errors"]:
        why.append(f"{step['errors']} client errors")
    lag = step.get("status_lag_p99_ms")
    if lag is None or lag > LAG_TARGET_MS:
        why.append("no status lag sampled" if lag is None else f"status lag p99 {lag:.0f} ms")
    slip = step.get("pace_slip_p99_ms")
    if slip is None or slip > SLIP_TARGET_MS:
        late = "no send timed" if slip is None else f"client slip p99 {slip:.0f} ms"
        why.append(f"{late} (the client is short of CPU)")
    return {"holds": not why, "why_not": why}


def per_frame_us(step: dict[str, Any], group: str) -> float | None:
    frames = step.get("frames_sent") or 0
    return 1e6 * step["cpu_s"][group] / frames if frames else None


async def run_steps(
    plan: Plan, steps: tuple[int, ...], options: Options, asked: bool = False
) -> dict[str, Any]:
    layout = start_layout(options.stores, processes=1 if options.quick else CORES)
    dialogue = real_dialogue()
    b = Bench(layout, plan, dialogue)
    figures: dict[str, Any] = {
        "meta": {**meta(plan, layout.processes, dialogue), "steps": list(steps)},
        "steps": [],
    }
    try:
        for n in steps:
            print(f"capacity: {n} calls…", flush=True)
            step = await ramp_step(b, n)
            step.pop("holds", None)  # the real-calls suite's bar; this suite's is verdict()
            step.update(verdict(step))
            step["api_us_per_frame"] = per_frame_us(step, "api")
            figures["steps"].append(step)
            print(capacity_report.one_line(step), flush=True)
            if not step["holds"] and not asked:
                break  # the default sizes go up to where it breaks; sizes asked for all run
    finally:
        figures["meta"]["loadavg_end"] = loadavg()
        await b.close()
        await layout.redis.aclose()
        layout.stack.stack.close()
    held = [s["calls"] for s in figures["steps"] if s["holds"]]
    figures["most_calls_held"] = max(held, default=0)
    return figures


def before_figures() -> dict[str, Any] | None:
    path = os.environ.get("BENCH_CAPACITY_BEFORE")
    if not path:
        return None
    before: dict[str, Any] = json.loads(Path(path).read_text())
    before.pop("before", None)  # one run back only
    return before


def run(options: Options) -> Outcome:
    plan = QUICK if options.quick else PLAN
    default = QUICK_STEPS if options.quick else STEPS
    asked = os.environ.get("BENCH_CAPACITY_STEPS")
    steps = steps_of(asked, default)
    figures = uvloop.run(run_steps(plan, steps, options, asked=bool(asked)))
    before = before_figures()
    lines = capacity_report.section(figures, before, command("capacity"))
    problems = [] if figures["steps"] else ["no step ran"]
    return Outcome(lines, {**figures, "before": before}, problems)
