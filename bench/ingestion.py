"""The front half (`python -m bench ingestion`): single-packet, batch and WebSocket ingestion
against the bare ASGI ceiling, closed and open loop; the drain of completed calls with the flaky
mock AI against its ideal; key retention; Redis memory per live call; the cost of
`appendfsync always`. Loopback only; every phase has a request count and a time cap.
"""

from __future__ import annotations

import asyncio
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import uvloop
from redis.asyncio import Redis

from bench.ingestion_report import section
from bench.ingestion_shapes import QUICK_SHAPES, Shapes, measure_shapes, shape_problems
from bench.load import (
    batch_workload,
    closed_loop,
    open_loop,
    send_all,
    single_packet_workload,
    summarize,
)
from bench.sections import loadavg
from bench.stack import BenchStack, Layout
from bench.suite import Options, Outcome
from bench.ws_load import ws_streams


@dataclass(frozen=True)
class Plan:
    calls: int = 200  # concurrent calls replayed by the single-packet phases
    packets: int = 150  # packets per call (before ~2% duplicates)
    connections: int = 64
    closed_s: float = 6.0
    open_s: float = 5.0
    batch_calls: int = 100
    batches: int = 20
    batch_size: int = 50
    batch_connections: int = 16
    ws_streams: int = 32
    ws_packets: int = 1500
    drain_calls: tuple[int, ...] = (100, 400)  # the first one is held to the target
    drain_packets: int = 5
    mem_calls: int = 1000
    mem_packets: int = 50
    worker_max_jobs: int = 32
    workers: int = 1
    settle_s: float = 2.0  # for the workers to connect before a drain's clock starts
    ai_speed_up: float = 1.0  # the mock AI's latencies and backoffs divided by this
    shapes: Shapes = field(default_factory=Shapes)


QUICK = Plan(
    calls=10,
    packets=10,
    connections=8,
    closed_s=0.3,
    open_s=0.3,
    batch_calls=5,
    batches=2,
    batch_size=10,
    batch_connections=4,
    ws_streams=2,
    ws_packets=30,
    drain_calls=(10,),
    drain_packets=3,
    mem_calls=20,
    mem_packets=5,
    worker_max_jobs=8,
    settle_s=0.5,
    ai_speed_up=20.0,
    shapes=QUICK_SHAPES,
)

AI_ENV = {
    "AI_FAILURE_RATE": "0.25",
    "AI_LATENCY_MIN_S": "0.2",
    "AI_LATENCY_MAX_S": "0.4",
    "AI_MAX_ATTEMPTS": "5",
    "AI_BACKOFF_BASE_S": "0.1",
    "AI_BACKOFF_MAX_S": "1.0",
}


def ai_env(plan: Plan) -> dict[str, str]:
    timed = ("AI_LATENCY_MIN_S", "AI_LATENCY_MAX_S", "AI_BACKOFF_BASE_S", "AI_BACKOFF_MAX_S")
    return AI_ENV | {k: f"{float(AI_ENV[k]) / plan.ai_speed_up:g}" for k in timed}


RETENTION_ENV = {"KEY_RETENTION_S": "2", "COMPLETED_MARKER_RETENTION_S": "2"}


def ideal_ai_seconds_per_call(env: dict[str, str]) -> float:
    """Expected AI time of one call: 2 steps x (E[latency] x E[attempts] + E[backoff]).
    E[attempts] = sum_{k<max} p^k (= 1/(1-p) uncapped); tenacity's wait_random_exponential waits
    uniform(0, min(max, base x 2^(k-1))) after the k-th failure, reached with probability p^k."""
    p = float(env["AI_FAILURE_RATE"])
    mean_latency = (float(env["AI_LATENCY_MIN_S"]) + float(env["AI_LATENCY_MAX_S"])) / 2
    attempts = int(env["AI_MAX_ATTEMPTS"])
    base, cap = float(env["AI_BACKOFF_BASE_S"]), float(env["AI_BACKOFF_MAX_S"])
    expected_attempts = sum(p**k for k in range(attempts))
    expected_backoff = sum(p**k * min(cap, base * 2 ** (k - 1)) / 2 for k in range(1, attempts))
    return float(2 * (mean_latency * expected_attempts + expected_backoff))


async def redis_info_memory(redis: Redis) -> int:
    info = await redis.info("memory")
    return int(info["used_memory"])


async def ingestion(plan: Plan, api: int, bare: int, run: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    warm = single_packet_workload(f"r{run}-warm", 20, 20)
    await closed_loop(api, warm.requests, plan.connections, 5)
    await closed_loop(bare, warm.requests, plan.connections, 5)

    work = single_packet_workload(f"r{run}-cl", plan.calls, plan.packets)
    cs = await closed_loop(api, work.requests, plan.connections, plan.closed_s)
    done = await send_all(api, work.completes, plan.connections)
    ceiling = await closed_loop(bare, work.requests * 4, plan.connections, plan.closed_s)
    out["closed"] = summarize(cs)
    out["closed_completes_per_s"] = done.request_rate
    out["closed_statuses"] = dict(cs.statuses)
    out["bare_closed"] = summarize(ceiling)

    for name, port, peak in (("open", api, cs.rate), ("bare_open", bare, ceiling.rate)):
        rate = peak / 2
        count = max(1, int(rate * plan.open_s))
        fresh = single_packet_workload(f"r{run}-{name}", plan.calls, plan.packets, seed=4)
        reqs = (fresh.requests * (count // len(fresh.requests) + 1))[:count]
        res = await open_loop(port, reqs, rate, plan.connections)
        out[name] = summarize(res) | {"target_rate": rate}
        if name == "open":
            await send_all(api, fresh.completes, plan.connections)

    batch = batch_workload(f"r{run}-batch", plan.batch_calls, plan.batches, plan.batch_size)
    b = await closed_loop(api, batch.requests, plan.batch_connections, plan.closed_s)
    await send_all(api, batch.completes, plan.connections)
    out["batch"] = summarize(b)

    media, seconds, codes = await ws_streams(api, f"r{run}-ws", plan.ws_streams, plan.ws_packets)
    out["ws"] = {
        "rate": media / seconds,
        "packets": media,
        "seconds": seconds,
        "bad_closes": sum(c != 1000 for c in codes),
    }
    return out


async def drain(
    plan: Plan, stack: BenchStack, api: int, redis: Redis, run: int, calls: int
) -> dict[str, Any]:
    """N calls completed at once, arq workers with the flaky mock AI; then key retention."""
    await stack.reset()
    env = ai_env(plan) | RETENTION_ENV | {"WORKER_MAX_JOBS": str(plan.worker_max_jobs)}
    procs = [stack.start_worker(env) for _ in range(plan.workers)]
    prefix = f"r{run}-drain{calls}"
    work = batch_workload(prefix, calls, 1, plan.drain_packets, seed=5)
    await send_all(api, [raw for raw, _ in work.requests], 32)
    await asyncio.sleep(plan.settle_s)
    conn = await asyncpg.connect(stack.pg_dsn)
    try:
        t0 = time.perf_counter()
        done = await send_all(api, work.completes, 32)
        finished, deadline = 0, t0 + 180
        while finished < calls and time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
            finished = await conn.fetchval(
                "SELECT count(*) FROM call WHERE state IN ('ARCHIVED','FAILED')"
            )
        elapsed = time.perf_counter() - t0
        states = dict(await conn.fetch("SELECT state, count(*) FROM call GROUP BY state"))
        failed_errors = [
            row[0]
            for row in await conn.fetch(
                "SELECT last_error FROM call WHERE state = 'FAILED' ORDER BY call_id LIMIT 3"
            )
        ]
        ai_ms, attempts = await conn.fetchrow(
            "SELECT coalesce(sum(duration_ms), 0), count(*) FROM ai_attempt"
        )
    finally:
        await conn.close()
    concurrency = plan.worker_max_jobs * plan.workers
    per_call = ideal_ai_seconds_per_call(env)
    ideal = calls * per_call / concurrency
    # Key retention: every key of every finished call must be gone retention + margin later.
    wait = max(int(v) for v in RETENTION_ENV.values()) + 2.0
    await asyncio.sleep(wait)
    left = [k async for k in redis.scan_iter(match=f"{{s*}}:call:{prefix}-*", count=1000)]
    for proc in procs:
        proc.stop()
    return {
        "calls": calls,
        "finished": finished,
        "states": {str(k): int(v) for k, v in states.items()},
        "failed_errors": failed_errors,
        "seconds": elapsed,
        "ideal_s": ideal,
        "per_call_s": per_call,
        "ratio": elapsed / ideal,
        "measured_ai_s": float(ai_ms) / 1000,
        "measured_ideal_s": float(ai_ms) / 1000 / concurrency,
        "attempts": int(attempts),
        "concurrency": concurrency,
        "complete_errors": done.errors,
        "keys_left": len(left),
        "keys_left_sample": [k.decode() for k in left[:5]],
        "retention_wait_s": wait,
        "env": env,
    }


async def durability(plan: Plan, api: int, api_always: int, run: int) -> dict[str, Any]:
    """Single-packet ingestion with Redis at appendfsync everysec (shipped) vs always, measured
    alternately in the same run so the machine's noise hits both."""
    rates: dict[str, list[float]] = {"everysec": [], "always": []}
    for rep in range(2):
        for name, port in (("everysec", api), ("always", api_always)):
            work = single_packet_workload(f"r{run}-fsync-{name}-{rep}", plan.calls, plan.packets)
            res = await closed_loop(port, work.requests, plan.connections, plan.closed_s / 2)
            rates[name].append(res.rate)
    everysec, always = (sum(v) / len(v) for v in (rates["everysec"], rates["always"]))
    return {"everysec": everysec, "always": always, "ratio": always / everysec}


async def memory(plan: Plan, stack: BenchStack, api: int, redis: Redis, run: int) -> dict[str, Any]:
    await stack.reset()
    await asyncio.sleep(0.2)
    before = await redis_info_memory(redis)
    work = batch_workload(f"r{run}-mem", plan.mem_calls, 1, plan.mem_packets, seed=6)
    res = await send_all(api, [raw for raw, _ in work.requests], 32)
    after = await redis_info_memory(redis)
    packets = work.packets
    return {
        "calls": plan.mem_calls,
        "packets_per_call": packets / plan.mem_calls,
        "bytes_per_call": (after - before) / plan.mem_calls,
        "bytes_per_packet": (after - before) / packets,
        "errors": res.errors,
    }


async def one_run(
    plan: Plan, stack: BenchStack, ports: tuple[int, int, int], run: int
) -> dict[str, Any]:
    api, bare, api_always = ports
    redis = Redis.from_url(stack.redis_url)
    try:
        await stack.reset()
        figures = await ingestion(plan, api, bare, run)
        figures["durability"] = await durability(plan, api, api_always, run)
        drains = [await drain(plan, stack, api, redis, run, n) for n in plan.drain_calls]
        figures["drain"] = drains[0]
        figures["drain_more"] = drains[1:]
        figures["memory"] = await memory(plan, stack, api, redis, run)
        return figures
    finally:
        await redis.aclose()


def print_run(run: int, f: dict[str, Any]) -> None:
    c, b, o, bo = f["closed"], f["bare_closed"], f["open"], f["bare_open"]
    print(f"\n--- run {run + 1} ---")
    print(f"{'phase':32} {'pkts/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, r in (
        ("single packet, closed loop", c),
        ("bare ceiling, closed loop", b),
        (f"single packet, open @{o['target_rate']:.0f}/s", o),
        (f"bare ceiling, open @{bo['target_rate']:.0f}/s", bo),
        ("batch x50, closed loop", f["batch"]),
    ):
        print(
            f"{name:32} {r['rate']:10.0f} {r['p50']:8.2f} {r['p95']:8.2f} "
            f"{r['p99']:8.2f} {r['max']:8.2f}"
        )
    w = f["ws"]
    print(f"{'websocket media streams':32} {w['rate']:10.0f}")
    fs = f["durability"]
    print(
        f"redis appendfsync: everysec {fs['everysec']:.0f}/s, always {fs['always']:.0f}/s "
        f"(always/everysec {fs['ratio']:.2f})"
    )
    m = f["memory"]
    for d in [f["drain"], *f["drain_more"]]:
        print(
            f"drain: {d['finished']}/{d['calls']} in {d['seconds']:.2f}s, ideal "
            f"{d['ideal_s']:.2f}s (ratio {d['ratio']:.2f}); states {d['states']}; "
            f"keys left {d['keys_left']}"
        )
    print(
        f"redis memory: {m['bytes_per_call']:.0f} B per live call "
        f"({m['bytes_per_packet']:.0f} B/packet)"
    )
    print(
        f"statuses: single {c['statuses']} batch {f['batch']['statuses']} "
        f"ws closes bad={w['bad_closes']}"
    )


async def measure(plan: Plan, options: Options) -> Outcome:
    load_start = loadavg()
    # One API process and no worker to start with: each drain starts its own.
    with BenchStack(Layout(api_processes=1, workers=0), options.stores) as stack:
        bare = stack.start_api("bench.bare_app:app", name="bare")
        always = stack.start_extra_redis("redis-always", appendfsync="always")
        api_always = stack.start_api(env={"REDIS_URL": always.url}, name="api-always")
        assert bare.port is not None
        assert api_always.port is not None
        figures = await one_run(plan, stack, (stack.api_port, bare.port, api_always.port), 0)
        assert stack.api is not None
        figures["shapes"] = await measure_shapes(
            plan.shapes, stack, stack.api.pid, (bare.port, bare.pid), 0
        )
    print_run(0, figures)
    machine = machine_info() | {"loadavg_start": load_start, "loadavg_end": loadavg()}
    return Outcome(section([figures], plan, machine), figures, problems(figures))


def problems(f: dict[str, Any]) -> list[str]:
    out = [
        f"{name}: {f[name]['errors']} requests refused ({f[name]['statuses']})"
        for name in ("closed", "open", "batch")
        if f[name]["errors"]
    ]
    if f["ws"]["bad_closes"]:
        out.append(f"{f['ws']['bad_closes']} WebSocket streams not closed with 1000")
    for d in [f["drain"], *f["drain_more"]]:
        if d["finished"] < d["calls"]:
            out.append(f"drain: {d['finished']} of {d['calls']} calls reached a final state")
    return out + shape_problems(f["shapes"])


def machine_info() -> dict[str, str]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run(options: Options) -> Outcome:
    return uvloop.run(measure(QUICK if options.quick else Plan(), options))
