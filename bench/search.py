"""Search across transcripts: `python -m bench search` (issue 25).

100,000 stored utterances (2,000 archived two-party calls of 50 utterances, each a sentence of a
contact-centre vocabulary, the agent and the caller taking turns, about 4 s each: some 6,700
call-minutes), written straight into PostgreSQL (as the workers store them: `utterance` rows and
their calls' rows) against `make run`'s layout; then `GET /v1/calls?q=` asked for single words,
phrases, `or` and `-word` queries, with and without the `speaker` filter, one at a time from a
client on the same machine: p50 and p99 of the answer's time, and the GIN index's size per
call-minute of speech.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx

from bench.common import pct
from bench.real_calls_layout import start_layout
from bench.stack import CORES
from bench.suite import Options, Outcome, command

HEADING = "## Transcript search"
SUBJECTS = ["my router", "the bill", "my contract", "the engineer", "the refund", "my account",
            "the delivery", "the new phone", "my broadband", "the payment"]  # fmt: skip
VERBS = ["is not working", "was charged twice", "needs cancelling", "arrived late",
         "keeps dropping", "looks wrong", "was never sent", "should be fixed today"]  # fmt: skip
AGENT = ["let me check that for you", "I can see the problem on your account",
         "thank you for waiting", "I have booked an engineer for Friday",
         "the refund is on its way", "is there anything else I can help with"]  # fmt: skip
QUERIES = [
    ("a word", "refund", None),
    ("a rare word", "cancelling", None),
    ("a phrase", '"charged twice"', None),
    ("or", "router or broadband", None),
    ("-word", "engineer -friday", None),
    ("a word, the agent only", "refund", "agent"),
    ("nothing said", "zebra", None),
]


@dataclass(frozen=True)
class Plan:
    calls: int = 2000
    per_call: int = 50
    rounds: int = 20  # each query, this many times
    processes: int = CORES


QUICK = Plan(calls=20, per_call=10, rounds=2, processes=1)


def sentence(rng: random.Random, track: int) -> str:
    if track == 1:
        return rng.choice(AGENT)
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)}"


async def seed(dsn: str, plan: Plan) -> float:
    """The plan's calls and utterances, in PostgreSQL; returns the call-minutes of speech."""
    rng = random.Random(7)
    calls, said = [], []
    for n in range(plan.calls):
        call_id = f"search-{n:05d}"
        calls.append((call_id,))
        for k in range(plan.per_call):
            track = k % 2
            start = 4.0 * k
            text = sentence(rng, track)
            label = "negative" if track == 0 and rng.random() < 0.4 else "neutral"
            said.append((call_id, track, start, start + 3.5, text, label, 0.0))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO call (call_id, state, packets_received, missing_sequences, "
            "missing_count, duplicate_packets, out_of_order_packets, ai_attempts, lease_epoch, "
            "generation, created_at) VALUES ($1, 'ARCHIVED', 0, '{}', 0, 0, 0, 0, 1, 0, now())",
            calls,
        )
        await conn.copy_records_to_table(
            "utterance",
            records=said,
            columns=[
                "call_id",
                "track",
                "start_s",
                "end_s",
                "text",
                "sentiment_label",
                "sentiment_score",
            ],
        )
        await conn.execute("ANALYZE utterance")
    finally:
        await conn.close()
    return plan.calls * plan.per_call * 4.0 / 60


async def index_bytes(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        found = await conn.fetchval(
            "SELECT coalesce(sum(pg_relation_size(indexrelid)), 0) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam "
            "WHERE i.indrelid = 'utterance'::regclass AND a.amname = 'gin'"
        )
    finally:
        await conn.close()
    return int(found)


async def ask(http: httpx.AsyncClient, q: str, speaker: str | None, rounds: int) -> dict[str, Any]:
    params = {"q": q, "limit": "20", **({"speaker": speaker} if speaker else {})}
    times, found = [], 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        answer = await http.get("/v1/calls", params=params)
        times.append((time.perf_counter() - t0) * 1000)
        answer.raise_for_status()
        found = len(answer.json()["items"])
    return {"p50_ms": pct(times, 0.5), "p99_ms": pct(times, 0.99), "found": found}


async def measure(plan: Plan, options: Options) -> dict[str, Any]:
    layout = start_layout(options.stores, {}, plan.processes)
    try:
        minutes = await seed(layout.pg_dsn, plan)
        base = f"http://127.0.0.1:{layout.api_port}"
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            await ask(http, "refund", None, 1)  # warm: plans cached, pages read
            queries = {label: await ask(http, q, speaker, plan.rounds)
                       for label, q, speaker in QUERIES}  # fmt: skip
        gin = await index_bytes(layout.pg_dsn)
        await layout.reset()
    finally:
        await layout.close()
    every = [v for q in queries.values() for v in (q["p50_ms"], q["p99_ms"])]
    return {
        "utterances": plan.calls * plan.per_call,
        "call_minutes": round(minutes, 1),
        "queries": queries,
        "gin_bytes": gin,
        "gin_bytes_per_call_minute": round(gin / minutes, 1),
        "worst_p99_ms": max(every) if every else 0.0,
    }


def render(figures: dict[str, Any], name: str) -> list[str]:
    rows = [f"| {label} | {q['found']} | {q['p50_ms']:.1f} | {q['p99_ms']:.1f} |"
            for label, q in figures["queries"].items()]  # fmt: skip
    return [
        HEADING,
        "",
        f"`{command(name)}`: {figures['utterances']:,} stored utterances "
        f"({figures['call_minutes']:,} call-minutes of two-party calls), `GET /v1/calls?q=` "
        "(20 a page, newest first) against `make run`'s layout, one request at a time.",
        "",
        "| query | calls on the page | p50 ms | p99 ms |",
        "|---|---|---|---|",
        *rows,
        "",
        f"The GIN index: {figures['gin_bytes'] / 1e6:.1f} MB, "
        f"{figures['gin_bytes_per_call_minute']:,.0f} bytes per call-minute of speech.",
    ]


def run(options: Options) -> Outcome:
    plan = QUICK if options.quick else Plan()
    figures = asyncio.run(measure(plan, options))
    problems = [] if figures["queries"]["a word"]["found"] else ["search found nothing"]
    return Outcome(render(figures, "search"), figures, problems)
