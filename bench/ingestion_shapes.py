"""The ingestion suite's load shapes: single-packet ingestion at the concurrencies a PBX fleet
brings, each against the bare ASGI ceiling, and the open loop at a fixed packet rate while the
workers drain the calls it completes.

- Closed loop `C<connections>-P<packets>`: that many calls send their packets back to back over
  as many keep-alive connections (the calls interleaved), then complete; the ceiling
  gets the same requests on as many connections.
- Open loop at a fixed rate, workers draining: calls of `packets` packets in waves of as many
  calls as the rate sends in a second, each wave followed by its completions, so arq workers
  (the mock AI instant) flush and archive calls while packets keep arriving. Latency counts from
  each request's due time (no coordinated omission); the drain's figure is the last completion
  to every call final.

CPU is each process tree's own (the API alone, the ceiling alone, workers, Redis, PostgreSQL),
per thousand packets: the shapes' cost, not only their rate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import asyncpg

from bench.cpu import CpuMeter
from bench.load import (
    Workload,
    closed_loop,
    open_loop,
    send_all,
    single_packet_workload,
    summarize,
)
from bench.sections import ratio
from bench.stack import INSTANT_AI, BenchStack


@dataclass(frozen=True)
class Shapes:
    closed: tuple[tuple[int, int], ...] = ((1000, 10), (200, 20))  # (connections, packets)
    rates: tuple[int, ...] = (1000, 3000)  # packets/s of the open loops
    open_s: float = 5.0
    packets: int = 10  # per call in the open loops
    cap_s: float = 30.0  # at most, any one loop
    drain_cap_s: float = 60.0
    workers: int = 2  # as `make run` on 2 cores


QUICK_SHAPES = Shapes(closed=((20, 3),), rates=(100,), open_s=0.5, packets=3, cap_s=5, workers=1)

Groups = Callable[[], dict[str, list[int]]]


def shape_name(connections: int, packets: int) -> str:
    return f"C{connections}-P{packets}"


async def measure_shapes(
    shapes: Shapes, stack: BenchStack, api_pid: int, bare: tuple[int, int], run: int
) -> dict[str, Any]:
    """Every shape against Callstream and the ceiling (`bare`: its port and pid)."""
    bare_port, bare_pid = bare
    api = stack.api_port

    def groups(api_root: int) -> Groups:
        def read() -> dict[str, list[int]]:
            pids = stack.pids()
            return {
                "api": [api_root],
                "workers": pids["workers"],
                "redis": pids["redis"],
                "postgres": pids["postgres"],
            }

        return read

    out: dict[str, Any] = {
        "closed": [],
        "open": [],
        "workers": shapes.workers,
        "packets": shapes.packets,
    }
    for connections, packets in shapes.closed:
        name = shape_name(connections, packets)
        await stack.reset()
        work = single_packet_workload(f"r{run}-{name}", connections, packets, seed=7)
        ours = await _closed(api, work, connections, shapes.cap_s, groups(api_pid), complete=True)
        ceiling = await _closed(bare_port, work, connections, shapes.cap_s, groups(bare_pid))
        out["closed"].append({"shape": name, "callstream": ours, "bare": ceiling})

    procs = [stack.start_worker(INSTANT_AI) for _ in range(shapes.workers)]
    try:
        await asyncio.sleep(1.0)  # the workers connect before the clock starts
        for rate in shapes.rates:
            await stack.reset()
            ours = await _open_draining(stack, api, rate, shapes, groups(api_pid), run)
            ceiling = await _open_bare(bare_port, rate, shapes, groups(bare_pid), run)
            out["open"].append({"rate": rate, "callstream": ours, "bare": ceiling})
    finally:
        for proc in procs:
            proc.stop()
    return out


async def _closed(
    port: int,
    work: Workload,
    connections: int,
    cap_s: float,
    groups: Groups,
    complete: bool = False,
) -> dict[str, Any]:
    meter = CpuMeter(groups)
    before = meter.read()
    result = await closed_loop(port, work.requests, connections, cap_s)
    cpu = meter.spent(before, meter.read())
    if complete:
        await send_all(port, work.completes, min(connections, 64))
    return summarize(result) | {"cpu_ms_per_kpacket": _per_kpacket(cpu, result.items)}


def open_requests(prefix: str, rate: int, seconds: float, packets: int) -> list[tuple[bytes, int]]:
    """Waves of `rate / packets` calls (a second's packets), each wave's packets interleaved and
    then its completions (carrying no packet), until `rate * seconds` packets are due."""
    per_wave = max(1, rate // packets)
    waves = max(1, round(rate * seconds / (per_wave * packets)))
    requests: list[tuple[bytes, int]] = []
    for wave in range(waves):
        work = single_packet_workload(f"{prefix}-w{wave}", per_wave, packets, seed=8 + wave)
        requests += work.requests
        requests += [(raw, 0) for raw in work.completes]
    return requests


async def _open_draining(
    stack: BenchStack, api: int, rate: int, shapes: Shapes, groups: Groups, run: int
) -> dict[str, Any]:
    prefix = f"r{run}-open{rate}"
    requests = open_requests(prefix, rate, shapes.open_s, shapes.packets)
    calls = sum(1 for _, items in requests if items == 0)
    meter = CpuMeter(groups)
    before = meter.read()
    # The rate is of packets; completions ride in the same schedule, so the request rate is a
    # little higher (one completion per `packets` packets).
    request_rate = rate * (1 + 1 / shapes.packets)
    result = await open_loop(api, requests, request_rate, connections=64)
    sent = time.perf_counter()
    final, seconds = await _wait_final(stack.pg_dsn, calls, shapes.drain_cap_s)
    cpu = meter.spent(before, meter.read())
    return summarize(result) | {
        "calls": calls,
        "final": final,
        "drain_after_last_s": seconds,
        "drain_wall_s": time.perf_counter() - sent,
        "cpu_ms_per_kpacket": _per_kpacket(cpu, result.items),
    }


async def _open_bare(
    port: int, rate: int, shapes: Shapes, groups: Groups, run: int
) -> dict[str, Any]:
    requests = open_requests(f"r{run}-bare{rate}", rate, shapes.open_s, shapes.packets)
    meter = CpuMeter(groups)
    before = meter.read()
    result = await open_loop(port, requests, rate * (1 + 1 / shapes.packets), connections=64)
    cpu = meter.spent(before, meter.read())
    return summarize(result) | {"cpu_ms_per_kpacket": _per_kpacket(cpu, result.items)}


async def _wait_final(dsn: str, calls: int, cap_s: float) -> tuple[int, float]:
    """How many calls are ARCHIVED or FAILED, and the seconds it took for all (or the cap)."""
    conn = await asyncpg.connect(dsn)
    t0 = time.perf_counter()
    try:
        while True:
            final = int(
                await conn.fetchval(
                    "SELECT count(*) FROM call WHERE state IN ('ARCHIVED','FAILED')"
                )
            )
            if final >= calls or time.perf_counter() - t0 > cap_s:
                return final, time.perf_counter() - t0
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


def _per_kpacket(cpu: dict[str, float], packets: int) -> dict[str, float]:
    if not packets:
        return {}
    return {k: v * 1e6 / packets for k, v in cpu.items() if k != "client"}


def _cpu_cell(row: dict[str, Any], groups: Iterable[str]) -> str:
    per = row["cpu_ms_per_kpacket"]
    return " / ".join(f"{per.get(g, 0.0):.0f}" for g in groups)


def shape_lines(f: dict[str, Any]) -> list[str]:
    """The shapes' table for BENCHMARKS.md."""
    lines = [
        "### Load shapes",
        "",
        "Single packets at a PBX fleet's concurrency (`C<calls>-P<packets per call>`, closed"
        " loop on as many keep-alive connections as calls, the calls interleaved, then"
        f" completed), and the open loop at a fixed packet rate with {f['workers']} arq workers"
        " (mock AI instant) draining the calls it completes (calls of"
        f" {f['packets']} packets in waves of a second's calls, each wave then completed). The"
        " ceiling gets the same requests. CPU: each process tree's user + system milliseconds per"
        " 1,000 packets over the loop (the open loops' drain included).",
        "",
        "| shape | packets/s (ours / ceiling) | ratio | p50 ms (ours / ceiling) | p99 ms (ours /"
        " ceiling) | errors | CPU ms per 1,000 packets: API / workers / Redis / PostgreSQL |"
        " ceiling's CPU ms per 1,000 |",
        "|---|---|---:|---|---|---:|---|---:|",
    ]
    groups = ("api", "workers", "redis", "postgres")
    for row in f["closed"]:
        lines.append(_row(f"closed {row['shape']}", row["callstream"], row["bare"], groups))
    for row in f["open"]:
        label = f"open @ {row['rate']:,}/s, workers draining"
        lines.append(_row(label, row["callstream"], row["bare"], groups))
    lines.append("")
    for row in f["open"]:
        ours = row["callstream"]
        lines.append(
            f"- Open loop @ {row['rate']:,}/s: {ours['final']} of {ours['calls']} calls final,"
            f" the last {ours['drain_after_last_s']:.2f} s after the loop's last request."
        )
    return lines


def _row(label: str, ours: dict[str, Any], bare: dict[str, Any], groups: Iterable[str]) -> str:
    return (
        f"| {label} | {ours['rate']:,.0f} / {bare['rate']:,.0f} |"
        f" {ratio(ours['rate'], bare['rate']):.2f} |"
        f" {ours['p50']:.1f} / {bare['p50']:.1f} | {ours['p99']:.1f} / {bare['p99']:.1f} |"
        f" {ours['errors']} | {_cpu_cell(ours, groups)} |"
        f" {bare['cpu_ms_per_kpacket'].get('api', 0.0):.0f} |"
    )


def shape_problems(f: dict[str, Any]) -> list[str]:
    out = []
    for row in f["closed"]:
        if row["callstream"]["errors"]:
            out.append(f"closed {row['shape']}: {row['callstream']['errors']} requests refused")
    for row in f["open"]:
        ours = row["callstream"]
        if ours["errors"]:
            out.append(f"open @ {row['rate']}/s: {ours['errors']} requests refused")
        if ours["final"] < ours["calls"]:
            out.append(f"open @ {row['rate']}/s: {ours['final']} of {ours['calls']} calls final")
    return out
