"""Does a flaky AI fail long calls? Two-party calls of real speech (espeak-ng) streamed at
real-time pace over the media WebSocket to one or more running stacks (`make run`'s layout, its
default mock: 25% of requests fail, 1-3 s each), all at once: ARCHIVED and FAILED by call length,
the reasons of the failures, and the AI requests per call-minute (from each call's history).

    python -m bench.ai_retries --api http://127.0.0.1:8000 [--api http://127.0.0.1:8100]
        [--calls 1:4,5:4,10:2] [--label after --label before] [--out results.json]

Several `--api`s get the same calls at the same time, so that two servers (say, before and
after a change) are measured in one run on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

from bench.real_calls_frames import TwoTrackCall, dialogue_of, ticks_of
from simulate import speech

TICK_S = 0.02


def dialogue_call(call_id: str, seconds: float) -> TwoTrackCall:
    """A two-party call of real speech: the caller and the agent take turns, `seconds` long."""
    turns = [speech.synthesise(s.text) for s in speech.speakable()]
    return TwoTrackCall(call_id, ticks_of(seconds), dialogue_of(turns, "espeak-ng"))


async def stream(address: str, call: TwoTrackCall, *, paced: bool) -> None:
    """The call over the media WebSocket as a PBX sends it: both tracks every 20 ms."""
    async with connect(f"ws://{address}/v1/call/media", ping_interval=None) as ws:
        await ws.send(call.start())
        t0 = time.perf_counter()
        for tick in range(call.ticks):
            if paced and (wait := t0 + tick * TICK_S - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            for message in call.media(tick):
                await ws.send(message)
        await ws.send(call.stop())
        await ws.wait_closed()


async def final_state(http: httpx.AsyncClient, call_id: str, limit_s: float) -> dict[str, Any]:
    """The call's record once ARCHIVED or FAILED (or as it is `limit_s` from now)."""
    deadline = time.monotonic() + limit_s
    while True:
        body: dict[str, Any] = (await http.get(f"/v1/calls/{call_id}")).json()
        if body.get("state") in ("ARCHIVED", "FAILED") or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.5)


async def one_call(api: str, call: TwoTrackCall, minutes: float) -> dict[str, Any]:
    address = api.removeprefix("http://")
    await stream(address, call, paced=True)
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        record = await final_state(http, call.call_id, 600)
        history = (await http.get(f"/v1/calls/{call.call_id}/history")).json()
    return {
        "minutes": minutes,
        "state": record.get("state"),
        "reason": record.get("last_error"),
        "requests": len(history.get("attempts", [])),
    }


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    by_length: dict[str, Counter[str]] = {}
    for r in results:
        by_length.setdefault(f"{r['minutes']:g} min", Counter())[str(r["state"])] += 1
    call_minutes = sum(r["minutes"] for r in results)
    return {
        "by_length": {k: dict(v) for k, v in by_length.items()},
        "ai_requests_per_call_minute": round(
            sum(r["requests"] for r in results) / max(call_minutes, 1e-9), 2
        ),
        "failures": [r["reason"] for r in results if r["state"] != "ARCHIVED"],
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    labels = args.label or args.api
    plan = [(float(m), int(n)) for m, n in (p.split(":") for p in args.calls.split(","))]
    run = f"{int(time.time())}"
    jobs: dict[str, list[asyncio.Task[dict[str, Any]]]] = {label: [] for label in labels}
    for api, label in zip(args.api, labels, strict=True):
        for minutes, count in plan:
            for n in range(count):
                call = dialogue_call(f"retries-{run}-{minutes:g}m-{n}", minutes * 60)
                jobs[label].append(asyncio.create_task(one_call(api, call, minutes)))
    return {label: summary(list(await asyncio.gather(*tasks))) for label, tasks in jobs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", action="append", required=True, help="a stack's base URL")
    parser.add_argument("--label", action="append", help="a name for each --api")
    parser.add_argument("--calls", default="1:4,5:4,10:2", help="minutes:count,...")
    parser.add_argument("--out", help="write the figures as JSON here too")
    args = parser.parse_args()
    figures = asyncio.run(measure(args))
    print(json.dumps(figures, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
