"""What a finished call leaves in Redis (`python -m bench redis_residue`): two-track calls of
real speech (bench/real_calls_frames.py) of 1 to 5 minutes, sent over the media WebSocket as fast
as the socket takes, against `make run`'s layout with an instant mock AI, each to its final
state; then, `settle_s` after the last is final, Redis' `used_memory` against what it was before
the calls (the capped feed stream aside), and every key left, by family (the call id and the
shard's tag taken out of its name), with its bytes (MEMORY USAGE) and TTL.
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

import uvloop
from redis.asyncio import Redis

from bench.real_calls_frames import real_dialogue
from bench.real_calls_layout import start_layout
from bench.real_calls_phases import Bench
from bench.real_calls_phases import Plan as CallsPlan
from bench.suite import Options, Outcome, command
from db.keys import EVENTS

NAME = "redis_residue"
TARGET_BYTES = 4096  # a finished call's share of Redis, everything counted (issue 27)


@dataclass(frozen=True)
class Plan:
    lengths_s: tuple[float, ...] = (60, 120, 180, 240, 300)
    calls_per_length: int = 4
    at_once: int = 4
    settle_s: float = 5.0  # after the last call is final, as the issue measures
    processes: int = 2


QUICK = Plan(lengths_s=(2, 3), calls_per_length=1, at_once=2, settle_s=1.0, processes=1)

_TAG = re.compile(r"^\{s\d+\.\d+\}")


def family(key: str, call_ids: frozenset[str]) -> str:
    """A key's name with the shard's tag and any call id (or arq job id naming one) generalised:
    `{s3.1}:call:rc-x-1:meta` -> `{S}:call:<id>:meta`, `arq:job:segment:2.0:rc-x-1` ->
    `arq:job:segment:<n>:<id>`."""
    name = _TAG.sub("{S}", key)
    for call_id in sorted(call_ids, key=len, reverse=True):  # rc-x-12 before rc-x-1
        if call_id in name:
            name = name.replace(call_id, "<id>")
            break
    return re.sub(r"(?<=[:.])[0-9]+(?=[:.]|$)", "<n>", name)


async def keys_by_family(redis: Redis, call_ids: frozenset[str]) -> dict[str, dict[str, Any]]:
    """Every key of the Redis, by family: how many, their bytes, the longest TTL (-1: none)."""
    keys = [k.decode() async for k in redis.scan_iter(count=1000)]
    out: dict[str, dict[str, Any]] = defaultdict(lambda: {"keys": 0, "bytes": 0, "ttl_s": -2})
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.memory_usage(key, samples=0)
            pipe.ttl(key)
        answers = await pipe.execute()
    for i, key in enumerate(keys):
        f = out[family(key, call_ids)]
        f["keys"] += 1
        f["bytes"] += int(answers[2 * i] or 0)
        f["ttl_s"] = max(f["ttl_s"], int(answers[2 * i + 1]))
    return dict(sorted(out.items()))


MEMORY_FIELDS = ("used_memory", "used_memory_dataset", "mem_clients_normal", "mem_aof_buffer")


async def memory(redis: Redis) -> dict[str, int]:
    """Redis' memory figures, once nothing waits to be freed, and the feed's own bytes."""
    for _ in range(50):
        info = await redis.info("memory")
        if not int(info.get("lazyfree_pending_objects", 0)):
            break
        await asyncio.sleep(0.1)
    found = {k: int(info[k]) for k in MEMORY_FIELDS if k in info}
    found["feed"] = int(await redis.memory_usage(EVENTS, samples=0) or 0)
    return found


async def measure(plan: Plan, options: Options) -> dict[str, Any]:
    layout = start_layout(options.stores, processes=plan.processes)
    b = Bench(layout, CallsPlan(final_cap_s=300), real_dialogue())
    redis = layout.redis
    try:
        await layout.reset()
        gate = asyncio.Semaphore(plan.at_once)
        # A first call loads what every call shares (the scripts, the clients' buffers, the
        # feed's first entries); its own keys are counted in `before`, and stay there.
        warm = await b.call(b.new_call("warm", min(plan.lengths_s)), paced=False)
        await asyncio.sleep(plan.settle_s)
        before = await memory(redis)

        async def one(seconds: float) -> Any:
            async with gate:
                return await b.call(b.new_call("residue", seconds), paced=False)

        lengths = [s for s in plan.lengths_s for _ in range(plan.calls_per_length)]
        runs = await asyncio.gather(*(one(s) for s in lengths))
        await asyncio.sleep(plan.settle_s)
        after = await memory(redis)
        ids = frozenset([warm.call_id, *(r.call_id for r in runs)])
        families = await keys_by_family(redis, ids)
    finally:
        await b.close()
        await layout.close()
    n = len(runs)
    states: dict[str, int] = defaultdict(int)
    for r in runs:
        states[str(r.state)] += 1
    grown = {k: (after[k] - before[k]) / n for k in after}
    return {
        "plan": asdict(plan),
        "calls": n,
        "states": dict(states),
        "memory_before": before,
        "memory_after": after,
        # The dataset's growth (keys and values: not the clients' buffers, the AOF's, the
        # scripts'), the capped feed's aside.
        "used_memory_per_call": grown["used_memory_dataset"] - grown["feed"],
        "used_memory_all_per_call": grown["used_memory"] - grown["feed"],
        "keys_bytes_per_call": sum(f["bytes"] for k, f in families.items() if k != EVENTS) / n,
        "families": families,
    }


def section(f: dict[str, Any]) -> list[str]:
    lengths = ", ".join(f"{s:g}" for s in f["plan"]["lengths_s"])
    lines = [
        "## What a finished call leaves in Redis",
        "",
        f"{f['calls']} two-track calls of real speech ({lengths} s), "
        f"sent as fast as the media WebSocket takes them, instant mock AI, `make run`'s layout; "
        f"{f['plan']['settle_s']:g} s after the last is final (states: {f['states']}):",
        "",
        f"- Redis memory left per finished call, the capped feed aside: "
        f"**{f['used_memory_per_call'] / 1024:.2f} KB** of `used_memory_dataset` (target ≤ "
        f"{TARGET_BYTES // 1024} KB); {f['used_memory_all_per_call'] / 1024:.2f} KB of "
        f"`used_memory` (clients' and the AOF's buffers too, which come and go); the keys' own "
        f"bytes (MEMORY USAGE): {f['keys_bytes_per_call'] / 1024:.2f} KB a call",
        "",
        "| key family | keys | bytes per call | longest TTL |",
        "|---|---|---|---|",
    ]
    for name, fam in f["families"].items():
        ttl = "none" if fam["ttl_s"] == -1 else f"{fam['ttl_s']} s"
        lines.append(f"| `{name}` | {fam['keys']} | {fam['bytes'] / f['calls']:.0f} | {ttl} |")
    return [*lines, "", f"Made by `{command(NAME)}`."]


def problems(f: dict[str, Any]) -> list[str]:
    unfinished = f["calls"] - f["states"].get("ARCHIVED", 0)
    return [f"{unfinished} of {f['calls']} calls did not reach ARCHIVED"] if unfinished else []


def print_figures(f: dict[str, Any]) -> None:
    print("\n".join(section(f)))


def run(options: Options) -> Outcome:
    plan = QUICK if options.quick else Plan()
    figures = uvloop.run(measure(plan, options))
    print_figures(figures)
    return Outcome(section(figures), figures, problems(figures))
