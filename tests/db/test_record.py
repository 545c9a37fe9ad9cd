"""The call record is defined once (db/record.py): the scripts' hash fields, the table's columns
and the API's fields must all follow it, so a field added in one place and forgotten in another
fails here."""

from __future__ import annotations

from redis.asyncio import Redis

from db.flush import FlushSource
from db.intake import CallIntake, Segmenting
from db.keys import call_keys
from db.models import Call
from db.packets import NewPacket, Track
from db.record import (
    COLUMNS,
    DERIVED_FIELDS,
    HASH_FIELDS,
    INTERNAL_HASH_FIELDS,
    SENTIMENT_COLUMNS,
    CallRecord,
)
from tests.conftest import FEED

# Columns of the worker's own bookkeeping, not part of what a call is.
BOOKKEEPING_COLUMNS = {"lease_epoch", "generation", "updated_at"}


async def test_the_scripts_write_exactly_the_record_hash_fields(redis: Redis):
    intake = CallIntake(redis, feed=FEED, segmenting=Segmenting(2, 30.0))
    # Every event that writes to the hash: first packet, gap, reorder, duplicate, on both
    # tracks, a segment asked for, a segment's entries trimmed, completion.
    await intake.append("c", [NewPacket(s, 1.0, "x") for s in (0, 3, 1, 1)])
    first = (await redis.xrange(call_keys("c").packets, count=1))[0][0]
    ms, n = (int(part) for part in first.decode().split("-"))
    await FlushSource(redis, FEED).segment_done("c", (ms, n))
    await intake.append("c", [NewPacket(s, 1.0, "y", Track.OUTBOUND) for s in (0, 2, 1, 1)])
    await intake.complete("c", "explicit")

    written = {field.decode() for field in await redis.hgetall(call_keys("c").meta)}  # type: ignore[misc]

    assert written == set(HASH_FIELDS.values()) | INTERNAL_HASH_FIELDS


def test_the_call_table_has_a_column_for_every_record_field_and_nothing_else():
    table_columns = {c.name for c in Call.__table__.columns}

    assert table_columns == set(COLUMNS.values()) | set(SENTIMENT_COLUMNS) | BOOKKEEPING_COLUMNS


def test_every_record_field_is_stored_somewhere():
    stored = set(COLUMNS) | set(HASH_FIELDS) | {"sentiment"} | DERIVED_FIELDS
    unstored = set(CallRecord.model_fields) - stored

    assert unstored == set()
