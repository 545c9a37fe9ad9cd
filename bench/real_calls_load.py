"""The real-calls benchmark's load phases: the ramp (more and more concurrent calls at real-time
pace, each step from empty stores, until one does not hold) and the soak (half the most that
held, calls replaced as they end, memory sampled over time)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from bench.real_calls_client import CallRun
from bench.real_calls_lag import sampling
from bench.real_calls_phases import (
    LAG_TARGET_MS,
    PACE_SLIP_MS,
    Bench,
    lag_summary,
    metered,
    summary,
    without_runs,
)
from bench.sections import loadavg


async def ramp_step(b: Bench, calls_at_once: int) -> dict[str, Any]:
    p = b.plan
    samplers = b.samplers()

    async def calls() -> list[CallRun]:
        runs = [b.new_call(f"ramp{calls_at_once}", p.ramp_s) for _ in range(calls_at_once)]
        delays = [i * p.stagger_s / calls_at_once for i in range(calls_at_once)]
        async with sampling(samplers.status, samplers.redis):
            return list(
                await asyncio.gather(
                    *(b.call(r, delay_s=d) for r, d in zip(runs, delays, strict=True))
                )
            )

    m = await metered(b, calls)
    s, lag = summary(m["runs"]), lag_summary(samplers)
    behind = (s["pace_slip_p99_ms"] or 0.0) > PACE_SLIP_MS
    lag_ok = lag["lag_p99_ms"] is not None and lag["lag_p99_ms"] < LAG_TARGET_MS
    stored = s["lost_frames"] == 0 and s["states"] == {"ARCHIVED": calls_at_once}
    return {
        "calls": calls_at_once,
        "loadavg": loadavg(),
        **without_runs(m),
        **s,
        **lag,
        "client_behind_pace": behind,
        "holds": stored and lag_ok and not behind and s["errors"] == 0,
    }


async def ramp_phase(b: Bench) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []
    for n in b.plan.ramp:
        steps.append(await ramp_step(b, n))
        if not steps[-1]["holds"]:
            break
    held = [s["calls"] for s in steps if s["holds"]]
    return {"steps": steps, "most_calls_held": max(held, default=0)}


async def soak_phase(b: Bench, calls_at_once: int) -> dict[str, Any]:
    p = b.plan
    samplers = b.samplers()
    series: list[dict[str, float]] = []
    t0 = time.perf_counter()
    deadline = t0 + p.soak_s

    async def slot(i: int) -> list[CallRun]:
        done: list[CallRun] = []
        seconds = p.soak_call_s * (i + 1) / calls_at_once  # ends spread over a call's length
        while (left := deadline - time.perf_counter()) > 1.0:
            done.append(await b.call(b.new_call("soak", min(seconds, left))))
            seconds = p.soak_call_s
        return done

    async def watch_memory() -> None:
        while True:
            series.append(await memory_sample(b, time.perf_counter() - t0))
            await asyncio.sleep(p.memory_sample_s)

    async def calls() -> list[CallRun]:
        watcher = asyncio.create_task(watch_memory())
        async with sampling(samplers.status, samplers.redis):
            slots = await asyncio.gather(*(slot(i) for i in range(calls_at_once)))
        watcher.cancel()
        return [r for runs in slots for r in runs]

    m = await metered(b, calls)
    runs: list[CallRun] = m["runs"]
    end = await memory_sample(b, time.perf_counter() - t0)
    flat = {k: flatness(series, k) for k in ("redis_used_memory", "api_rss", "worker_rss")}
    return {
        "calls_at_once": calls_at_once,
        **without_runs(m),
        **summary(runs),
        **lag_summary(samplers),
        "series": series,
        "after_all_archived": end,
        "flatness": flat,
        "audio": await b.audio(runs),
    }


async def memory_sample(b: Bench, elapsed_s: float) -> dict[str, float]:
    rss = b.layout.rss()
    return {
        "t_s": elapsed_s,
        "live_calls": len(b.live),
        "redis_used_memory": await b.layout.used_memory(),
        "redis_keys": int(await b.layout.redis.dbsize()),
        "api_rss": rss["api"],
        "worker_rss": rss["workers"],
    }


def flatness(series: list[dict[str, float]], key: str, warm_up: float = 0.25) -> dict[str, Any]:
    """After the first `warm_up` of the soak: the mean of its first half and of its second half
    (a sawtooth, e.g. a tail that grows and is flushed, averages out), their growth, the peak,
    and the fitted slope a minute."""
    if len(series) < 4:
        return {}
    warm_t = series[-1]["t_s"] * warm_up
    after = [s for s in series if s["t_s"] >= warm_t]
    t = np.array([s["t_s"] for s in after])
    v = np.array([s[key] for s in after], dtype=float)
    middle = (t[0] + t[-1]) / 2
    first, second = float(v[t < middle].mean()), float(v[t >= middle].mean())
    return {
        "warm_up_s": warm_t,
        "first_half_mean": first,
        "second_half_mean": second,
        "peak": float(v.max()),
        "slope_per_min": float(np.polyfit(t, v, 1)[0]) * 60,
        "growth_pct": 100 * (second - first) / first if first else None,
    }
