"""The back half's drain alone, for comparing two checkouts on one machine in one sitting:
`python -m bench.backhalf_drain [--workers N] [--calls N] [--runs N]`, run from each checkout in
turn (the other's with `git worktree add`). Each run is bench/backhalf.py's drain phase (calls of
10 packets completed at once, an instant AI, its own stack): the workers' CPU per call
(bench/cpu.py) and completion to final state. Prints one line a run; writes nothing."""

from __future__ import annotations

import argparse
import subprocess
from typing import cast

import uvloop
from redis.asyncio import Redis

from bench.backhalf import Bench, Plan, drain
from bench.stack import BenchStack, Layout
from devstack.stack import ROOT


async def measure(workers: int, calls: int, runs: int) -> list[dict[str, object]]:
    plan = Plan(drain_calls=calls)
    with BenchStack(Layout(api_processes=0, workers=0)) as stack:
        api = stack.start_api(processes=workers)
        assert api.port is not None
        redis = Redis.from_url(stack.redis_url)
        try:
            b = Bench(stack, redis)
            return [await drain(b, api.port, plan, workers, f"ab{n}") for n in range(runs)]
        finally:
            await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.backhalf_drain", description=__doc__)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    for d in uvloop.run(measure(args.workers, args.calls, args.runs)):
        by_process = cast(dict[str, float], d["cpu_ms_per_call_by_process"])
        print(
            f"{commit} x{d['workers']} worker(s): {d['finished']}/{d['calls']} final, "
            f"{d['cpu_ms_per_call']:.2f} ms of workers' CPU a call, completion -> final "
            f"p50 {d['completion_to_final_p50_s']:.2f} s, "
            f"p99 {d['completion_to_final_p99_s']:.2f} s, "
            f"last completion -> all final {d['last_completion_to_final_s']:.2f} s; "
            "CPU a call by process: " + ", ".join(f"{k} {v:.2f} ms" for k, v in by_process.items())
        )


if __name__ == "__main__":
    main()
