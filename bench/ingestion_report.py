"""The ingestion suite's section: the machine, the workload, the figures, the targets."""

from __future__ import annotations

import statistics
from dataclasses import asdict
from typing import Any

from bench.ingestion_shapes import shape_lines
from bench.suite import command


def med(results: list[dict[str, Any]], *path: str) -> float:
    values = []
    for r in results:
        v: Any = r
        for p in path:
            v = v[p]
        values.append(float(v))
    return statistics.median(values)


def _target(name: str, value: float, goal: float, higher_is_better: bool, fmt: str) -> str:
    met = value >= goal if higher_is_better else value <= goal
    if met:
        verdict = "**met**"
    else:
        miss = (goal - value) / goal if higher_is_better else (value - goal) / goal
        verdict = f"**missed** by {miss:.0%}"
    sign = ">=" if higher_is_better else "<="
    return f"| {name} | {value:{fmt}} | {sign} {goal:{fmt}} | {verdict} |"


def targets(results: list[dict[str, Any]]) -> list[str]:
    single = med(results, "closed", "rate")
    bare = med(results, "bare_closed", "rate")
    rows = [
        "| Target | Measured | Goal | Verdict |",
        "|---|---:|---:|---|",
        _target("single-packet ingestion / bare ceiling", single / bare, 0.5, True, ".2f"),
        _target("p99 at half the max rate (ms)", med(results, "open", "p99"), 10.0, False, ".2f"),
        _target(
            "batch packets/s / single-packet packets/s",
            med(results, "batch", "rate") / single,
            10.0,
            True,
            ".1f",
        ),
        _target(
            "WebSocket packets/s / single-packet packets/s",
            med(results, "ws", "rate") / single,
            10.0,
            True,
            ".1f",
        ),
        _target("drain time / ideal", med(results, "drain", "ratio"), 1.5, False, ".2f"),
    ]
    keys = max(int(d["keys_left"]) for d in _drains(results))
    rows.append(
        f"| keys of archived calls left after retention (worst run) | {keys} | 0 | "
        f"{'**met**' if keys == 0 else '**missed**'} |"
    )
    return rows


def _drains(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for r in results for d in [r["drain"], *r["drain_more"]]]


def _latency_row(name: str, results: list[dict[str, Any]], key: str) -> str:
    cells = [f"{med(results, key, m):.2f}" for m in ("p50", "p95", "p99", "max")]
    return f"| {name} | {med(results, key, 'rate'):,.0f} | " + " | ".join(cells) + " |"


# Written by hand from py-spy profiles (py-spy attached to the API, the same sampling
# during the batch and WebSocket phases); re-read it when the figures move.
ANALYSIS = [
    "## What bounds the missed targets (profiled 2026-11-22)",
    "",
    "- Single packet vs the bare ceiling (0.25): the ceiling answers from the event loop"
    " without any I/O; a packet adds a Redis script call (Lua run + redis-py packing, sending,"
    " parsing) and pydantic validation, and the generator, Redis and PostgreSQL share the two"
    " cores with the server. Steps taken: the fast path in front of FastAPI (FastAPI's own"
    " middleware stack, dependency resolution and two-pass body parsing were about half of a"
    " packet's CPU: 5.0k -> 7.4k packets/s without it, 10.5k once in front of the middleware),"
    " and one Redis pipeline per event-loop tick for concurrent requests (+36%). What remains"
    " per request: uvicorn's httptools response path (~15% of samples, also paid by the"
    " ceiling), redis-py's connection and parsing (~25%), pydantic (~10%). Reaching 0.5 would"
    " take a second API process per core, which the ceiling would get too.",
    "- Batch and WebSocket vs single (8.4x, 5.0x): the single-packet path became 2x faster,"
    " which lowers these ratios; in absolute terms batch went 36k -> 95k packets/s (one JSON"
    " argument for the script instead of three per packet, no per-packet objects) and the"
    " WebSocket 54k -> 56k. Batch is now bound by pydantic parsing of the body (~20%) and"
    " uvicorn's response path; the WebSocket by frame parsing in the `websockets` protocol"
    " (~30% of samples: Frame.parse, handle_events) and one JSON decode per frame, all in one"
    " Python process. Every ratio is measured against the client in the same process too.",
    "- Drain of 100 calls (1.6-2.1x; 400 calls: 1.26-1.37x, within the target): the ideal"
    " divides total AI time by the concurrency, but the makespan also contains the slowest"
    " call (a few retries with backoff: 2-3 s against a mean of 0.85 s), which 100 calls over"
    " 32 slots cannot hide. Worker overhead per call (its flush, claim, state changes and"
    " attempt records in PostgreSQL) is ~15 ms, under 2% of a call.",
]


def section(results: list[dict[str, Any]], plan: Any, machine: dict[str, str]) -> list[str]:
    last = results[-1]
    drain = last["drain"]
    open_rate = med(results, "open", "target_rate")
    bare_open_rate = med(results, "bare_open", "target_rate")
    single = med(results, "closed", "rate")
    return [
        f"Command: `{command('ingestion')}` (~1.5 min on 2 cores; part of `make bench`).",
        "Everything runs on loopback: embedded Redis (AOF everysec) and PostgreSQL (fsync off),",
        "the API as `uvicorn service.app:app --loop uvloop --http httptools --no-access-log`",
        "(one process), the ceiling `bench/bare_app.py` (a raw ASGI callable: read the body,",
        "answer 202 with a small JSON body) under the same flags, and the load generator",
        "(`bench/load.py`: raw HTTP/1.1 keep-alive over asyncio streams, uvloop) in the bench",
        "process. Load generator, server, Redis and PostgreSQL share the same cores.",
        "",
        "## Machine",
        "",
        f"- nproc: {machine['nproc']}",
        f"- CPU: {machine['cpu']}",
        f"- Python: {machine['python']}",
        f"- Platform: {machine['platform']}",
        f"- Load average (1/5/15 min) before the bench: {machine['loadavg_start']}, after:"
        f" {machine['loadavg_end']}. Anything above ~0 before means other processes shared the"
        " two cores during the run, and the figures are noisier and lower for it.",
        "",
        "## Workload",
        "",
        f"- Single packet: {plan.calls} concurrent calls x {plan.packets} packets (216-char base64"
        " payload, ~2% duplicates, ~2% adjacent reorders), interleaved across calls, then one"
        " POST complete per call.",
        f"- Closed loop: {plan.connections} keep-alive connections back to back, at most"
        f" {plan.closed_s:g} s. Open loop: {plan.connections} connections, request i due at"
        f" t0 + i/rate for {plan.open_s:g} s, latency measured from the due time.",
        f"- Batch: {plan.batch_calls} calls x {plan.batches} requests of {plan.batch_size}"
        f" packets, {plan.batch_connections} connections, at most {plan.closed_s:g} s.",
        f"- WebSocket: {plan.ws_streams} concurrent Twilio Media Streams (`websockets` client, no"
        f" compression) x {plan.ws_packets} media frames, start..stop; the clock stops when the"
        " server closed every stream after its stop (so every packet is in Redis).",
        f"- Drain: {' and '.join(map(str, plan.drain_calls))} calls x {plan.drain_packets}"
        " packets completed at once,"
        f" {plan.workers} arq worker(s) with WORKER_MAX_JOBS={plan.worker_max_jobs}, env"
        f" {' '.join(f'{k}={v}' for k, v in drain['env'].items())}.",
        f"- Redis memory: {plan.mem_calls} live calls x {plan.mem_packets} packets,"
        " INFO used_memory after - before, divided by the number of calls.",
        "",
        "## Ingestion",
        "",
        "| Phase | packets/s | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|",
        _latency_row("Callstream single packet, closed loop", results, "closed"),
        _latency_row("bare ASGI ceiling, closed loop", results, "bare_closed"),
        _latency_row(f"Callstream single packet, open loop @ {open_rate:,.0f}/s", results, "open"),
        _latency_row(f"bare ceiling, open loop @ {bare_open_rate:,.0f}/s", results, "bare_open"),
        _latency_row("Callstream batch of 50, closed loop", results, "batch"),
        f"| Callstream WebSocket media streams | {med(results, 'ws', 'rate'):,.0f} | | | | |",
        "",
        f"- Callstream / ceiling: {single / med(results, 'bare_closed', 'rate'):.2f}",
        f"- Batch / single: {med(results, 'batch', 'rate') / single:.1f}x;"
        f" WebSocket / single: {med(results, 'ws', 'rate') / single:.1f}x",
        f"- POST complete (closed loop): {med(results, 'closed_completes_per_s'):,.0f}/s",
        f"- Status codes of the last single-packet run: {last['closed']['statuses']}"
        " (202 new, 200 duplicate); WebSocket streams not closed with 1000:"
        f" {last['ws']['bad_closes']}",
        "",
        *([*shape_lines(last["shapes"]), ""] if "shapes" in last else []),
        "## Drain (completion to ARCHIVED/FAILED)",
        "",
        "Ideal = calls x E[AI time per call] / concurrency, with E[AI time per call] ="
        " 2 steps x (mean latency x sum_{k<max_attempts} p^k + sum_{k=1}^{max_attempts-1}"
        " p^k x min(backoff_max, backoff_base x 2^(k-1)) / 2) (tenacity's random exponential"
        f" wait is uniform(0, cap)) = {drain['per_call_s']:.3f} s per call.",
        "",
        "| calls | concurrency | measured s | ideal s | ratio | ideal from recorded AI time s"
        " | attempts | final states |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| {drain['calls']} | {drain['concurrency']} | {med(results, 'drain', 'seconds'):.2f} |"
        f" {drain['ideal_s']:.2f} | {med(results, 'drain', 'ratio'):.2f} |"
        f" {med(results, 'drain', 'measured_ideal_s'):.2f} | {drain['attempts']} |"
        f" {drain['states']} |",
        *(
            f"| {d['calls']} | {d['concurrency']} | {d['seconds']:.2f} | {d['ideal_s']:.2f} |"
            f" {d['ratio']:.2f} | {d['measured_ideal_s']:.2f} | {d['attempts']} | {d['states']} |"
            for d in last["drain_more"]
        ),
        "",
        "First row: measured s, ratio and recorded-AI ideal are medians over the runs, attempts"
        " and states are the last run's; further rows are the last run's. The target is held"
        " against the first row. The ideal is a lower bound that ignores the"
        " makespan tail: the last calls to start still take a whole call's AI time (up to"
        " several retries) while the other slots are idle, and each call also waits up to one"
        " 50 ms queue poll; with more calls that fixed tail weighs less (second row, last run).",
        "",
        "Why calls of the last run FAILED (first three): "
        + (
            "; ".join(f"`{e}`" for d in [drain, *last["drain_more"]] for e in d["failed_errors"])
            or "none failed"
        ),
        "",
        "The recorded-AI-time ideal divides the sum of `ai_attempt.duration_ms` by the concurrency"
        " (it leaves out backoff waits).",
        "",
        "## Redis",
        "",
        f"- Memory per live call: {med(results, 'memory', 'bytes_per_call'):,.0f} bytes"
        f" ({med(results, 'memory', 'bytes_per_packet'):,.0f} bytes per packet of 216 chars,"
        f" {last['memory']['packets_per_call']:.0f} packets per call).",
        f"- Keys of drained calls still present {drain['retention_wait_s']:.0f} s after the"
        " drain with KEY_RETENTION_S=2 and COMPLETED_MARKER_RETENTION_S=2 (SCAN `{s*}:call:...`):"
        f" {', '.join(str(d['keys_left']) for d in _drains(results))} (per drain, per run).",
        "- Durability setting, single-packet ingestion (closed loop, the two measured alternately"
        " in each run): `appendfsync everysec` (shipped)"
        f" {med(results, 'durability', 'everysec'):,.0f} packets/s, `appendfsync always`"
        f" {med(results, 'durability', 'always'):,.0f} packets/s:"
        f" always costs {100 * (1 - med(results, 'durability', 'ratio')):.0f}% of the throughput"
        f" (ratio {med(results, 'durability', 'ratio'):.2f}). Redis fsyncs once per event-loop"
        " cycle with `always`, so concurrent packets share an fsync; the cost depends on the disk.",
        "",
        "## Targets",
        "",
        *targets(results),
        "",
        *ANALYSIS,
        "",
        "## Raw figures",
        "",
        "```",
        *(str(_compact(r)) for r in results),
        "```",
        "",
        f"Plan: `{asdict(plan)}`",
    ]


def _compact(r: dict[str, Any]) -> dict[str, Any]:
    def short(v: Any) -> Any:
        if isinstance(v, float):
            return round(v, 2)
        if isinstance(v, dict):
            return {k: short(x) for k, x in v.items() if k != "env"}
        return v

    return {k: short(v) for k, v in r.items()}
