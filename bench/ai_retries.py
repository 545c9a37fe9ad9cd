"""Does a flaky AI fail long calls? `python -m bench ai_retries` (issue 21).

Two-party calls of real speech (espeak-ng, else the shipped recordings) streamed at real-time
pace over the media WebSocket, all at once, against `make run`'s layout with its default mock AI
(25% of requests fail, 1-3 s each) and 30 s segments: ARCHIVED and FAILED by call length, the
failures' reasons, the AI requests and the stack's CPU per call-minute.

To compare two servers (before and after a change) in one run on the same machine, start both
(`make run` twice, on other ports) and give each to the same calls:

    python -m bench.ai_retries --api http://127.0.0.1:8200 --label after \\
        --api http://127.0.0.1:8100 --label before [--calls 1:4,5:4,10:2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
from websockets.asyncio.client import connect

from bench.real_calls_frames import TwoTrackCall, dialogue_of, ticks_of
from bench.real_calls_layout import start_layout
from bench.stack import CORES
from bench.suite import Options, Outcome, command
from simulate import speech

HEADING = "## A flaky AI and long calls"
TICK_S = 0.02
# make run's mock as it ships (settings.py's defaults), said out loud: the suite measures them.
FLAKY_AI = {
    "AI_PROVIDER": "mock",
    "AI_FAILURE_RATE": "0.25",
    "AI_LATENCY_MIN_S": "1",
    "AI_LATENCY_MAX_S": "3",
}


@dataclass(frozen=True)
class Plan:
    calls: tuple[tuple[float, int], ...] = ((1.0, 4), (5.0, 4), (10.0, 2))  # (minutes, count)
    segment_s: float = 30.0
    processes: int = CORES


QUICK = Plan(calls=((0.1, 1),), segment_s=2.0, processes=1)


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
    await stream(api.removeprefix("http://"), call, paced=True)
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
        "call_minutes": call_minutes,
        "ai_requests_per_call_minute": round(
            sum(r["requests"] for r in results) / max(call_minutes, 1e-9), 2
        ),
        "failures": [r["reason"] for r in results if r["state"] != "ARCHIVED"],
    }


async def calls_at_once(apis: dict[str, str], plan: Plan) -> dict[str, dict[str, Any]]:
    """The plan's calls, to every API at the same time; each API's summary, by its label."""
    run = f"{int(time.time())}"
    jobs: dict[str, list[asyncio.Task[dict[str, Any]]]] = {label: [] for label in apis}
    for label, api in apis.items():
        for minutes, count in plan.calls:
            for n in range(count):
                call = dialogue_call(f"retries-{run}-{label}-{minutes:g}m-{n}", minutes * 60)
                jobs[label].append(asyncio.create_task(one_call(api, call, minutes)))
    return {label: summary(list(await asyncio.gather(*tasks))) for label, tasks in jobs.items()}


async def measure(plan: Plan, options: Options) -> dict[str, Any]:
    env = {**FLAKY_AI, "SEGMENT_SECONDS": str(plan.segment_s)}
    layout = start_layout(options.stores, env, plan.processes)
    try:
        before = layout.cpu_s()
        figures = (await calls_at_once({"stack": f"http://127.0.0.1:{layout.api_port}"}, plan))[
            "stack"
        ]
        after = layout.cpu_s()
    finally:
        await layout.close()
    cpu = {group: after[group] - before.get(group, 0.0) for group in after}
    minutes = max(figures["call_minutes"], 1e-9)
    figures["cpu_s_per_call_minute"] = {g: round(s / minutes, 3) for g, s in cpu.items()}
    figures["plan"] = {"calls": plan.calls, "segment_s": plan.segment_s}
    return figures


def render(figures: dict[str, Any], name: str) -> list[str]:
    rows = [f"| {length} | {counts.get('ARCHIVED', 0)} | {counts.get('FAILED', 0)} |"
            for length, counts in figures["by_length"].items()]  # fmt: skip
    cpu = figures["cpu_s_per_call_minute"]
    return [
        HEADING,
        "",
        f"`{command(name)}`: two-party calls of real speech at real-time pace over the media "
        "WebSocket, all at once, against `make run`'s layout with its default mock AI (25% of "
        "requests fail, 1-3 s each) and 30 s segments. A retry budget belongs to each window "
        "and the sentiment step (issue 21): a call's length must not make it likelier to fail.",
        "",
        "| calls | ARCHIVED | FAILED |",
        "|---|---|---|",
        *rows,
        "",
        f"AI requests per call-minute: {figures['ai_requests_per_call_minute']}; the stack's "
        "CPU per call-minute: "
        + ", ".join(f"{group} {seconds:.2f} s" for group, seconds in cpu.items())
        + ".",
        *(
            ["", "Failures: " + "; ".join(map(str, figures["failures"]))]
            if figures["failures"]
            else []
        ),
    ]


def run(options: Options) -> Outcome:
    plan = QUICK if options.quick else Plan()
    figures = asyncio.run(measure(plan, options))
    problems = [] if options.quick else [f"FAILED: {r}" for r in figures["failures"]]
    if options.quick and not figures["by_length"]:
        problems.append("no call was measured")
    return Outcome(render(figures, "ai_retries"), figures, problems)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", action="append", required=True, help="a stack's base URL")
    parser.add_argument("--label", action="append", help="a name for each --api")
    parser.add_argument("--calls", default="1:4,5:4,10:2", help="minutes:count,...")
    args = parser.parse_args()
    labels = args.label or args.api
    plan = Plan(calls=tuple((float(m), int(n)) for m, n in
                            (p.split(":") for p in args.calls.split(","))))  # fmt: skip
    figures = asyncio.run(calls_at_once(dict(zip(labels, args.api, strict=True)), plan))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
