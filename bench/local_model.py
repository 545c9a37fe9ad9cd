"""What the local model costs a live call (`python -m bench local_model`).

Two-party calls at real-time pace over the media WebSocket, `make run`'s layout, AI_PROVIDER=local
(Whisper tiny.en), as bench/live_transcripts.py runs them, but with both parties speaking
throughout (each track its own sentences back to back: the model's worst case, where the
turn-taking dialogue leaves one track silent half the time). Figures: CPU per call-minute of the
workers' model pool (their spawned processes), of the workers and of the whole stack; the live
lag (an utterance's event on the feed minus when its last word was spoken); and where the model's
work went, per transcription window (db: transcript_window): how many windows, their lengths,
live (stored before the call ended) or final. --quick: one call of 6 s, one worker.

Run it in two trees to compare (its figures are CPU seconds, so a shared machine's load moves
them little; the ratio of one run against the other is the figure to quote).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import psutil

from bench.common import pct
from bench.live_transcripts import paced_and_followed
from bench.real_calls_client import CallRun
from bench.real_calls_frames import Dialogue, TwoTrackCall, ticks_of
from bench.real_calls_layout import RunLayout, start_layout
from bench.sections import loadavg
from bench.stack import CORES
from bench.suite import Options, Outcome, command
from simulate import speech

HEADING = "## The local model's cost per live call"


@dataclass(frozen=True)
class Plan:
    calls: int = 2
    seconds: float = 120.0
    processes: int = CORES  # API processes and workers, as `make run`
    env: tuple[tuple[str, str], ...] = ()


QUICK = Plan(calls=1, seconds=6.0, processes=1, env=(("AI_MAX_CONCURRENCY", "1"),))


def both_speaking() -> Dialogue:
    """The sentences shared out between the two tracks, each track's spoken back to back (a
    pause of 300 ms between two), so that both parties speak all along; the shorter track is
    padded with silence to the longer's length."""
    sentences = speech.speakable()
    source = "espeak-ng" if speech.speech_available() else "shipped recordings"
    pause = speech.silence(300)
    tracks = [bytearray(), bytearray()]
    for n, sentence in enumerate(sentences):
        tracks[n % 2] += speech.synthesise(sentence.text) + pause
    longest = max(len(t) for t in tracks)
    padded = [bytes(t) + speech.silence(longest // speech.BYTES_PER_MS)[: longest - len(t)]
              for t in tracks]  # fmt: skip
    from base64 import b64encode

    payloads = [tuple(b64encode(f).decode() for f in speech.frames(t)) for t in padded]
    return Dialogue(payloads[0], payloads[1], f"{source}, both parties speaking")


def pool_cpu_s(layout: RunLayout) -> float:
    """CPU seconds so far of the workers' model processes (multiprocessing's spawned children:
    the pool that loads the model; they live as long as their worker)."""
    total = 0.0
    for root in layout.stack.pids()["workers"]:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(root).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if "multiprocessing" in " ".join(child.cmdline()):
                        times = child.cpu_times()
                        total += times.user + times.system
    return total


async def windows(layout: RunLayout, stopped: dict[str, float]) -> list[dict[str, Any]]:
    """Every transcription window stored: its call, track, seconds, and whether it was stored
    while the call was live (before its stop was sent)."""
    conn = await asyncpg.connect(layout.pg_dsn)
    try:
        rows = await conn.fetch(
            "SELECT call_id, track, start_sample, end_sample, created_at FROM transcript_window"
        )
    finally:
        await conn.close()
    found = []
    for r in rows:
        at: datetime = r["created_at"]
        found.append({
            "call_id": r["call_id"],
            "track": int(r["track"]),
            "seconds": (int(r["end_sample"]) - int(r["start_sample"])) / 8000,
            "live": at.timestamp() < stopped.get(r["call_id"], float("inf")),
        })  # fmt: skip
    return found


async def measure(plan: Plan, options: Options) -> dict[str, Any]:
    # Workers at the API's priority and a long attempt timeout: on a machine shared with others'
    # work, niced workers starved and their calls' windows ran out of time (FAILED, nothing
    # measured); the CPU a window costs is the figure here, not how long it waited for a core.
    env = {
        "AI_PROVIDER": "local",
        "AI_ATTEMPT_TIMEOUT_S": "120",
        "WORKER_NICE": "0",
        **dict(plan.env),
    }
    layout = start_layout(options.stores, env, plan.processes)
    try:
        dialogue = both_speaking()
        runs = [
            CallRun(TwoTrackCall(f"local-{n}", ticks_of(plan.seconds), dialogue))
            for n in range(plan.calls)
        ]
        cpu_before, pool_before = layout.cpu_s(), pool_cpu_s(layout)
        seen = await paced_and_followed(layout.api_port, runs)
        cpu = {k: v - cpu_before.get(k, 0.0) for k, v in layout.cpu_s().items()}
        cpu["pool"] = pool_cpu_s(layout) - pool_before
        stopped = {r.call_id: r.sent_at[-1] for r in runs if r.sent_at}
        found = await windows(layout, stopped)
    finally:
        await layout.close()
    return report(runs, seen, cpu, found, plan, dialogue.source)


def report(
    runs: list[CallRun],
    seen: list[tuple[float, dict[str, Any]]],
    cpu: dict[str, float],
    found: list[dict[str, Any]],
    plan: Plan,
    source: str,
) -> dict[str, Any]:
    by_call = {run.call_id: run for run in runs}
    lags = []
    for at, body in seen:
        run = by_call.get(str(body.get("call_id")))
        if run is not None and run.sent_at:
            lags.append(at - (run.sent_at[0] + float(body["end_s"])))
    minutes = len(runs) * plan.seconds / 60
    stack = sum(v for k, v in cpu.items() if k in ("api", "workers", "redis", "postgres"))
    live = [w["seconds"] for w in found if w["live"]]
    final = [w["seconds"] for w in found if not w["live"]]
    return {
        "calls": len(runs),
        "seconds": plan.seconds,
        "source": source,
        "env": dict(plan.env),
        "states": sorted({str(r.state) for r in runs}),
        "utterances": len(lags),
        "lag_p50": pct(lags, 0.5) if lags else None,
        "lag_p95": pct(lags, 0.95) if lags else None,
        "pool_cpu_per_min": cpu.get("pool", 0.0) / minutes,
        "worker_cpu_per_min": cpu.get("workers", 0.0) / minutes,
        "stack_cpu_per_min": stack / minutes,
        "windows_live": len(live),
        "windows_final": len(final),
        "window_s_live": sorted(round(s, 1) for s in live),
        "window_s_final": sorted(round(s, 1) for s in final),
        "cpu": cpu,
    }


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def lines_of(r: dict[str, Any]) -> list[str]:
    live, final = r["window_s_live"], r["window_s_final"]
    return [
        HEADING,
        "",
        f"`{command('local_model')}`: {r['calls']} two-party calls of {r['seconds']:.0f} s "
        f"({r['source']}) at real-time pace over the media WebSocket, `make run`'s layout, "
        f"AI_PROVIDER=local (Whisper tiny.en); load average {loadavg()}.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| CPU per call-minute: model pool / workers / whole stack | {r['pool_cpu_per_min']:.2f} "
        f"s / {r['worker_cpu_per_min']:.2f} s / {r['stack_cpu_per_min']:.2f} s |",
        f"| live lag p50 / p95 | {_s(r['lag_p50'])} / {_s(r['lag_p95'])} |",
        f"| utterances told | {r['utterances']} ({', '.join(r['states'])}) |",
        f"| windows live / final | {len(live)} (median {pct(live, 0.5):.1f} s) / {len(final)} "
        f"(median {pct(final, 0.5):.1f} s) |",
        "",
    ]


def run(options: Options) -> Outcome:
    plan = QUICK if options.quick else Plan()
    result = asyncio.run(measure(plan, options))
    problems = [] if result["utterances"] else ["no utterance was told"]
    return Outcome(lines_of(result), result, problems)
