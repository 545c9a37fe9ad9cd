"""The live feed's fan-out (`python -m bench fanout`):
one API process as `make run` starts it, 500 Server-Sent Events subscribers of GET /v1/events
spread over a few load processes (bench/fanout_client.py), in one run:

- delivery: events XADDed straight into the feed (db.events.EventLog.publish, from this process)
  at rising rates; per rate: deliveries/s (subscribers x events), whether every subscriber got
  every event exactly once and in time, delivery latency (the event's `at` to its arrival), the
  API's CPU per 1,000 deliveries, the Redis reads it made per event (INFO commandstats: XREAD of
  the one reader, XRANGE of subscribers that fell behind and catch up on their own), and the
  load processes' CPU (to show they were not the bottleneck);
- cost to ingestion: single-packet ingestion (bench.load, as the ingestion suite drives it) with no
  subscriber, with 500 subscribers whose filter matches nothing, and with 500 subscribers taking
  every event the ingestion writes (progress events on, 1 s per live call), alternated in rounds
  so that the machine's drift hits all three; packets/s and API CPU per packet.

Loopback only; starts its own Redis, PostgreSQL and API and stops them all; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import uvloop
from redis.asyncio import Redis

from bench import fanout_report
from bench.common import pct
from bench.cpu import Usage
from bench.load import closed_loop, single_packet_workload
from bench.sections import loadavg
from bench.stack import BenchStack, Layout
from bench.suite import Options, Outcome, command
from core.builders import feed_limits
from db.events import EventLog
from db.feed_events import ProgressEvent
from db.keys import EVENTS
from db.states import CallState
from devstack.processes import die_with_parent
from devstack.stack import ROOT
from settings import Settings

PUBLISH_TICK_S = 0.005  # the publisher sends what is due this often (one pipeline per tick)
SNAP_EVERY_S = 0.1  # how often the drain after a step looks whether every subscriber is done
LATENCY_LIMIT_S = 1.0  # a rate is sustained only if p99 delivery latency stays under this
NOTHING = "call_id=no-such-call"  # a filter no event matches


@dataclass(frozen=True)
class Plan:
    subscribers: int = 500
    clients: int = 2  # load processes the subscribers are spread over
    latency_every: int = 5  # every 5th subscriber also records latencies
    rates: tuple[float, ...] = (1, 2, 5, 10, 20, 40, 80, 160)  # events/s, until one fails
    refine: int = 2  # then this many bisections between the last sustained and the failed rate
    step_s: float = 4.0
    warmup_s: float = 1.0  # of each step, before the steady-state window
    grace_s: float = 8.0  # after a step, for the backlog to reach every subscriber
    idle_s: float = 3.0  # 500 subscribers connected, nothing published
    ingest_rounds: int = 3
    ingest_calls: int = 200
    ingest_packets: int = 150
    ingest_connections: int = 64
    ingest_s: float = 4.0
    ingest_drain_cap_s: float = 40.0  # for the feed to deliver what an ingestion round wrote


QUICK = Plan(
    subscribers=5,
    clients=1,
    latency_every=1,
    rates=(10, 20),
    refine=0,
    step_s=1.0,
    warmup_s=0.25,
    grace_s=3.0,
    idle_s=0.5,
    ingest_rounds=1,
    ingest_calls=10,
    ingest_packets=20,
    ingest_connections=4,
    ingest_s=1.0,
    ingest_drain_cap_s=60.0,  # a cap, not a wait: generous, so a loaded CI machine passes
)


@dataclass
class Snapshot:
    t: float  # when the last load process answered (epoch s)
    counts: list[int]  # events received so far, per subscriber
    cpu: list[float]  # CPU seconds so far, per load process
    latencies: list[float] = field(default_factory=list)  # since the previous snapshot


class Subscribers:
    """`n` subscribers of GET /v1/events?`query`, spread over `clients` load processes."""

    def __init__(self, procs: list[asyncio.subprocess.Process]) -> None:
        self.procs = procs

    @classmethod
    async def open(
        cls, port: int, n: int, clients: int, query: str, latency_every: int
    ) -> Subscribers:
        shares = [n // clients + (i < n % clients) for i in range(clients)]
        procs = []
        try:
            for share in shares:
                args = ["-m", "bench.fanout_client", "--port", str(port)]
                args += ["--subscribers", str(share), "--query", query]
                args += ["--latency-every", str(latency_every)]
                procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable, *args, cwd=ROOT, stdin=asyncio.subprocess.PIPE,
                        stdout=asyncio.subprocess.PIPE, preexec_fn=die_with_parent,
                        limit=1 << 26,  # a snapshot's latencies make long lines
                    )
                )  # fmt: skip
            subs = cls(procs)
            for proc in procs:
                line = await asyncio.wait_for(_line(proc), 60)
                assert orjson.loads(line)["ready"] > 0
            return subs
        except BaseException:
            await cls(procs).close()
            raise

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    async def snapshot(self) -> Snapshot:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(b"snap\n")
        answers = [orjson.loads(await _line(p)) for p in self.procs]
        return Snapshot(
            t=max(a["t"] for a in answers),
            counts=[c for a in answers for c in a["counts"]],
            cpu=[a["cpu"] for a in answers],
            latencies=[x for a in answers for x in a["lat"]],
        )

    async def close(self) -> None:
        for proc in self.procs:
            if proc.returncode is None and proc.stdin is not None:
                proc.stdin.write(b"stop\n")
        for proc in self.procs:
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _line(proc: asyncio.subprocess.Process) -> bytes:
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    if not line:
        raise RuntimeError(f"load process {proc.pid} exited ({await proc.wait()})")
    return line


async def reads(redis: Redis) -> dict[str, int]:
    """Calls so far of the stream reads the API makes (INFO commandstats)."""
    stats = await redis.info("commandstats")
    return {
        cmd: int(stats.get(f"cmdstat_{cmd}", {}).get("calls", 0))
        for cmd in ("xread", "xrange", "xrevrange")
    }


async def events_added(redis: Redis) -> int:
    """Every event ever appended to the feed (a counter trimming does not lower)."""
    if not await redis.exists(EVENTS):
        return 0
    return int((await redis.xinfo_stream(EVENTS))["entries-added"])


def progress_event(i: int) -> dict[str, Any]:
    """A live call's progress: the feed's most frequent event, at its usual size."""
    return ProgressEvent(
        call_id=f"fanout-{i % 200}",
        state=CallState.IN_PROGRESS,
        received=i,
        duplicates=0,
        out_of_order=0,
        missing=0,
        data_bytes=160 * i,
        last_packet_at=time.time(),
    ).body()


async def publish(log: EventLog, rate: float, count: int) -> float:
    """`count` events at `rate`/s: what is due goes out every tick, in one round trip (event i
    is due at i / rate). Returns the seconds it took."""
    t0 = time.perf_counter()
    sent = 0
    while sent < count:
        due = min(count, 1 + int((time.perf_counter() - t0) * rate))
        if due > sent:
            await log.publish(*(progress_event(i) for i in range(sent, due)))
            sent = due
        await asyncio.sleep(PUBLISH_TICK_S)
    return time.perf_counter() - t0


async def delivery_step(
    subs: Subscribers, log: EventLog, redis: Redis, api_pid: int, rate: float, plan: Plan
) -> dict[str, Any]:
    count = max(1, round(rate * plan.step_s))
    start = await subs.snapshot()  # its latencies belong to the step before: dropped
    reads0, u0 = await reads(redis), Usage.of(api_pid)
    sending = asyncio.create_task(publish(log, rate, count))
    await asyncio.sleep(plan.warmup_s)
    w0, wu0 = await subs.snapshot(), Usage.of(api_pid)
    latencies = w0.latencies
    publish_s = await sending
    w1, window = await subs.snapshot(), Usage.of(api_pid) - wu0
    latencies += w1.latencies
    # The steady-state window: from the warmup to the last publish.
    window_s = w1.t - w0.t
    window_deliveries = sum(w1.counts) - sum(w0.counts)
    # Then every subscriber should get all `count`, each once, soon.
    wanted = [c + count for c in start.counts]
    end, drained_at = w1, time.monotonic() + plan.grace_s
    while end.counts != wanted and time.monotonic() < drained_at:
        if any(c > w for c, w in zip(end.counts, wanted, strict=True)):
            break  # a duplicate: no point waiting
        await asyncio.sleep(SNAP_EVERY_S)
        end = await subs.snapshot()
        latencies += end.latencies
    drain_s = end.t - w1.t
    used = Usage.of(api_pid) - u0
    reads1 = await reads(redis)
    got = [e - s for e, s in zip(end.counts, start.counts, strict=True)]
    deliveries = sum(got)
    complete = all(g == count for g in got)
    p99 = pct(latencies, 0.99)
    client_cpu = [(b - a) / window_s for a, b in zip(w0.cpu, w1.cpu, strict=True)]
    return {
        "rate": rate,
        "published_rate": count / publish_s,
        "events": count,
        "deliveries": deliveries,
        "complete": complete,
        "short_subscribers": sum(g < count for g in got),
        "duplicated_subscribers": sum(g > count for g in got),
        "sustained": complete and p99 < LATENCY_LIMIT_S,
        "delivered_per_s": window_deliveries / window_s,
        "drain_s": drain_s,
        "latency_p50_ms": 1000 * pct(latencies, 0.50),
        "latency_p99_ms": 1000 * p99,
        "latency_max_ms": 1000 * max(latencies, default=float("nan")),
        "latency_samples": len(latencies),
        "api_cpu_ms_per_1k": 1000 * 1000 * used.cpu / max(deliveries, 1),
        "api_system_share": used.system / used.cpu if used.cpu else 0.0,  # of its CPU: kernel
        "api_cpu_share": window.cpu / window_s,  # of one core, in the window
        "api_wait_share": window.waited / window_s,  # ready to run, but no core free
        "client_cpu_share": client_cpu,  # of one core each, in the window
        "xread_per_event": (reads1["xread"] - reads0["xread"]) / count,
        "xrange_calls": reads1["xrange"] - reads0["xrange"],
    }


def next_rate(steps: list[dict[str, Any]], plan: Plan) -> float | None:
    """The ramp's next rate: the plan's rates in order until one is not sustained, then
    `refine` bisections (geometric) between the best sustained and the lowest failed rate."""
    tried = {s["rate"] for s in steps}
    failed = [s["rate"] for s in steps if not s["sustained"]]
    if not failed:
        ahead = [r for r in plan.rates if r not in tried]
        return ahead[0] if ahead else None
    ok = [s["rate"] for s in steps if s["sustained"] and s["rate"] < min(failed)]
    bisections = len(tried - set(plan.rates))
    if not ok or bisections >= plan.refine or not steps[-1]["complete"]:
        return None  # done, or the last step left a backlog that would spoil the next
    rate = float(round(math.sqrt(max(ok) * min(failed))))
    return None if rate in tried else rate


async def delivery(port: int, api_pid: int, redis: Redis, plan: Plan) -> dict[str, Any]:
    log = EventLog(redis, feed_limits(Settings(_env_file=None)))
    subs = await Subscribers.open(port, plan.subscribers, plan.clients, "", plan.latency_every)
    try:
        u0, t0 = Usage.of(api_pid), time.perf_counter()
        client0 = await subs.snapshot()
        await asyncio.sleep(plan.idle_s)
        client1 = await subs.snapshot()
        idle = {
            "api_cpu_share": (Usage.of(api_pid) - u0).cpu / (time.perf_counter() - t0),
            "events": sum(client1.counts) - sum(client0.counts),
        }
        steps: list[dict[str, Any]] = []
        rate = next_rate(steps, plan)
        while rate is not None:
            step = await delivery_step(subs, log, redis, api_pid, rate, plan)
            print_step(step)
            steps.append(step)
            await asyncio.sleep(1.0)  # a breath between steps
            rate = next_rate(steps, plan)
    finally:
        await subs.close()
    sustained = [s for s in steps if s["sustained"]]
    return {
        "idle": idle,
        "steps": sorted(steps, key=lambda s: s["rate"]),
        "sustained_rate": max((s["rate"] for s in sustained), default=0.0),
        "peak_delivered_per_s": max(s["delivered_per_s"] for s in steps),
    }


def print_step(s: dict[str, Any]) -> None:
    print(
        f"{s['rate']:6.0f} ev/s: {s['delivered_per_s']:9,.0f} deliveries/s, "
        f"{'complete' if s['complete'] else 'INCOMPLETE'} (drain {s['drain_s']:.1f}s), "
        f"latency p50 {s['latency_p50_ms']:.1f} p99 {s['latency_p99_ms']:.1f} ms, "
        f"API {s['api_cpu_ms_per_1k']:.1f} ms CPU/1k ({s['api_cpu_share']:.0%} of a core, "
        f"waited {s['api_wait_share']:.0%}, kernel {s['api_system_share']:.0%}), "
        f"XREAD/event {s['xread_per_event']:.2f}, XRANGE {s['xrange_calls']}, clients "
        + "/".join(f"{c:.0%}" for c in s["client_cpu_share"])
    )


SUBSCRIBERS_FOR = {"none": None, "filtered": NOTHING, "all": ""}  # config -> query


async def ingestion_round(
    config: str, port: int, api_pid: int, redis: Redis, plan: Plan, tag: str
) -> dict[str, Any]:
    query = SUBSCRIBERS_FOR[config]
    subs = None
    if query is not None:
        subs = await Subscribers.open(port, plan.subscribers, plan.clients, query, 50)
    try:
        work = single_packet_workload(
            f"{tag}-{config}", plan.ingest_calls, plan.ingest_packets, seed=3
        )
        added0, u0 = await events_added(redis), Usage.of(api_pid)
        result = await closed_loop(port, work.requests, plan.ingest_connections, plan.ingest_s)
        in_loop = Usage.of(api_pid) - u0
        events = await events_added(redis) - added0
        wanted = 0 if config == "filtered" else events
        drain_s, delivered = 0.0, 0
        if subs is not None:
            t0, snap = time.monotonic(), await subs.snapshot()
            while any(c != wanted for c in snap.counts):
                if time.monotonic() - t0 > plan.ingest_drain_cap_s:
                    break
                await asyncio.sleep(SNAP_EVERY_S * 5)
                snap = await subs.snapshot()
            drain_s, delivered = time.monotonic() - t0, sum(snap.counts)
        total_cpu = (Usage.of(api_pid) - u0).cpu
    finally:
        if subs is not None:
            await subs.close()
    await asyncio.sleep(1.0)  # the server lets the closed subscriptions go
    assert result.errors == 0, result.statuses
    return {
        "config": config,
        "packets_per_s": result.rate,
        "packets": result.items,
        "events": events,
        "deliveries": delivered,
        "complete": delivered == wanted * (plan.subscribers if subs else 0),
        "drain_s": drain_s,
        "cpu_us_per_packet_loop": 1e6 * in_loop.cpu / result.items,
        "cpu_us_per_packet_all": 1e6 * total_cpu / result.items,
        "api_cpu_s": total_cpu,
        "api_cpu_share_loop": in_loop.cpu / result.elapsed_s,
        "api_wait_share_loop": in_loop.waited / result.elapsed_s,
    }


async def ingestion(port: int, api_pid: int, redis: Redis, plan: Plan) -> dict[str, Any]:
    """Single-packet ingestion with no / filtered / all-taking subscribers, alternated. The
    feed's reader runs throughout (the delivery phase started it), as in any API process that
    has served a supervisor once."""
    rounds: list[dict[str, Any]] = []
    for n in range(plan.ingest_rounds):
        for config in SUBSCRIBERS_FOR:
            r = await ingestion_round(config, port, api_pid, redis, plan, f"fo{n}")
            print(
                f"ingestion, subscribers {config:8}: {r['packets_per_s']:7,.0f} packets/s, "
                f"API {r['cpu_us_per_packet_loop']:.0f} us CPU/packet in the loop, "
                f"{r['cpu_us_per_packet_all']:.0f} with the feed's drain ({r['drain_s']:.1f}s), "
                f"{r['api_cpu_share_loop']:.0%} of a core, waited {r['api_wait_share_loop']:.0%}; "
                f"{r['events']} events, {r['deliveries']} deliveries"
            )
            rounds.append(r)
    medians: dict[str, dict[str, float]] = {}
    for config in SUBSCRIBERS_FOR:
        mine = [r for r in rounds if r["config"] == config]
        medians[config] = {
            k: statistics.median(r[k] for r in mine)
            for k in ("packets_per_s", "cpu_us_per_packet_loop", "cpu_us_per_packet_all")
        }
    return {"rounds": rounds, "medians": medians}


async def measure(plan: Plan, options: Options) -> dict[str, Any]:
    with BenchStack(Layout(api_processes=1, workers=0), options.stores) as stack:
        assert stack.api is not None
        redis = Redis.from_url(stack.redis_url)
        try:
            figures: dict[str, Any] = {"plan": asdict(plan), "loadavg_start": loadavg()}
            figures["latency_limit_ms"] = 1000 * LATENCY_LIMIT_S
            figures["delivery"] = await delivery(stack.api_port, stack.api.pid, redis, plan)
            figures["ingestion"] = await ingestion(stack.api_port, stack.api.pid, redis, plan)
            figures["loadavg_end"] = loadavg()
            return figures
        finally:
            await redis.aclose()


def problems(figures: dict[str, Any]) -> list[str]:
    return [
        f"ingestion round {r['config']}: {r['deliveries']} deliveries, not every event to every"
        " subscriber"
        for r in figures["ingestion"]["rounds"]
        if not r["complete"]
    ]


def run(options: Options) -> Outcome:
    figures = uvloop.run(measure(QUICK if options.quick else Plan(), options))
    return Outcome(fanout_report.section(figures, command("fanout")), figures, problems(figures))
