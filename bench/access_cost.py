"""What access control costs the ingestion fast path (`python -m bench access_cost`):
single-packet closed-loop throughput of two API processes started alike, one with API keys
(every request carries a Bearer key, checked by the gate) and one without, measured
alternately in one run so that the machine's drift hits both."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import uvloop

from bench.load import closed_loop, single_packet_workload
from bench.stack import BenchStack, Layout
from bench.suite import Options, Outcome, command

HEADING = "## Access control on the fast path"
KEY = "bench-ingest-key-0123456789"


def with_key(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", f"\r\nAuthorization: Bearer {KEY}\r\n".encode(), 1)


@dataclass(frozen=True)
class Plan:
    rounds: int = 3
    seconds: float = 4.0
    calls: int = 200
    packets: int = 150


QUICK = Plan(rounds=1, seconds=0.3, calls=10, packets=10)


async def measure(plan: Plan, options: Options) -> tuple[dict[str, list[float]], list[str]]:
    rates: dict[str, list[float]] = {"off": [], "on": []}
    problems: list[str] = []
    with BenchStack(Layout(api_processes=0, workers=0), options.stores) as stack:
        open_api = stack.start_api(name="api-open")
        keyed_api = stack.start_api(env={"INGEST_API_KEYS": KEY}, name="api-keyed")
        assert open_api.port is not None
        assert keyed_api.port is not None
        for n in range(plan.rounds):
            for name, port in (("off", open_api.port), ("on", keyed_api.port)):
                work = single_packet_workload(f"auth-{name}-{n}", plan.calls, plan.packets)
                requests = work.requests if name == "off" else [
                    (with_key(raw), items) for raw, items in work.requests
                ]  # fmt: skip
                result = await closed_loop(port, requests, 64, plan.seconds)
                if result.errors:
                    problems.append(f"keys {name}: refused {dict(result.statuses)}")
                rates[name].append(result.rate)
    return rates, problems


def section(rates: dict[str, list[float]]) -> list[str]:
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    return [
        HEADING,
        "",
        f"Command: `{command('access_cost')}` (part of `make bench`). Single packets, closed",
        "loop, 64 connections, two API processes started alike but for `INGEST_API_KEYS`, measured",
        f"alternately, {len(rates['on'])} rounds each; medians.",
        "",
        "| keys | packets/s |",
        "|---|---:|",
        f"| off | {off:,.0f} |",
        f"| on (every request carries a Bearer key) | {on:,.0f} |",
        "",
        f"Keys on / off: {on / off:.2f} (the gate hashes the key and compares it with every known",
        "one in constant time; the machine's own drift between runs is 10-25%).",
        "",
    ]


def run(options: Options) -> Outcome:
    rates, problems = uvloop.run(measure(QUICK if options.quick else Plan(), options))
    return Outcome(section(rates), {"rates": rates}, problems)
