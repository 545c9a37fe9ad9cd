"""What `make run`'s stack costs with no call (`python -m bench idle`): its layout (API processes,
arq workers, PostgreSQL, Redis) started, left to settle, then its CPU over a quiet stretch, by
part. What a deployment pays before its first call, and what every benchmark run at a few calls
(bench/local_model.py's 2 calls) counts in its per-call-minute figures: the workers' reads of
arq's queue (an idle worker's once a second, as it waits for a wake: jobs/polling.py), the sweeps
and the reaper (every few seconds), the API's once-a-second reads, Redis' and PostgreSQL's own
timers.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench.real_calls_layout import start_layout
from bench.stack import CORES
from bench.suite import Options, Outcome, command

NAME = "idle"
HEADING = "## What an idle stack costs"


@dataclass(frozen=True)
class Plan:
    settle_s: float = 20.0  # start-up's work (migrations' checks, pools, the first crons) done
    seconds: float = 60.0
    processes: int = CORES  # API processes and workers, as `make run`


QUICK = Plan(settle_s=1.0, seconds=2.0, processes=1)


async def measure(plan: Plan, options: Options) -> dict[str, Any]:
    layout = start_layout(options.stores, processes=plan.processes)
    try:
        await asyncio.sleep(plan.settle_s)
        before, started = layout.cpu_s(), time.monotonic()
        await asyncio.sleep(plan.seconds)
        after, elapsed = layout.cpu_s(), time.monotonic() - started
    finally:
        await layout.close()
    parts = {g: (after[g] - before.get(g, 0.0)) / elapsed for g in after if g != "client"}
    return {
        "plan": asdict(plan),
        "elapsed_s": round(elapsed, 2),
        "core_share": {g: round(v, 5) for g, v in parts.items()},
        "stack_core_share": round(sum(parts.values()), 5),
    }


def section(f: dict[str, Any]) -> list[str]:
    plan = f["plan"]
    share = f["core_share"]
    rows = [
        f"| {g} | {100 * v:.2f}% | {3600 * v:,.0f} s |" for g, v in share.items()
    ]  # fmt: skip
    total = f["stack_core_share"]
    return [
        HEADING,
        "",
        f"`{command(NAME)}`: `make run`'s layout ({plan['processes']} API processes and "
        f"{plan['processes']} arq workers, embedded PostgreSQL and Redis), no call; after "
        f"{plan['settle_s']:g} s to settle, its CPU over {f['elapsed_s']:g} s.",
        "",
        "| part | share of a core | CPU an hour |",
        "|---|---|---|",
        *rows,
        f"| **stack** | **{100 * total:.2f}%** | **{3600 * total:,.0f} s** |",
    ]


def run(options: Options) -> Outcome:
    plan = QUICK if options.quick else Plan()
    figures = asyncio.run(measure(plan, options))
    return Outcome(section(figures), figures)
