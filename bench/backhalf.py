"""The back half (`python -m bench backhalf`): the worker and the API while calls drain.

- drain: N calls of 10 packets completed at once, instant AI: calls/s, worker CPU per call,
  the share of each stage, completion to ARCHIVED p50/p99; 1 and 2 workers (and API processes);
- burst: 1,000 calls completed at once with the default mock AI (1-3 s, 25% failures): time for
  all to end against 1.5x the slowest call's own AI time (its latencies plus its backoff waits);
- open loop: 1,000 requests/s over 500 live calls, each completed after its last packet, against
  the bare ASGI ceiling, the API with no worker, and the API while workers drain those calls;
- scale: single-packet ingestion on 1 and 2 API processes.

Loopback only; every phase is bounded in time. (Until issue 23 it also ran the worker of
before issue 8 from a git worktree as a baseline; that code needs the `packet` table, which
migration 0003 dropped, so the baseline's figures stay in BENCHMARKS.md as they were measured.)
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg
import orjson
import uvloop
from redis.asyncio import Redis

from bench import backhalf_report
from bench.common import pct
from bench.load import (
    Result,
    Workload,
    batch_workload,
    closed_loop,
    http_request,
    open_loop,
    packet_dict,
    send_all,
    single_packet_workload,
)
from bench.stack import INSTANT_AI, BenchStack, Layout
from bench.suite import Options, Outcome
from devstack.stack import Process

# The mock's defaults, written out so the figures do not move if a default does.
DEFAULT_AI = {
    "AI_LATENCY_MIN_S": "1",
    "AI_LATENCY_MAX_S": "3",
    "AI_FAILURE_RATE": "0.25",
    "AI_BACKOFF_BASE_S": "0.5",
    "AI_BACKOFF_MAX_S": "10",
    "AI_MAX_ATTEMPTS": "5",
}
QUIET = {"LOG_LEVEL": "INFO", "KEY_RETENTION_S": "600"}
_STAGES = re.compile(r"wall time by stage \(summed over calls\): (.*)$")


@dataclass(frozen=True)
class Plan:
    drain_calls: int = 500
    packets: int = 10
    burst_calls: int = 1000
    burst_cap_s: float = 90.0
    open_calls: int = 500
    open_packets: int = 20
    open_rate: float = 1000.0
    open_connections: int = 500  # one per live call, as PBXs connect
    scale_s: float = 5.0
    ai_speed_up: float = 1.0  # the burst's mock AI latencies and backoffs divided by this
    workers: int = 2  # of the burst, the open loop while draining, and the second drain


QUICK = Plan(
    drain_calls=10, packets=3, burst_calls=10, burst_cap_s=90, open_calls=10, open_packets=3,
    open_rate=200, open_connections=10, scale_s=0.3, ai_speed_up=50, workers=1,
)  # fmt: skip


class Bench:
    def __init__(self, stack: BenchStack, redis: Redis) -> None:
        self.stack, self.pg_dsn, self.redis = stack, stack.pg_dsn, redis

    def start_workers(self, n: int, env: dict[str, str]) -> list[Process]:
        return [self.stack.start_worker({**QUIET, **env}) for _ in range(n)]

    async def reset(self) -> None:
        await self.stack.reset()

    async def wait_ready(self, workers: list[Process], timeout_s: float = 20) -> None:
        """Until every worker has polled once (arq writes its health line on each poll)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await self.redis.exists("arq:queue:health-check") and all(
                w.poll() is None for w in workers
            ):
                await asyncio.sleep(1.0)  # every worker, not only the first, has connected
                return
            await asyncio.sleep(0.1)
        raise TimeoutError("workers did not start polling")

    async def live_calls(
        self, api: int, workers: int, env: dict[str, str], prefix: str, calls: int, packets: int,
        seed: int,
    ) -> tuple[list[Process], Workload]:  # fmt: skip
        """Empty stores, `workers` workers polling, and `calls` calls of `packets` each sent
        (not completed yet): where the drain and the burst start from."""
        await self.reset()
        procs = self.start_workers(workers, env)
        await self.wait_ready(procs)
        work = batch_workload(prefix, calls, 1, packets, seed=seed)
        await send_all(api, [raw for raw, _ in work.requests], 32)
        return procs, work

    async def finished(self, conn: asyncpg.Connection, calls: int, cap_s: float) -> float:
        """Seconds until `calls` calls are ARCHIVED or FAILED (or the cap)."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < cap_s:
            if await final_count(conn) >= calls:
                break
            await asyncio.sleep(0.02)
        return time.perf_counter() - t0


async def final_count(conn: asyncpg.Connection) -> int:
    return int(
        await conn.fetchval("SELECT count(*) FROM call WHERE state IN ('ARCHIVED','FAILED')")
    )


def stop(workers: list[Process]) -> dict[str, float]:
    """Stop the workers; returns their summed wall time by stage (from their last log line)."""
    stages: dict[str, float] = {}
    for w in workers:
        w.stop()
        if w.log is None or not w.log.exists():
            continue
        for line in w.log.read_text(errors="replace").splitlines():
            if m := _STAGES.search(line.rstrip()):
                for part in filter(None, m.group(1).split(", ")):  # none: no call finished
                    name, seconds = part.rsplit(" ", 1)
                    stages[name] = stages.get(name, 0.0) + float(seconds.rstrip("s"))
    return stages


async def drain(b: Bench, api: int, plan: Plan, workers: int, tag: str) -> dict[str, Any]:
    """`drain_calls` calls completed at once with an instant AI."""
    procs, work = await b.live_calls(
        api, workers, INSTANT_AI, f"{tag}-drain", plan.drain_calls, plan.packets, 5
    )
    conn = await asyncpg.connect(b.pg_dsn)
    meter = b.stack.meter()
    try:
        cpu0 = meter.read()
        sent = asyncio.create_task(send_all(api, work.completes, 32))
        seconds = await b.finished(conn, plan.drain_calls, 120)
        spent = meter.spent(cpu0, meter.read())
        cpu = spent["workers"]
        completes = await sent
        done = await final_count(conn)
        latency = [
            float(r[0])
            for r in await conn.fetch(
                "SELECT extract(epoch FROM finished_at - completed_at) FROM call "
                "WHERE finished_at IS NOT NULL"
            )
        ]
        # The drain's tail: from the last completion to the last final state.
        tail = await conn.fetchval(
            "SELECT extract(epoch FROM max(finished_at) - max(completed_at)) FROM call"
        )
    finally:
        await conn.close()
    stages = stop(procs)
    total_stage = sum(stages.values()) or 1.0
    return {
        "workers": workers,
        "calls": plan.drain_calls,
        "finished": int(done),
        "seconds": seconds,
        "calls_per_s": done / seconds,
        "cpu_ms_per_call": 1000 * cpu / max(done, 1),
        # Every process's share, the completions' sender (the client) included: what the drain's
        # tail waits for on cores the servers share.
        "cpu_ms_per_call_by_process": {k: 1000 * v / max(done, 1) for k, v in spent.items()},
        "completion_to_final_p50_s": pct(latency, 0.50),
        "completion_to_final_p99_s": pct(latency, 0.99),
        "last_completion_to_final_s": float(tail or 0.0),
        "stage_share": {k: v / total_stage for k, v in sorted(stages.items())},
        "complete_errors": completes.errors,
    }


async def burst(b: Bench, api: int, plan: Plan, tag: str) -> dict[str, Any]:
    """`burst_calls` calls completed at once with the default mock AI, two workers."""
    timed = ("AI_LATENCY_MIN_S", "AI_LATENCY_MAX_S", "AI_BACKOFF_BASE_S", "AI_BACKOFF_MAX_S")
    ai = DEFAULT_AI | {k: f"{float(DEFAULT_AI[k]) / plan.ai_speed_up:g}" for k in timed}
    procs, work = await b.live_calls(
        api, plan.workers, ai, f"{tag}-burst", plan.burst_calls, plan.packets, 7
    )
    conn = await asyncpg.connect(b.pg_dsn)
    try:
        await send_all(api, work.completes, 32)
        seconds = await b.finished(conn, plan.burst_calls, plan.burst_cap_s)
        done = await final_count(conn)
        own = [
            float(r[0])
            for r in await conn.fetch(
                "SELECT extract(epoch FROM max(started_at + duration_ms * interval '1 ms')"
                " - min(started_at)) FROM ai_attempt GROUP BY call_id"
            )
        ]
        states = dict(await conn.fetch("SELECT state, count(*) FROM call GROUP BY state"))
    finally:
        await conn.close()
    stop(procs)
    slowest = max(own, default=float("nan"))
    return {
        "calls": plan.burst_calls,
        "finished": int(done),
        "seconds": seconds,
        "capped": int(done) < plan.burst_calls,
        "slowest_own_ai_s": slowest,
        "ratio_to_slowest": seconds / slowest,
        "states": {str(k): int(v) for k, v in states.items()},
    }


def live_calls_schedule(prefix: str, calls: int, packets: int) -> list[tuple[bytes, int]]:
    """Every call live at once, staggered: call i's packets fall in its own window, its complete
    right after its last packet, so completions spread over the run. The generator then sends
    the requests at a uniform rate in this order."""
    events: list[tuple[float, bytes, int]] = []
    data = "A" * 216
    for i in range(calls):
        start = i / calls
        cid = f"{prefix}-{i}"
        for j in range(packets):
            body = packet_dict(j, data)
            raw = http_request("POST", f"/v1/call/stream/{cid}", orjson.dumps(body))
            events.append((start + j / packets, raw, 1))
        events.append((start + 1.0, http_request("POST", f"/v1/call/complete/{cid}"), 0))
    events.sort(key=lambda e: e[0])
    return [(raw, n) for _, raw, n in events]


def summary(r: Result) -> dict[str, Any]:
    return {
        "rate": r.request_rate,
        "p50_ms": r.pct_ms(0.5),
        "p99_ms": r.pct_ms(0.99),
        "max_ms": r.max_ms,
        "errors": r.errors,
    }


async def open_loop_phase(b: Bench, api: int, bare: int, plan: Plan, tag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    targets = [("bare", bare, 0), ("api_no_worker", api, 0), ("api_draining", api, plan.workers)]
    for name, port, workers in targets:
        await b.reset()
        procs = b.start_workers(workers, INSTANT_AI) if workers else []
        if procs:
            await b.wait_ready(procs)
        schedule = live_calls_schedule(f"{tag}-{name}", plan.open_calls, plan.open_packets)
        res = await open_loop(port, schedule, plan.open_rate, plan.open_connections)
        out[name] = summary(res)
        stop(procs)
    return out


PHASES = ("drain", "burst", "open", "scale")


async def scale(api: int, api2: int, plan: Plan) -> dict[str, Any]:
    """Single-packet ingestion, closed loop, against 1 and then 2 API processes."""
    out: dict[str, Any] = {}
    for name, port in (("api_x1", api), ("api_x2", api2)):
        work = single_packet_workload(f"scale-{name}", 200, 150)
        res = await closed_loop(port, work.requests, 64, plan.scale_s)
        out[name] = {"rate": res.rate, "p99_ms": res.pct_ms(0.99), "errors": res.errors}
    out["ratio"] = out["api_x2"]["rate"] / out["api_x1"]["rate"]
    return out


async def measure(plan: Plan, options: Options) -> dict[str, Any]:
    # No API process and no worker to start with: the phases start their own.
    with BenchStack(Layout(api_processes=0, workers=0), options.stores) as stack:
        api = stack.start_api()
        api2 = stack.start_api(name="api-x2", processes=2)
        bare = stack.start_api("bench.bare_app:app", name="bare")
        assert api.port is not None
        assert api2.port is not None
        assert bare.port is not None
        redis = Redis.from_url(stack.redis_url)
        try:
            b = Bench(stack, redis)
            figures: dict[str, Any] = {"plan": asdict(plan)}
            runs = [("new-1", api.port, 1), ("new-2", api2.port, 2)][: plan.workers]
            figures["drain"] = [await drain(b, port, plan, n, tag) for tag, port, n in runs]
            figures["burst"] = [await burst(b, api2.port, plan, "new")]
            figures["open_loop"] = await open_loop_phase(b, api.port, bare.port, plan, "ol")
            await b.reset()
            figures["scale"] = await scale(api.port, api2.port, plan)
            return figures
        finally:
            await redis.aclose()


def problems(f: dict[str, Any]) -> list[str]:
    out = [
        f"drain x{d['workers']}: {d['finished']} of {d['calls']} calls reached a final state"
        for d in f["drain"]
        if d["finished"] < d["calls"]
    ]
    out += [
        f"burst: {r['finished']} of {r['calls']} calls ended" for r in f["burst"] if r["capped"]
    ]
    out += [
        f"open loop {name}: {r['errors']} requests refused"
        for name, r in f["open_loop"].items()
        if r["errors"]
    ]
    return out


def print_figures(f: dict[str, Any]) -> None:
    print("\n--- back half ---")
    for d in f.get("drain", []):
        print(
            f"drain x{d['workers']} worker(s): {d['finished']}/{d['calls']} in "
            f"{d['seconds']:.2f}s = {d['calls_per_s']:.0f} calls/s, {d['cpu_ms_per_call']:.2f} ms "
            f"CPU/call, completion->final p50 {d['completion_to_final_p50_s']:.3f}s "
            f"p99 {d['completion_to_final_p99_s']:.3f}s, stages "
            + ", ".join(f"{k} {v:.0%}" for k, v in d["stage_share"].items())
        )
    for r in f.get("burst", []):
        print(
            f"burst: {r['finished']}/{r['calls']} in {r['seconds']:.1f}s; slowest call's "
            f"own AI time {r['slowest_own_ai_s']:.1f}s (ratio {r['ratio_to_slowest']:.2f}); "
            f"{r['states']}"
        )
    for name, r in f.get("open_loop", {}).items():
        print(
            f"open loop {name:14} @{r['rate']:.0f} req/s: p50 {r['p50_ms']:.2f} ms, "
            f"p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.1f} ms, errors {r['errors']}"
        )
    if sc := f.get("scale"):
        print(
            f"ingestion, 1 -> 2 API processes: {sc['api_x1']['rate']:.0f} -> "
            f"{sc['api_x2']['rate']:.0f} packets/s (x{sc['ratio']:.2f})"
        )


def run(options: Options) -> Outcome:
    plan = QUICK if options.quick else Plan()
    figures = uvloop.run(measure(plan, options))
    print_figures(figures)
    return Outcome(backhalf_report.section(figures), figures, problems(figures))
