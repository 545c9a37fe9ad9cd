"""What access control costs the ingestion fast path (`python -m bench.access_cost`, part of
`make bench`): single-packet closed-loop throughput of two API processes started alike, one with
API keys (every request carries a Bearer key, checked by the gate) and one without, measured
alternately in one run so that the machine's drift hits both."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import uvloop

from bench.load import closed_loop, single_packet_workload
from bench.sections import write_section
from devstack.stack import Stack

HEADING = "## Access control on the fast path"
KEY = "bench-ingest-key-0123456789"


def with_key(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", f"\r\nAuthorization: Bearer {KEY}\r\n".encode(), 1)


async def measure(rounds: int, seconds: float) -> dict[str, list[float]]:
    stack = Stack(env=os.environ, fast_and_unsafe=True, temp_prefix="callstream-access-")
    try:
        stack.start_postgres()
        stack.start_redis()
        stack.migrate()
        quiet = ("--log-level", "warning")
        open_api = stack.start_api(extra_args=quiet, name="api-open")
        keyed_api = stack.start_api(
            extra_args=quiet, extra_env={"INGEST_API_KEYS": KEY}, name="api-keyed"
        )
        assert open_api.port is not None
        assert keyed_api.port is not None
        rates: dict[str, list[float]] = {"off": [], "on": []}
        for n in range(rounds):
            for name, port in (("off", open_api.port), ("on", keyed_api.port)):
                work = single_packet_workload(f"auth-{name}-{n}", 200, 150)
                requests = work.requests if name == "off" else [
                    (with_key(raw), items) for raw, items in work.requests
                ]  # fmt: skip
                result = await closed_loop(port, requests, 64, seconds)
                assert result.errors == 0, result.statuses
                rates[name].append(result.rate)
        return rates
    finally:
        stack.close()


def section(rates: dict[str, list[float]], command: str) -> list[str]:
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    return [
        HEADING,
        "",
        f"Command: `{command}` (part of `make bench`). Single packets, closed loop, 64",
        "connections, two API processes started alike but for `INGEST_API_KEYS`, measured",
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


def write(lines: list[str]) -> Path:
    return write_section(HEADING, lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--write", action="store_true", help="write its section of BENCHMARKS.md")
    args = parser.parse_args()
    rates = uvloop.run(measure(args.rounds, args.seconds))
    lines = section(rates, "python -m bench.access_cost --write")
    print("\n".join(lines))
    if args.write:
        print(f"wrote {write(lines)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
