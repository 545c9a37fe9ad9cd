"""The real-calls benchmark's plan, its shared accounting (each phase from empty stores: CPU,
PostgreSQL bytes, what the calls saw), and its first two phases (the ramp and the soak are in
bench/real_calls_load.py):

- length: 1-minute and `long_s` calls at real-time pace, the long ones live all along and the
  short ones in rounds beside them; Redis bytes per call while live and after ARCHIVED,
  PostgreSQL bytes and CPU per call-minute, completion -> ARCHIVED by length, the recordings;
- fast: calls sent as fast as the socket takes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from bench.real_calls_client import (
    HOST,
    CallRun,
    Hook,
    call_key_bytes,
    check_audio,
    packet_entries,
    run_call,
    summed,
)
from bench.real_calls_frames import FRAMES_PER_S, Dialogue, TwoTrackCall, ticks_of
from bench.real_calls_lag import LagSampler, RedisLagSampler, percentile, sampling
from bench.real_calls_layout import RunLayout

RAW_BYTES_PER_CALL_MINUTE = 2 * 8000 * 60  # two tracks of 8 kHz μ-law
LAG_TARGET_MS = 100.0
# A client further behind its schedule than the lag's budget (p99) no longer offers real-time
# load; less is the scheduler's jitter on a shared machine (the lag is aged from the actual send).
PACE_SLIP_MS = LAG_TARGET_MS


@dataclass(frozen=True)
class Plan:
    short_s: float = 60.0
    long_s: float = 600.0
    length_calls: int = 3  # of each length at once
    fast_calls: int = 8
    fast_s: float = 60.0
    ramp: tuple[int, ...] = (5, 10, 20, 40, 80, 160, 320)
    ramp_s: float = 30.0
    soak_s: float = 600.0
    soak_call_s: float = 60.0
    reads_per_s: float = 64.0
    redis_sample_s: float = 2.0
    memory_sample_s: float = 5.0
    final_cap_s: float = 180.0
    stagger_s: float = 1.0  # a step's calls start spread over this


QUICK = Plan(
    short_s=1, long_s=2, length_calls=1, fast_calls=1, fast_s=1, ramp=(2,), ramp_s=1, soak_s=2,
    soak_call_s=1, redis_sample_s=0.5, memory_sample_s=0.5, final_cap_s=60, stagger_s=0.2,
)  # fmt: skip


@dataclass(frozen=True)
class Samplers:
    status: LagSampler
    redis: RedisLagSampler


class Bench:
    def __init__(self, layout: RunLayout, plan: Plan, dialogue: Dialogue) -> None:
        self.layout, self.plan, self.dialogue = layout, plan, dialogue
        base = f"http://{HOST}:{layout.api_port}"
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=500)
        self.http = httpx.AsyncClient(base_url=base, limits=limits, timeout=60)
        self.reads = httpx.AsyncClient(base_url=base, limits=limits, timeout=60)
        self.live: dict[str, CallRun] = {}
        self._made = 0

    async def close(self) -> None:
        await self.http.aclose()
        await self.reads.aclose()

    def new_call(self, prefix: str, seconds: float) -> CallRun:
        self._made += 1
        return CallRun(TwoTrackCall(f"rc-{prefix}-{self._made}", ticks_of(seconds), self.dialogue))

    async def call(
        self,
        run: CallRun,
        paced: bool = True,
        delay_s: float = 0.0,
        before_stop: Hook | None = None,
    ) -> CallRun:
        await asyncio.sleep(delay_s)
        return await run_call(
            self.layout.api_port, self.http, run, paced=paced, live=self.live,
            before_stop=before_stop, final_cap_s=self.plan.final_cap_s,
        )  # fmt: skip

    def samplers(self) -> Samplers:
        return Samplers(
            LagSampler(self.reads, self.live, self.plan.reads_per_s),
            RedisLagSampler(self.layout.redis, self.live),
        )

    async def audio(self, runs: list[CallRun], at_once: int = 4) -> dict[str, Any]:
        """Every call's recording checked against what it sent, `at_once` at a time."""
        gate = asyncio.Semaphore(at_once)

        async def one(run: CallRun) -> dict[str, Any]:
            async with gate:
                return await check_audio(self.http, run)

        checks = await asyncio.gather(*(one(r) for r in runs))
        served = [c for c in checks if c.get("status") == 200]
        return {
            "checked": len(checks),
            "served": len(served),
            "statuses": dict(Counter(str(c.get("status")) for c in checks)),
            "length_ok": sum(bool(c.get("length_ok")) for c in served),
            "tracks_match": sum(all(c.get("tracks_match") or [False]) for c in served),
            "example": served[0] if served else (checks[0] if checks else None),
        }


async def metered(b: Bench, runs_of: Callable[[], Awaitable[list[CallRun]]]) -> dict[str, Any]:
    """Runs the calls from empty stores; their CPU, PostgreSQL bytes and results."""
    await b.layout.reset()
    cpu0, pg0, t0 = b.layout.cpu_s(), await b.layout.pg_bytes(), time.perf_counter()
    runs = await runs_of()
    seconds = time.perf_counter() - t0
    cpu1, pg1 = b.layout.cpu_s(), await b.layout.pg_bytes()
    minutes = sum(len(r.sent_at) for r in runs) / FRAMES_PER_S / 60
    pg_delta = {t: pg1.get(t, 0) - pg0.get(t, 0) for t in pg1}
    per_minute = sum(pg_delta.values()) / minutes if minutes else 0.0
    cpu = {k: cpu1[k] - cpu0.get(k, 0.0) for k in cpu1}
    return {
        "runs": runs,
        "wall_s": seconds,
        "call_minutes": minutes,
        "cpu_s": cpu,
        "cpu_ms_per_call_minute": {k: 1000 * v / minutes if minutes else 0 for k, v in cpu.items()},
        "pg_delta_bytes": pg_delta,
        "pg_bytes_per_call_minute": per_minute,
        "pg_to_raw_audio": per_minute / RAW_BYTES_PER_CALL_MINUTE,
    }


def summary(runs: list[CallRun]) -> dict[str, Any]:
    finals = [t for r in runs if (t := r.to_final_s) is not None]
    slips = [s for r in runs for s in r.slip_ms]
    return {
        "calls": len(runs),
        "frames_sent": 2 * sum(len(r.sent_at) for r in runs),
        "lost_frames": sum(max(r.lost, 0) for r in runs),
        "calls_losing": sum(r.lost != 0 for r in runs),
        "errors": sum(len(r.errors) for r in runs),
        "error_examples": [e for r in runs for e in r.errors][:3],
        "close_codes": dict(Counter(str(r.close_code) for r in runs)),
        "states": dict(Counter(str(r.state) for r in runs)),
        "received_example": runs[0].received if runs else {},
        "to_archived_p50_s": percentile(finals, 0.5),
        "to_archived_p99_s": percentile(finals, 0.99),
        "to_archived_max_s": max(finals, default=None),
        "pace_slip_p99_ms": percentile(slips, 0.99),
        "pace_slip_max_ms": max(slips, default=None),
    }


def lag_summary(samplers: Samplers) -> dict[str, Any]:
    """The lag (Redis' count) and the status' view of it (bench/real_calls_client.py)."""
    s, r = samplers.status, samplers.redis
    redis_p99 = percentile(r.lag_ms, 0.99)
    status_p99 = percentile(s.upper_ms, 0.99)
    return {
        "lag_samples": len(r.lag_ms),
        "lag_p50_ms": percentile(r.lag_ms, 0.5),
        "lag_p99_ms": redis_p99 if redis_p99 is not None else status_p99,
        "lag_max_ms": max(r.lag_ms, default=None),
        "lag_of": "redis" if redis_p99 is not None else "status",
        "redis_read_p99_ms": percentile(r.read_ms, 0.99),
        "status_samples": len(s.upper_ms),
        "status_lag_p50_ms": percentile(s.upper_ms, 0.5),
        "status_lag_p99_ms": status_p99,
        "status_lag_lower_p99_ms": percentile(s.lower_ms, 0.99),
        "status_read_p99_ms": percentile(s.read_ms, 0.99),
        "status_read_errors": s.errors,
    }


def without_runs(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if k != "runs"}


# --- length ---------------------------------------------------------------------------------


class RedisWatch:
    """Each live call's Redis bytes every `every_s`, and once just before its stop."""

    def __init__(self, b: Bench, every_s: float) -> None:
        self.b, self.every_s = b, every_s
        self.peak: dict[str, int] = {}

    async def sample(self, run: CallRun) -> int:
        size = summed(await call_key_bytes(self.b.layout.redis, run.call_id))
        self.peak[run.call_id] = max(self.peak.get(run.call_id, 0), size)
        return size

    async def run(self) -> None:
        while True:
            for run in list(self.b.live.values()):
                await self.sample(run)
            await asyncio.sleep(self.every_s)

    async def before_stop(self, run: CallRun) -> None:
        run.redis_end = {"bytes": await self.sample(run)}


async def length_phase(b: Bench) -> dict[str, Any]:
    p = b.plan
    watch = RedisWatch(b, p.redis_sample_s)
    rounds = max(1, int(p.long_s // p.short_s) - 1)  # the last ends before the long calls do
    samplers = b.samplers()

    async def calls() -> list[CallRun]:
        longs = [b.new_call("long", p.long_s) for _ in range(p.length_calls)]

        async def short_rounds() -> list[CallRun]:
            done: list[CallRun] = []
            for _ in range(rounds):
                runs = [b.new_call("short", p.short_s) for _ in range(p.length_calls)]
                done += await asyncio.gather(
                    *(b.call(r, before_stop=watch.before_stop) for r in runs)
                )
            return done

        watcher = asyncio.create_task(watch.run())
        async with sampling(samplers.status, samplers.redis):
            shorts = asyncio.create_task(short_rounds())
            ended = await asyncio.gather(*(b.call(r, before_stop=watch.before_stop) for r in longs))
            done = [*await shorts, *ended]
        watcher.cancel()
        return done

    m = await metered(b, calls)
    runs: list[CallRun] = m["runs"]
    after = {r.call_id: await call_key_bytes(b.layout.redis, r.call_id) for r in runs}
    groups: dict[str, Any] = {}
    for name, seconds in (("short", p.short_s), ("long", p.long_s)):
        group = [r for r in runs if f"-{name}-" in r.call_id]
        groups[name] = {
            "seconds": seconds,
            **summary(group),
            **redis_of(group, watch.peak, after),
            "audio": await b.audio(group),
        }
    return {**without_runs(m), "groups": groups, "lag": lag_summary(samplers), "rounds": rounds}


def redis_of(
    runs: list[CallRun], peak: dict[str, int], after: dict[str, dict[str, dict[str, int]]]
) -> dict[str, Any]:
    ends = [r.redis_end.get("bytes", 0) for r in runs]
    minutes = [len(r.sent_at) / FRAMES_PER_S / 60 for r in runs]
    kept = [after[r.call_id] for r in runs]
    return {
        "redis_live_max_bytes": float(np.mean([peak.get(r.call_id, 0) for r in runs])),
        "redis_live_end_bytes": float(np.mean(ends)),
        "redis_end_per_call_minute": float(
            np.mean([e / m for e, m in zip(ends, minutes, strict=True)])
        ),
        "redis_after_bytes": float(np.mean([summed(k) for k in kept])),
        "redis_after_packet_entries": float(np.mean([packet_entries(k) for k in kept])),
        "redis_after_keys": kept[0] if kept else {},
    }


# --- fast -----------------------------------------------------------------------------------


async def fast_phase(b: Bench) -> dict[str, Any]:
    p = b.plan
    watch = RedisWatch(b, p.redis_sample_s)

    async def calls() -> list[CallRun]:
        runs = [b.new_call("fast", p.fast_s) for _ in range(p.fast_calls)]
        return list(
            await asyncio.gather(
                *(b.call(r, paced=False, before_stop=watch.before_stop) for r in runs)
            )
        )

    m = await metered(b, calls)
    runs: list[CallRun] = m["runs"]
    after = {r.call_id: await call_key_bytes(b.layout.redis, r.call_id) for r in runs}
    # Sent once the server has handled the stop (it closes then): the socket's buffers took it.
    send_s = [r.closed_at - r.started_at for r in runs if r.closed_at is not None]
    audio_s = p.fast_s
    return {
        **without_runs(m),
        **summary(runs),
        **redis_of(runs, watch.peak, after),
        "send_s_max": max(send_s, default=None),
        "frames_per_s": 2 * sum(len(r.sent_at) for r in runs) / max(send_s, default=1.0),
        "speed_up_per_call": audio_s / float(np.mean(send_s)) if send_s else None,
        "audio": await b.audio(runs),
    }
