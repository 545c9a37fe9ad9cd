"""Redis key names, laid out for Redis Cluster: every script touches keys of one hash slot.

Calls are spread over SHARDS shards by a stable hash of their id. A call's keys and its shard's
indexes share the shard's hash tag, so the ingest and complete scripts (call keys + indexes) stay
in one slot. The sweep, the reaper, the listing and the counts walk the shards.

SHARDS is fixed for the life of the data: changing it renames keys (a shard's data would move).
64 lets a cluster grow to 64 masters, each holding whole shards, which at the figures of
BENCHMARKS.md is millions of Redis operations a second; walking 64 shards costs the sweep and
/v1/system 64 small commands each, one round trip per node. The tags are chosen so that their
slots are evenly spaced over the 16,384 (shard k lands in slots [k*256, (k+1)*256)): any even
split of the slots over masters splits the shards evenly too. A single Redis has the same keys.
"""

import zlib
from dataclasses import dataclass
from functools import cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

SHARDS = 64


def _tag_for(shard: int) -> str:
    """The first tag `{sK.N}` whose slot falls in shard K's even share of the slots."""
    width = REDIS_CLUSTER_HASH_SLOTS // SHARDS
    n = 0
    while key_slot(f"s{shard}.{n}".encode()) // width != shard:
        n += 1
    return f"{{s{shard}.{n}}}"


# Computed once at import (about 4,000 CRC16s): stable, since CRC16 and SHARDS are.
SHARD_TAGS = tuple(_tag_for(k) for k in range(SHARDS))


def shard_of(call_id: str) -> int:
    """A call's shard: CRC32 of its id (stable across processes and versions, unlike hash())."""
    return zlib.crc32(call_id.encode()) % SHARDS


@dataclass(frozen=True, slots=True)
class ShardKeys:
    """One shard's indexes (sorted sets of call ids), in the shard's slot."""

    idle: str  # IN_PROGRESS calls, scored by their last packet's arrival time
    unflushed: str  # calls not yet in PostgreSQL, scored by creation time
    pending: str  # completed calls not yet ARCHIVED/FAILED, by completion time
    # Live calls whose unflushed tail is due for a segment flush, by when it was asked for: the
    # reaper re-enqueues a flush that was asked for and not done (a lost enqueue, a dead worker).
    segments: str
    # The shard's event outbox on a cluster (db/events.py): the scripts append a call's events
    # here, in its slot, and the relay moves them to the one feed. Unused on a single Redis.
    outbox: str


@cache
def shard_keys(shard: int) -> ShardKeys:
    tag = SHARD_TAGS[shard]
    return ShardKeys(
        idle=f"{tag}:idle",
        unflushed=f"{tag}:unflushed",
        pending=f"{tag}:pending",
        segments=f"{tag}:segments",
        outbox=f"{tag}:events",
    )


ALL_SHARDS = tuple(shard_keys(k) for k in range(SHARDS))

# Deliberately single-slot keys: each is one piece of shared state that must be read and
# changed atomically as a whole, and is touched a few times per call or per second, far below
# what one node serves.
# The AI circuit breaker shared by all workers: a hash (failures, open_until) and its probe lock;
# one tag, since breaker_failure.lua changes both.
AI_BREAKER = "{ai}:breaker"
AI_BREAKER_PROBE = "{ai}:breaker:probe"
# The AI concurrency limit shared by all workers: a sorted set of slot holders by expiry, and the
# time until which nobody may call the provider (after a 429); one tag, one script.
AI_SLOTS = "{ai}:slots"
AI_SLOTS_PAUSE = "{ai}:slots:pause"
# The live event feed (db/events.py): one capped stream, so that readers resume from one
# increasing id. On a single Redis the scripts append to it directly; on a cluster they append
# to their shard's outbox and the relay (jobs/feed_relay.py) moves the events here, exactly once,
# recording how far it got per shard in FEED_CURSORS (same slot as the feed: one atomic step).
EVENTS = "{feed}:events"
FEED_CURSORS = "{feed}:cursors"
FEED_RELAY_LEASE = "{feed}:relay"
# Per-key request counters of the current second (db/rate_limits.py): one key per API key and
# second (each its own slot: nothing reads two), gone after two seconds.
RATE_PREFIX = "callstream:rate:"


@dataclass(frozen=True, slots=True)
class CallKeys:
    # Stream of the unique packets not yet in PostgreSQL, in arrival order: the unflushed tail.
    # Each segment flushed while the call goes on, and the last at its end, leaves it at once.
    packets: str
    meta: str  # hash: counters, sequence bounds per track, state, timestamps
    # Sorted sets of the runs of stored sequences (dedup, gaps): first, scored by last. One per
    # track: each track is its own timeline (Twilio's chunk counts per track).
    runs: str  # the inbound track (the caller; HTTP packets that name no track)
    runs_outbound: str  # the outbound track (the agent)
    done: str  # completion marker, SET NX decides who completes the call
    lease: str  # the worker holding the call's job renews this; gone = that worker died
    # Held while a worker transcribes the call's windows (jobs/transcription.py): a live pass
    # and the call's final one never transcribe the same window at once.
    transcribing: str
    metadata: str  # JSON the call was opened with (a media stream's start message), if any
    # hash: what the reaper counts per unit of work of the call (its job's re-runs, a segment
    # flush's requests) and its jobs' last error (db/job_failures.py)
    failures: str
    # Set of the call's PBX feeds still open (service/feeds/): a socket per track, or one for
    # both; the call completes when its last one ends. Each feed removes itself, so it is gone
    # when the call's last feed ends, and an expiry bounds what a crashed process leaves behind.
    feeds: str
    shard: ShardKeys  # the indexes of the call's shard, in the same slot

    @property
    def data(self) -> tuple[str, ...]:
        """The keys holding what the call sent: they expire together once it is flushed."""
        return (self.packets, self.meta, self.runs, self.runs_outbound, self.metadata)

    @property
    def all(self) -> tuple[str, ...]:
        return (*self.data, self.done, self.lease, self.transcribing, self.failures)


def call_keys(call_id: str) -> CallKeys:
    shard = shard_of(call_id)
    tag = f"{SHARD_TAGS[shard]}:call:{call_id}"
    return CallKeys(
        packets=f"{tag}:packets",
        meta=f"{tag}:meta",
        runs=f"{tag}:runs",
        runs_outbound=f"{tag}:runs:outbound",
        done=f"{tag}:done",
        lease=f"{tag}:lease",
        transcribing=f"{tag}:transcribing",
        metadata=f"{tag}:metadata",
        failures=f"{tag}:failures",
        feeds=f"{tag}:feeds",
        shard=shard_keys(shard),
    )
