"""Live transcripts at real-time pace: `python -m bench live_transcripts`.

Two-party calls of real speech (espeak-ng, else the shipped recordings; bench/real_calls_frames.py)
over the media WebSocket at real-time pace, against `make run`'s layout with AI_PROVIDER=local
(Whisper tiny.en) and the default SEGMENT_SECONDS. The harness reads the live feed as a
dashboard does (GET /v1/events, Server-Sent Events) and notes when each `utterance`
event arrives. An utterance's lag is that moment minus when its last word was spoken: the call's
first frame's send time plus the utterance's `end_s` (the recording's timeline is the frames').
Target (issue 17): p95 within SEGMENT_SECONDS + 5 s. Also: the utterances told before the call
ended, the worker's CPU per call-minute, and completion -> ARCHIVED.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from bench.common import pct
from bench.real_calls_client import FINAL, CallRun, run_call
from bench.real_calls_frames import TwoTrackCall, real_dialogue, ticks_of
from bench.real_calls_layout import start_layout
from bench.sections import loadavg
from bench.stack import CORES
from bench.suite import Options, Outcome, command

HEADING = "## Live transcripts"


# How long the feed may lag the status after a call's final state, at most: time enough for a
# machine under load, and a bound for a final event that never comes.
FEED_CATCH_UP_S = 30.0


@dataclass
class Feed:
    """What the live feed told: each `utterance` event and when it arrived, and the calls whose
    final state (ARCHIVED or FAILED) it told."""

    seen: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    finished: set[str] = field(default_factory=set)
    told: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def told_final(self, call_ids: set[str], timeout_s: float) -> None:
        """Until the feed has told every one of `call_ids` final (or `timeout_s`). The feed is
        one ordered stream, so by then every utterance told before it has been read."""
        with contextlib.suppress(TimeoutError):
            async with self.told:
                await asyncio.wait_for(
                    self.told.wait_for(lambda: call_ids <= self.finished), timeout_s
                )


async def follow(port: int, feed: Feed) -> None:
    """Read GET /v1/events as a dashboard does (Server-Sent Events), noting each `utterance`
    event and when it arrived, and each call's final state; runs until cancelled."""
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=None) as http,
        http.stream("GET", "/v1/events", headers={"Accept": "text/event-stream"}) as answer,
    ):
        answer.raise_for_status()
        event = ""
        async for line in answer.aiter_lines():
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:") and event == "utterance":
                feed.seen.append((time.time(), orjson.loads(line.removeprefix("data:"))))
            elif line.startswith("data:") and event == "state":
                body = orjson.loads(line.removeprefix("data:"))
                if body.get("state") in FINAL:
                    async with feed.told:
                        feed.finished.add(str(body["call_id"]))
                        feed.told.notify_all()
            elif not line:
                event = ""


@dataclass(frozen=True)
class Plan:
    calls: int = 2
    seconds: float = 120.0
    segment_s: float = 30.0
    processes: int = CORES  # API processes and workers, as `make run`
    ai_env: tuple[tuple[str, str], ...] = ()


# One model process in one worker: a smoke run pays for one model load, not four.
QUICK = Plan(
    calls=1, seconds=6.0, segment_s=2.0, processes=1, ai_env=(("AI_MAX_CONCURRENCY", "1"),)
)


async def paced_and_followed(port: int, runs: list[CallRun]) -> list[tuple[float, dict[str, Any]]]:
    """The calls sent at real-time pace while the live feed is read as a dashboard reads it:
    each `utterance` event the feed told, and when. The feed is read on until it has told the
    final state of every call that reached one: a fixed wait after the status said so would miss
    the last utterances of a machine under load."""
    feed = Feed()
    reader = asyncio.create_task(follow(port, feed))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            await asyncio.gather(
                *(run_call(port, http, run, paced=True, live={}, final_cap_s=600) for run in runs)
            )
        ended = {run.call_id for run in runs if run.state in FINAL}
        await feed.told_final(ended, FEED_CATCH_UP_S)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return feed.seen


async def measure(plan: Plan, options: Options) -> dict[str, Any]:
    calls, seconds, segment_s = plan.calls, plan.seconds, plan.segment_s
    env = {"AI_PROVIDER": "local", "SEGMENT_SECONDS": str(segment_s), "AI_ATTEMPT_TIMEOUT_S": "60"}
    layout = start_layout(options.stores, {**env, **dict(plan.ai_env)}, plan.processes)
    try:
        dialogue = real_dialogue()
        runs = [
            CallRun(TwoTrackCall(f"live-{n}", ticks_of(seconds), dialogue)) for n in range(calls)
        ]
        cpu_before = layout.cpu_s()
        seen = await paced_and_followed(layout.api_port, runs)
        cpu = {k: v - cpu_before.get(k, 0.0) for k, v in layout.cpu_s().items()}
    finally:
        await layout.close()
    return report(runs, seen, cpu, seconds, segment_s, dialogue.source)


def report(
    runs: list[CallRun],
    seen: list[tuple[float, dict[str, Any]]],
    cpu: dict[str, float],
    seconds: float,
    segment_s: float,
    source: str,
) -> dict[str, Any]:
    by_call = {run.call_id: run for run in runs}
    lags, before_stop, speakers = [], 0, set()
    for at, body in seen:
        run = by_call.get(str(body.get("call_id")))
        if run is None or not run.sent_at:
            continue
        lags.append(at - (run.sent_at[0] + float(body["end_s"])))
        speakers.add(body["speaker"])
        stop_wall = run.sent_at[-1]
        before_stop += at <= stop_wall
    minutes = len(runs) * seconds / 60
    finals = [r.to_final_s for r in runs if r.to_final_s is not None]
    return {
        "calls": len(runs),
        "seconds": seconds,
        "segment_s": segment_s,
        "source": source,
        "utterances": len(lags),
        "before_stop": before_stop,
        "speakers": sorted(speakers),
        "lag_p50": pct(lags, 0.5) if lags else None,
        "lag_p95": pct(lags, 0.95) if lags else None,
        "lag_max": max(lags) if lags else None,
        "states": sorted({str(r.state) for r in runs}),
        "to_final_p50": pct(finals, 0.5) if finals else None,
        "worker_cpu_per_min": cpu.get("workers", 0.0) / minutes,
        "api_cpu_per_min": cpu.get("api", 0.0) / minutes,
    }


def lines_of(r: dict[str, Any]) -> list[str]:
    target = r["segment_s"] + 5
    verdict = "met" if r["lag_p95"] is not None and r["lag_p95"] <= target else "NOT met"
    return [
        HEADING,
        "",
        f"`{command('live_transcripts')}`: {r['calls']} two-party calls of "
        f"{r['seconds']:.0f} s of real speech ({r['source']}) at real-time pace over the media "
        f"WebSocket, `make run`'s layout, AI_PROVIDER=local (Whisper tiny.en), SEGMENT_SECONDS="
        f"{r['segment_s']:g}; load average {loadavg()}. An utterance's lag: when its event reached "
        "the feed's reader minus when its last word was spoken.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| utterances told / before the call ended | {r['utterances']} / {r['before_stop']} |",
        f"| speakers heard | {', '.join(r['speakers'])} |",
        f"| lag p50 / p95 / max | {r['lag_p50']:.1f} s / {r['lag_p95']:.1f} s / "
        f"{r['lag_max']:.1f} s (target p95 <= {target:g} s: {verdict}) |"
        if r["lag_p95"] is not None
        else "| lag | no utterance was told |",
        f"| completion -> final state, p50 | {r['to_final_p50']:.1f} s ({', '.join(r['states'])}) |"
        if r["to_final_p50"] is not None
        else f"| final states | {', '.join(r['states'])} |",
        f"| worker CPU per call-minute, transcription included | {r['worker_cpu_per_min']:.2f} s |",
        f"| API CPU per call-minute | {r['api_cpu_per_min']:.2f} s |",
        "",
        "A window is transcribed after its segment is stored, up to its last pause; what was said "
        "after that pause is flushed and transcribed by one follow-up 3 s later (FOLLOW_UP_S), so "
        "an utterance's lag is about the rest of its segment plus the model's time. The two "
        "tracks are transcribed at once (a pool process a core).",
        "",
    ]


def run(options: Options) -> Outcome:
    result = asyncio.run(measure(QUICK if options.quick else Plan(), options))
    problems = [] if result["utterances"] else ["no utterance was told"]
    return Outcome(lines_of(result), result, problems)
