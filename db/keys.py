"""Redis key names. Every key of one call shares the hash tag {call:ID} (Redis Cluster ready)."""

from dataclasses import dataclass

# Global indexes (sorted sets of call ids). They cross slots, so in Redis Cluster they would have
# to be sharded; a single Redis (with AOF) is what we ship.
IDLE_INDEX = "callstream:idle"  # IN_PROGRESS calls, scored by their last packet's arrival time
UNFLUSHED_INDEX = "callstream:unflushed"  # calls not yet in PostgreSQL, scored by creation time
PENDING_INDEX = "callstream:pending"  # completed calls not yet ARCHIVED/FAILED, by completion time

# The AI circuit breaker shared by all workers: a hash (failures, open_until) and its probe lock.
AI_BREAKER = "callstream:ai_breaker"
AI_BREAKER_PROBE = "callstream:ai_breaker:probe"
# Per-key request counters of the current second (db/rate_limits.py): one key per API key and
# second, global on purpose (every API process counts into it), gone after two seconds.
RATE_PREFIX = "callstream:rate:"
# The AI concurrency limit shared by all workers: a sorted set of slot holders by expiry, and the
# time until which nobody may call the provider (after a 429).
AI_SLOTS = "callstream:ai_slots"
AI_SLOTS_PAUSE = "callstream:ai_slots:pause"
# The live event feed (db/events.py): a capped stream of every call's events. One key so that
# readers resume from one increasing id; the scripts that change a call append to it in the same
# step, which a Redis Cluster would refuse (another slot): there it has to be sharded.
EVENTS = "callstream:events"


@dataclass(frozen=True, slots=True)
class CallKeys:
    packets: str  # stream of unique packets, in arrival order
    meta: str  # hash: counters, sequence bounds, state, timestamps
    runs: str  # sorted set of the runs of stored sequences (dedup, gaps): first, scored by last
    done: str  # completion marker, SET NX decides who completes the call
    lease: str  # the worker holding the call's job renews this; gone = that worker died
    metadata: str  # JSON the call was opened with (a media stream's start message), if any
    # Dedup keys of releases before the runs (a bitmap, and a set above 2^23): no longer written,
    # but a call that was live across the upgrade may still hold them, and its release must let
    # them expire.
    legacy_seen: str
    legacy_seen_high: str

    @property
    def data(self) -> tuple[str, ...]:
        """The keys holding what the call sent: they expire together once it is flushed."""
        return (
            self.packets,
            self.meta,
            self.runs,
            self.metadata,
            self.legacy_seen,
            self.legacy_seen_high,
        )

    @property
    def all(self) -> tuple[str, ...]:
        return (*self.data, self.done, self.lease)


def call_keys(call_id: str) -> CallKeys:
    tag = f"{{call:{call_id}}}"
    return CallKeys(
        packets=f"{tag}:packets",
        meta=f"{tag}:meta",
        runs=f"{tag}:runs",
        done=f"{tag}:done",
        lease=f"{tag}:lease",
        metadata=f"{tag}:metadata",
        legacy_seen=f"{tag}:seen",
        legacy_seen_high=f"{tag}:seen_high",
    )
