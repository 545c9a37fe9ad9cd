"""Dedup by runs of sequences (db/lua/ingest.lua) against a real Redis: exact whatever numbers a
call names, memory that follows what a call sent, gaps read in time that follows the gaps, and a
release that lets every key go."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from itertools import islice

import pytest
from redis.asyncio import Redis

from db.flush import FlushSource
from db.intake import CallIntake
from db.job_failures import RERUNS, JobFailures
from db.keys import CallKeys, call_keys
from db.live import LiveCalls
from db.packets import NewPacket, Outcome, Track
from tests.conftest import FEED

# Ingestion, completion, the worker and recovery hold on a Redis Cluster as on one Redis.
pytestmark = pytest.mark.both_topologies

TOP = 2**53 - 1  # the largest sequence the API accepts
OLD_BITMAP_LIMIT = 1 << 23  # where the dedup bitmap of earlier releases ended


def packets(sequences: Iterable[int], data: str = "x") -> list[NewPacket]:
    return [NewPacket(s, 1_700_000_000.0, data) for s in sequences]


async def used_memory(redis: Redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def test_a_flood_of_calls_naming_huge_sequences_costs_a_few_kilobytes_each(redis: Redis):
    intake = CallIntake(redis, feed=FEED)
    for seq in (OLD_BITMAP_LIMIT - 1, TOP):
        await redis.flushdb()
        before = await used_memory(redis)
        for i in range(200):
            await intake.append(f"flood-{i}", packets([seq]))
        per_call = (await used_memory(redis) - before) / 200

        # Each call is its stream (a 4 KB listpack node in Redis 8), its hash and its index
        # entries; the 1 MiB bitmap of seq 8388607 (1.3 MB per call measured) is gone.
        assert per_call < 8 * 1024, f"seq {seq}: {per_call:.0f} bytes per call"
        assert await redis.memory_usage(call_keys("flood-0").runs, samples=0) <= 128


async def test_a_long_in_order_call_keeps_one_run(redis: Redis):
    intake = CallIntake(redis, feed=FEED)
    for start in range(0, 50_000, 5_000):
        await intake.append("long", packets(range(start, start + 5_000), data=""))

    runs = call_keys("long").runs
    assert await redis.zcard(runs) == 1
    assert await redis.memory_usage(runs, samples=0) <= 128


class Model:
    """What dedup must answer, kept in Python."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.max_seq = -1

    def outcome(self, seq: int) -> Outcome:
        if seq in self.seen:
            return Outcome.DUPLICATE
        self.seen.add(seq)
        previous, self.max_seq = self.max_seq, max(self.max_seq, seq)
        if previous < 0 or seq == previous + 1:
            return Outcome.IN_ORDER
        return Outcome.OUT_OF_ORDER if seq < previous else Outcome.AFTER_GAP


def runs_of(present: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for seq in present:
        if runs and runs[-1][1] == seq - 1:
            runs[-1] = (runs[-1][0], seq)
        else:
            runs.append((seq, seq))
    return runs


async def stored_runs(redis: Redis, call_id: str) -> list[tuple[int, int]]:
    """The call's runs; the last one's end is the call's highest sequence (the script lets the
    score of the last run lag behind)."""
    keys = call_keys(call_id)
    runs = [
        (int(f), int(last)) for f, last in await redis.zrange(keys.runs, 0, -1, withscores=True)
    ]
    highest = int(await redis.hget(keys.meta, "max_seq") or -1)  # type: ignore[misc]
    assert runs[-1][0] == int(await redis.hget(keys.meta, "last_run_from") or -1)  # type: ignore[misc]
    return [*runs[:-1], (runs[-1][0], highest)]


def sequence_pool(rng: random.Random) -> list[int]:
    """Sequences near every edge: zero, where the old bitmap ended, the top of the range."""
    pool = list(range(40))
    pool += range(OLD_BITMAP_LIMIT - 20, OLD_BITMAP_LIMIT + 20)
    pool += range(TOP - 40, TOP + 1)
    pool += [rng.randrange(TOP) for _ in range(20)]
    return pool


async def test_dedup_is_exact_across_the_range_in_any_order(redis: Redis):
    rng = random.Random(10)
    intake, live = CallIntake(redis, feed=FEED), LiveCalls(redis)
    for call in range(6):
        call_id, model, pool = f"call-{call}", Model(), sequence_pool(rng)
        for _ in range(200):
            batch = [rng.choice(pool) for _ in range(rng.randint(1, 6))]  # repeats within, too
            results = await intake.append(call_id, packets(batch))

            assert [r.outcome for r in results] == [model.outcome(s) for s in batch]

        assert await stored_runs(redis, call_id) == runs_of(sorted(model.seen))
        stream = await redis.xrange(call_keys(call_id).packets)
        stored = [int(fields[b"s"]) for _, fields in stream]
        assert sorted(stored) == sorted(model.seen)
        present = sorted(model.seen)
        record = await live.get(call_id, missing_cap=500)
        assert record is not None
        assert record.packets_received == len(present)
        assert record.missing_sequences == missing_between(present, present[0], present[-1], 500)


async def test_the_status_of_many_calls_lists_each_call_s_own_gaps(redis: Redis):
    intake = CallIntake(redis, feed=FEED)
    sent = {f"c{i}": [0, 1, 3 + i, 10 + 2 * i, TOP - i] for i in range(20)}
    for call_id, sequences in sent.items():
        await intake.append(call_id, packets(sequences))

    found = await LiveCalls(redis).get_many([*sent, "nobody"], missing_cap=4)

    for record, sequences in zip(found, sent.values(), strict=False):
        assert record is not None
        assert record.missing_sequences == missing_between(sequences, 0, TOP, 4)
    assert found[-1] is None


async def test_gaps_of_a_call_spanning_millions_are_read_in_proportion_to_the_gaps(redis: Redis):
    # The shape db/lua/ingest.lua leaves for 2^22 sequences with three lost: written directly,
    # since sending four million packets would take this test a minute.
    keys, span, lost = call_keys("huge"), 1 << 22, [5, 1_000_000, 4_000_000]
    await redis.hset(  # type: ignore[misc]
        keys.meta,
        mapping={
            "state": "IN_PROGRESS",
            "received": span - len(lost),
            "min_seq": 0,
            "max_seq": span - 1,
            "created_at": time.time(),
            "last_run_from": lost[-1] + 1,
        },
    )
    runs = [(0, 4), (6, 999_999), (1_000_001, 3_999_999), (4_000_001, 4_000_001)]
    await redis.zadd(keys.runs, {str(first): last for first, last in runs})

    started = time.perf_counter()
    record = await LiveCalls(redis).get("huge", missing_cap=1000)
    elapsed = time.perf_counter() - started

    assert record is not None
    assert record.missing_sequences == lost
    assert record.missing_count == 3
    assert elapsed < 0.05  # the bitmap scan took 3 s and 100 MB for half this span


async def test_the_missing_list_stops_at_the_cap_however_many_runs_the_call_has(redis: Redis):
    intake = CallIntake(redis, feed=FEED)
    await intake.append("sparse", packets(range(0, 20_000, 2)))  # 10,000 runs

    record = await LiveCalls(redis).get("sparse", missing_cap=50)

    assert record is not None
    assert record.missing_sequences == list(range(1, 100, 2))
    assert record.missing_count == 9_999


async def test_the_release_leaves_only_the_done_marker_of_a_stored_call(redis: Redis):
    intake, keys = CallIntake(redis, feed=FEED), call_keys("gone")
    await intake.open_call("gone", {"callSid": "gone"}, ttl_s=10_000)
    await intake.append("gone", packets([0, 5, 6, OLD_BITMAP_LIMIT, TOP]))
    await intake.append("gone", [NewPacket(3, 1.0, "agent", Track.OUTBOUND)])
    await redis.set(keys.lease, "worker-1")
    await JobFailures(redis).count("gone", RERUNS)
    await intake.complete("gone", "explicit")
    await redis.xtrim(keys.packets, maxlen=0)  # its segments stored them: the flush trims

    await FlushSource(redis, FEED).release("gone", retention_s=100, marker_retention_s=1000)

    left = {
        key.decode(): await redis.ttl(key)
        async for key in redis.scan_iter(keys.meta.removesuffix("meta") + "*")
    }
    # Redis is a buffer: PostgreSQL answers for the call now; only the done marker stays, to
    # refuse late packets, and expires.
    assert set(left) == {keys.done}
    assert 100 < left[keys.done] <= 1000
    assert [await redis.zscore(index, "gone") for index in _indexes(keys)] == [None] * 4


async def test_the_release_keeps_a_tail_no_store_took_for_the_retention(redis: Redis):
    intake, keys = CallIntake(redis, feed=FEED), call_keys("refused")
    await intake.open_call("refused", {"callSid": "refused"}, ttl_s=10_000)
    await intake.append("refused", packets([0, 1, 2]))
    await JobFailures(redis).count("refused", RERUNS)
    await intake.complete("refused", "explicit")

    await FlushSource(redis, FEED).release("refused", retention_s=100, marker_retention_s=1000)

    # A replay within the retention stores what the refusal left; the counts start afresh.
    assert await redis.xlen(keys.packets) == 3
    for key in (keys.packets, keys.meta, keys.metadata, keys.runs):
        assert 0 < await redis.ttl(key) <= 100
    assert not await redis.exists(keys.failures)
    assert 100 < await redis.ttl(keys.done) <= 1000


def _indexes(keys: CallKeys) -> tuple[str, ...]:
    s = keys.shard
    return (s.idle, s.unflushed, s.pending, s.segments)


def missing_between(present: list[int], first: int, last: int, cap: int) -> list[int]:
    """The oracle: the sequences in [first, last] absent from `present`, at most `cap`."""
    have = set(present)
    return list(islice((s for s in range(first, last + 1) if s not in have), cap))
