"""What the local model costs a live call (`python -m bench local_model`).

Two-party calls at real-time pace over the media WebSocket, `make run`'s layout, AI_PROVIDER=local
(Whisper tiny.en), as bench/live_transcripts.py runs them, but with both parties speaking
throughout (each track its own sentences back to back: the model's worst case, where the
turn-taking dialogue leaves one track silent half the time). Two workloads, each on a stack of
its own (LOCAL_MODEL_WORKLOADS, comma-separated, to run fewer):

- `repetitive`: the shipped recordings (simulate/recordings/, 6 sentences, 3 a track): each
  track a loop of about 10 s said again and again, as an IVR prompt, a hold message or a caller
  repeating a number is; what the suite hears on a machine without espeak-ng;
- `espeak`: every sentence espeak-ng speaks (a loop of about 21 s a track; skipped without it);
- `dialogue`: bench/live_transcripts.py's turn-taking dialogue (the parties speak in turn, so
  each track is silent half the time), to set the pool's share beside that suite's figures.

Settings (LOCAL_MODEL_SETTINGS): `defaults`, `make run`'s (AI_ATTEMPT_TIMEOUT_S=10 plus the
allowance per audio second, WORKER_NICE=10); `generous`, the workers un-niced with attempts of
120 s (what the cost is when no attempt times out). Figures: CPU per call-minute of the workers'
model pool (their spawned processes), of the workers and of the whole stack; the live lag (an
utterance's event on the feed minus when its last word was spoken); and where the model's work
went: the transcription windows stored (db: transcript_window), their lengths, live (stored
before the call ended) or final, the attempts by outcome (db: ai_attempt) and the pool's CPU per
window stored. --quick: one call of 6 s, one worker, the repetitive workload, `generous`.

Run it in two trees to compare (its figures are CPU seconds, so a shared machine's load moves
them little; the ratio of one run against the other is the figure to quote).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from base64 import b64encode
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import psutil

from bench.common import pct
from bench.live_transcripts import paced_and_followed
from bench.real_calls_client import CallRun
from bench.real_calls_frames import Dialogue, TwoTrackCall, real_dialogue, ticks_of
from bench.real_calls_layout import RunLayout, start_layout
from bench.sections import loadavg
from bench.stack import CORES
from bench.suite import Options, Outcome, command
from simulate import speech

HEADING = "## The local model's cost per live call"
WORKLOADS = ("repetitive", "espeak", "dialogue")
SETTINGS: dict[str, dict[str, str]] = {
    "defaults": {},  # make run's
    # Workers at the API's priority and a long attempt timeout: what a window costs when no
    # attempt times out and none waits for a core behind others' work.
    "generous": {"AI_ATTEMPT_TIMEOUT_S": "120", "WORKER_NICE": "0"},
}
PAUSE_MS = 300  # between two sentences of a track


@dataclass(frozen=True)
class Plan:
    calls: int = 2
    seconds: float = 120.0
    processes: int = CORES  # API processes and workers, as `make run`
    env: tuple[tuple[str, str], ...] = ()
    workload: str = "repetitive"
    settings: str = "defaults"


# The smoke run (the test suite's): the generous settings, since it shares the cores with the
# rest of the suite. With make run's, a niced worker there can be starved past its attempt
# timeouts (a suite run under CPU load: 10 attempts timed out, the call FAILED), which is the
# defaults doing their job on a busy box, not the suite failing to run.
QUICK = Plan(
    calls=1, seconds=6.0, processes=1, env=(("AI_MAX_CONCURRENCY", "1"),), settings="generous"
)


def plans(quick: bool) -> list[Plan]:
    """The runs asked for (LOCAL_MODEL_WORKLOADS, LOCAL_MODEL_SETTINGS), espeak-ng's only where
    it is installed."""
    if quick:
        return [QUICK]
    settings = os.environ.get("LOCAL_MODEL_SETTINGS", "defaults")
    if settings not in SETTINGS:
        raise SystemExit(f"LOCAL_MODEL_SETTINGS: one of {', '.join(SETTINGS)}, not {settings!r}")
    asked = os.environ.get("LOCAL_MODEL_WORKLOADS", ",".join(WORKLOADS)).split(",")
    unknown = [w for w in asked if w not in WORKLOADS]
    if unknown:
        raise SystemExit(f"LOCAL_MODEL_WORKLOADS: {unknown} (known: {', '.join(WORKLOADS)})")
    runnable = [w for w in asked if w == "repetitive" or speech.speech_available()]
    return [Plan(workload=w, settings=settings) for w in runnable]


def both_speaking(workload: str) -> Dialogue:
    """The workload's sentences shared out between the two tracks, each track's spoken back to
    back (PAUSE_MS between two), so that both parties speak all along; the shorter track is
    padded with silence to the longer's length. `repetitive`: the shipped recordings; `espeak`:
    every sentence, spoken by espeak-ng now."""
    if workload == "repetitive":
        said = list(speech.shipped_recordings().values())
        source = "shipped recordings looped: repetitive speech"
    else:
        said = [speech.synthesise(s.text) for s in speech.speakable()]
        source = "espeak-ng"
    pause = speech.silence(PAUSE_MS)
    tracks = [bytearray(), bytearray()]
    for n, audio in enumerate(said):
        tracks[n % 2] += audio + pause
    longest = max(len(t) for t in tracks)
    padded = [bytes(t) + speech.silence(longest // speech.BYTES_PER_MS)[: longest - len(t)]
              for t in tracks]  # fmt: skip
    payloads = [tuple(b64encode(f).decode() for f in speech.frames(t)) for t in padded]
    loop_s = len(payloads[0]) * speech.FRAME_MS / 1000
    return Dialogue(payloads[0], payloads[1], f"{source}, a loop of {loop_s:.0f} s a track")


def conversation(workload: str) -> Dialogue:
    """What the workload's calls say: the parties in turn (`dialogue`), else both all along."""
    return real_dialogue() if workload == "dialogue" else both_speaking(workload)


def pool_processes(layout: RunLayout) -> list[psutil.Process]:
    """The workers' model processes (multiprocessing's spawned children: the pool that loads
    the model; they live as long as their worker)."""
    found = []
    for root in layout.stack.pids()["workers"]:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(root).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if "multiprocessing" in " ".join(child.cmdline()):
                        found.append(child)
    return found


def pool_cpu_s(layout: RunLayout) -> float:
    """CPU seconds so far of the workers' model processes."""
    total = 0.0
    for child in pool_processes(layout):
        with contextlib.suppress(psutil.Error):
            times = child.cpu_times()
            total += times.user + times.system
    return total


# How long a stack's workers may take to start their model pools (jobs/ai_local.py's start: the
# processes spawned, each loading the model), and how long their CPU must stay still to count as
# started.
POOL_START_S = 60.0
POOL_STILL_S = 1.0


async def pools_started(layout: RunLayout, plan: Plan) -> float:
    """The model pools' CPU seconds once every worker has started its pool (its processes all
    there, their CPU still for POOL_STILL_S): what starting them cost, counted apart from the
    calls (a worker starts its pool once, whatever the calls it then transcribes). A tree whose
    workers start their pools at their first call has none to wait for: 0 after POOL_START_S."""
    size = min(int(dict(plan.env).get("AI_MAX_CONCURRENCY", CORES)), CORES)
    waited, before = 0.0, -1.0
    while waited < POOL_START_S:
        now = pool_cpu_s(layout)
        if len(pool_processes(layout)) >= plan.processes * size and now == before:
            return now
        before = now
        await asyncio.sleep(POOL_STILL_S)
        waited += POOL_STILL_S
    return pool_cpu_s(layout)


async def stored(layout: RunLayout, stopped: dict[str, float]) -> dict[str, Any]:
    """Every transcription window stored (its call, track, seconds, and whether it was stored
    while the call was live: before its stop was sent), and the transcription attempts by
    outcome."""
    conn = await asyncpg.connect(layout.pg_dsn)
    try:
        rows = await conn.fetch(
            "SELECT call_id, track, start_sample, end_sample, created_at FROM transcript_window"
        )
        attempts = await conn.fetch(
            "SELECT outcome, count(*) AS n FROM ai_attempt WHERE step = 'transcription'"
            " GROUP BY outcome"
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
    return {"windows": found, "attempts": {str(a["outcome"]): int(a["n"]) for a in attempts}}


async def measure(plan: Plan, options: Options) -> dict[str, Any]:
    env = {"AI_PROVIDER": "local", **SETTINGS[plan.settings], **dict(plan.env)}
    layout = start_layout(options.stores, env, plan.processes)
    try:
        dialogue = conversation(plan.workload)
        runs = [
            CallRun(TwoTrackCall(f"local-{n}", ticks_of(plan.seconds), dialogue))
            for n in range(plan.calls)
        ]
        pool_start = await pools_started(layout, plan)
        cpu_before, pool_before = layout.cpu_s(), pool_cpu_s(layout)
        seen = await paced_and_followed(layout.api_port, runs)
        cpu = {k: v - cpu_before.get(k, 0.0) for k, v in layout.cpu_s().items()}
        cpu["pool"] = pool_cpu_s(layout) - pool_before
        cpu["pool_start"] = pool_start
        stopped = {r.call_id: r.sent_at[-1] for r in runs if r.sent_at}
        found = await stored(layout, stopped)
    finally:
        await layout.close()
    return report(runs, seen, cpu, found, plan, dialogue.source)


def report(
    runs: list[CallRun],
    seen: list[tuple[float, dict[str, Any]]],
    cpu: dict[str, float],
    found: dict[str, Any],
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
    windows = found["windows"]
    live = [w["seconds"] for w in windows if w["live"]]
    final = [w["seconds"] for w in windows if not w["live"]]
    return {
        "workload": plan.workload,
        "settings": plan.settings,
        "calls": len(runs),
        "seconds": plan.seconds,
        "source": source,
        "env": dict(plan.env),
        "states": sorted({str(r.state) for r in runs}),
        "utterances": len(lags),
        "lag_p50": pct(lags, 0.5) if lags else None,
        "lag_p95": pct(lags, 0.95) if lags else None,
        "pool_cpu_per_min": cpu.get("pool", 0.0) / minutes,
        "pool_start_cpu_s": cpu.get("pool_start", 0.0),
        "worker_cpu_per_min": cpu.get("workers", 0.0) / minutes,
        "stack_cpu_per_min": stack / minutes,
        "windows_live": len(live),
        "windows_final": len(final),
        "window_s_live": sorted(round(s, 1) for s in live),
        "window_s_final": sorted(round(s, 1) for s in final),
        # What the pool spent, spread over the windows it stored (attempts that timed out or
        # failed included: their work is part of what a window cost).
        "pool_cpu_per_window": cpu.get("pool", 0.0) / max(len(windows), 1),
        "attempts": found["attempts"],
        "cpu": cpu,
    }


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _median(values: list[float]) -> str:
    return f"{pct(values, 0.5):.1f} s" if values else "-"


def row_of(r: dict[str, Any]) -> str:
    live, final = r["window_s_live"], r["window_s_final"]
    attempts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(r["attempts"].items()))
    return (
        f"| {r['workload']} ({r['source']}) | {r['settings']} | {r['pool_start_cpu_s']:.1f} s | "
        f"{r['pool_cpu_per_min']:.2f} s / "
        f"{r['worker_cpu_per_min']:.2f} s / {r['stack_cpu_per_min']:.2f} s | "
        f"{_s(r['lag_p50'])} / {_s(r['lag_p95'])} | {len(live)} ({_median(live)}) / "
        f"{len(final)} ({_median(final)}) | {r['pool_cpu_per_window']:.2f} s | {attempts or '-'} "
        f"| {r['utterances']} ({', '.join(r['states'])}) |"
    )


def lines_of(results: list[dict[str, Any]]) -> list[str]:
    first = results[0]
    return [
        HEADING,
        "",
        f"`{command('local_model')}`: per workload, {first['calls']} two-party calls of "
        f"{first['seconds']:.0f} s (both parties speaking throughout, or in turn: `dialogue`) at "
        "real-time pace over the media WebSocket, `make run`'s layout, AI_PROVIDER=local "
        f"(Whisper tiny.en), each on a stack of its own; load average {loadavg()} at the end.",
        "",
        "| workload | settings | pools' start-up, CPU | CPU per call-minute: model pool / workers"
        " / stack | live lag p50 / p95 | windows live / final (median length) | pool CPU per "
        "window | transcription attempts | utterances told |",
        "|---|---|---|---|---|---|---|---|---|",
        *(row_of(r) for r in results),
        "",
    ]


def run(options: Options) -> Outcome:
    results = [asyncio.run(measure(plan, options)) for plan in plans(options.quick)]
    return Outcome(lines_of(results), {"runs": results}, problems_of(results))


def problems_of(results: list[dict[str, Any]]) -> list[str]:
    """A run that told no utterance, with what its calls ended as and its attempts' outcomes:
    what tells a model starved of CPU (attempts timed out) from a feed read too soon."""
    return [
        f"{r['workload']}: no utterance was told (calls {', '.join(r['states'])}; transcription "
        f"attempts: {', '.join(f'{n} {o}' for o, n in sorted(r['attempts'].items())) or 'none'})"
        for r in results
        if not r["utterances"]
    ]
