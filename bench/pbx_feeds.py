"""What each PBX feed costs: `python -m bench pbx_feeds` (issue 24).

Two-party calls at real-time pace over each feed in turn, against one stack of `make run`'s
layout (its AudioSocket listeners on free ports, the mock AI instant): the Twilio media stream
(both tracks), Asterisk AudioSocket (a TCP connection a party, slin), Asterisk chan_websocket (a
socket a party, ulaw), FreeSWITCH mod_audio_stream (one stereo L16 stream) and Genesys AudioHook
(one PCMU session, both channels), each sent by the peer clients the tests use
(simulate/pbx.py). For each: the API's and the whole stack's CPU per call-minute, from the
calls' first frame to all of them ARCHIVED, and each against the Twilio stream's, measured in the
same run; and the bytes PostgreSQL holds per call-minute once they are (the stores are emptied
between feeds). Target: no feed above 1.5x the Twilio path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx

from bench.ai_retries import dialogue_call, final_state, stream
from bench.real_calls_layout import RunLayout, start_layout
from bench.stack import CORES
from bench.suite import Options, Outcome, command
from devstack.processes import free_port
from simulate.pbx_send import PbxTargets, send_pbx
from simulate.plan import Faults, plan_calls, schedule
from simulate.transports import Pace

HEADING = "## PBX feeds"
FEEDS = ("twilio", "audiosocket", "asterisk", "freeswitch", "audiohook")
TARGET_RATIO = 1.5


@dataclass(frozen=True)
class Plan:
    calls: int = 10
    seconds: float = 60.0
    processes: int = CORES


QUICK = Plan(calls=1, seconds=2.0, processes=1)


async def send_feed(
    feed: str, layout: RunLayout, targets: PbxTargets, plan: Plan, run: str
) -> tuple[list[str], float]:
    """The plan's calls over `feed`, all at once at real-time pace; their call ids and their
    minutes of audio (a PBX feed's call is at least its sentences long)."""
    api = f"127.0.0.1:{layout.api_port}"
    ticks = round(plan.seconds * 50)
    if feed == "twilio":
        calls = [dialogue_call(f"feed-{run}-twilio-{n}", plan.seconds) for n in range(plan.calls)]
        await asyncio.gather(*(stream(api, call, paced=True) for call in calls))
        return [call.call_id for call in calls], sum(c.ticks for c in calls) / 50 / 60
    rng = random.Random(7)
    planned = plan_calls(plan.calls, feed, Faults(), rng, f"{run}-{feed}")  # type: ignore[arg-type]
    plans = []
    for p in planned:
        frames = max(ticks, p.frame_count)
        plans.append(
            dataclasses.replace(p, frame_count=frames, schedule=schedule(frames, Faults(), rng))
        )
    sent = await asyncio.gather(
        *(send_pbx(p, targets, None, Pace(1.0), lambda _n: None) for p in plans)
    )
    errors = [s.error for s in sent if s.error]
    if errors:
        raise RuntimeError(f"{feed}: {errors[0]}")
    return [p.call_id for p in plans], sum(p.frame_count for p in plans) / 50 / 60


async def phase(
    feed: str, layout: RunLayout, targets: PbxTargets, plan: Plan, run: str
) -> dict[str, Any]:
    before, pg_before = layout.cpu_s(), await layout.pg_bytes()
    started = time.monotonic()
    call_ids, minutes = await send_feed(feed, layout, targets, plan, run)
    base_url = f"http://127.0.0.1:{layout.api_port}"
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        records = [await final_state(http, call_id, 120) for call_id in call_ids]
    after, pg_after = layout.cpu_s(), await layout.pg_bytes()
    cpu = {g: (after[g] - before.get(g, 0.0)) / minutes for g in after if g != "client"}
    stored = sum(pg_after.values()) - sum(pg_before.get(t, 0) for t in pg_after)
    return {
        "feed": feed,
        "minutes": round(minutes, 3),
        "wall_s": round(time.monotonic() - started, 1),
        "archived": sum(r.get("state") == "ARCHIVED" for r in records),
        "calls": len(records),
        "cpu_s_per_call_minute": {g: round(s, 3) for g, s in cpu.items()},
        "stack_cpu_s_per_call_minute": round(sum(cpu.values()), 3),
        "pg_bytes_per_call_minute": round(stored / minutes),
    }


async def measure(plan: Plan, options: Options) -> dict[str, Any]:
    ports = free_port(), free_port()
    env = {
        "AUDIOSOCKET_ADDR": f"127.0.0.1:{ports[0]}",
        "AUDIOSOCKET_OUTBOUND_ADDR": f"127.0.0.1:{ports[1]}",
    }
    layout = start_layout(options.stores, env, plan.processes)
    targets = PbxTargets(
        f"ws://127.0.0.1:{layout.api_port}", ("127.0.0.1", ports[0]), ("127.0.0.1", ports[1])
    )
    run = str(int(time.time()))
    try:
        if options.quick:  # a smoke run: every feed at once (its CPU figures overlap)
            phases = list(
                await asyncio.gather(*(phase(f, layout, targets, plan, run) for f in FEEDS))
            )
        else:
            phases = []
            for feed in FEEDS:
                phases.append(await phase(feed, layout, targets, plan, run))
                await layout.reset()
    finally:
        await layout.close()
    twilio = phases[0]
    for p in phases:
        p["api_ratio"] = round(
            p["cpu_s_per_call_minute"].get("api", 0.0)
            / max(twilio["cpu_s_per_call_minute"].get("api", 0.0), 1e-9),
            2,
        )
        p["stack_ratio"] = round(
            p["stack_cpu_s_per_call_minute"] / max(twilio["stack_cpu_s_per_call_minute"], 1e-9), 2
        )
    return {"plan": dataclasses.asdict(plan), "phases": phases}


def render(figures: dict[str, Any], name: str) -> list[str]:
    plan = figures["plan"]
    rows = [
        f"| {p['feed']} | {p['archived']}/{p['calls']} "
        f"| {p['cpu_s_per_call_minute'].get('api', 0):.3f} "
        f"| {p['stack_cpu_s_per_call_minute']:.3f} "
        f"| {p['api_ratio']:.2f}x | {p['stack_ratio']:.2f}x "
        f"| {p.get('pg_bytes_per_call_minute', 0) / 1024:,.0f} KiB |"
        for p in figures["phases"]
    ]
    return [
        HEADING,
        "",
        f"`{command(name)}`: {plan['calls']} two-party calls of {plan['seconds']:g} s at "
        "real-time pace over each feed in turn, against one stack of `make run`'s layout "
        f"({plan['processes']} API processes and workers, the mock AI instant), from the first "
        "frame to every call "
        f"ARCHIVED. Target: no feed above {TARGET_RATIO}x the Twilio stream's CPU. PostgreSQL "
        "per call-minute: what `pg_total_relation_size` (heap, TOAST, indexes) of every table "
        "grew by over the feed's calls (the stores are emptied between feeds).",
        "",
        "| feed | ARCHIVED | API CPU s per call-minute | stack CPU s per call-minute "
        "| API vs Twilio | stack vs Twilio | PostgreSQL per call-minute |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]


def run(options: Options) -> Outcome:
    plan = QUICK if options.quick else Plan()
    figures = asyncio.run(measure(plan, options))
    problems = [
        f"{p['feed']}: {p['calls'] - p['archived']} of {p['calls']} calls not ARCHIVED"
        for p in figures["phases"]
        if p["archived"] < p["calls"]
    ]
    if not options.quick:
        problems += [
            f"{p['feed']}: {p['stack_ratio']}x the Twilio stream's CPU (target {TARGET_RATIO}x)"
            for p in figures["phases"]
            if p["stack_ratio"] > TARGET_RATIO
        ]
    return Outcome(render(figures, "pbx_feeds"), figures, problems)
