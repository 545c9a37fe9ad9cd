"""db/transcripts.py's store_window against the real PostgreSQL: a window is stored once, in one
statement with its utterances and their webhooks, whoever races for it."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from db import transcripts
from db.outbox import EventType, Webhooks
from db.transcripts import UtteranceRow
from tests.factories import rows, scalar

HOOKS = Webhooks(endpoints=("http://a.example/hook", "http://b.example/hook"),
                 events=frozenset({EventType.UTTERANCE}))  # fmt: skip


def said(track: int, *words: str) -> list[UtteranceRow]:
    return [UtteranceRow(track, n, n + 0.5, w, "neutral", 0.0) for n, w in enumerate(words)]


async def store(engine: AsyncEngine, track: int, start: int, end: int, words: list[str]) -> bool:
    async with engine.connect() as conn:
        auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
        return await transcripts.store_window(
            auto, "w", track, start, end, said(track, *words), HOOKS
        )


async def test_a_window_is_stored_with_its_utterances_and_their_webhooks(engine: AsyncEngine):
    assert await store(engine, 0, 0, 800, ["hello", "there"])

    async with engine.connect() as conn:
        kept = await transcripts.utterances(conn, "w")  # type: ignore[arg-type]
    assert [(u.track, u.text) for u in kept] == [(0, "hello"), (0, "there")]
    assert await scalar(engine, "SELECT count(*) FROM webhook_delivery WHERE call_id = 'w'") == 4


async def test_a_window_that_does_not_start_where_the_track_ends_stores_nothing(
    engine: AsyncEngine,
):
    assert await store(engine, 0, 0, 800, ["first"])

    assert not await store(engine, 0, 0, 1600, ["again"])  # already stored
    assert not await store(engine, 0, 400, 1600, ["overlap"])  # not where it ends
    assert await store(engine, 0, 800, 1600, ["next"])
    assert await store(engine, 1, 0, 400, ["other track"])  # each track its own stretch

    windows = await rows(
        engine, "SELECT track, start_sample, end_sample FROM transcript_window ORDER BY 1, 2"
    )
    assert [tuple(w) for w in windows] == [(0, 0, 800), (0, 800, 1600), (1, 0, 400)]
    assert await scalar(engine, "SELECT count(*) FROM utterance") == 3
    assert await scalar(engine, "SELECT count(*) FROM webhook_delivery") == 6


async def test_passes_racing_for_a_window_store_it_once(engine: AsyncEngine):
    for _ in range(5):
        async with engine.begin() as conn:
            await conn.execute(text("TRUNCATE transcript_window, utterance"))
        stored = await asyncio.gather(
            *(store(engine, 0, 0, 800 * (n + 1), [f"pass {n}"]) for n in range(4))
        )
        assert sum(stored) == 1
        assert await scalar(engine, "SELECT count(*) FROM transcript_window") == 1
        assert await scalar(engine, "SELECT count(*) FROM utterance") == 1


async def test_a_pass_that_read_a_stale_end_is_refused_by_the_window_after_it(
    engine: AsyncEngine,
):
    """The live pass stored [0, 800) and [800, 1600) while the final pass still thought the track
    ended at 800: its window starting there is the one already stored."""
    assert await store(engine, 0, 0, 800, ["live one"])
    assert await store(engine, 0, 800, 1600, ["live two"])

    assert not await store(engine, 0, 800, 2400, ["final, stale"])
    assert await scalar(engine, "SELECT count(*) FROM utterance") == 2
