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
# The AI concurrency limit shared by all workers: a sorted set of slot holders by expiry, and the
# time until which nobody may call the provider (after a 429).
AI_SLOTS = "callstream:ai_slots"
AI_SLOTS_PAUSE = "callstream:ai_slots:pause"

# Sequences below this are deduplicated in a bitmap (1 MiB at most); larger ones in a set.
BITMAP_SEQUENCE_LIMIT = 1 << 23


@dataclass(frozen=True, slots=True)
class CallKeys:
    packets: str  # stream of unique packets, in arrival order
    meta: str  # hash: counters, sequence bounds, state, timestamps
    seen: str  # bitmap of sequences already stored
    seen_high: str  # set of stored sequences >= BITMAP_SEQUENCE_LIMIT
    done: str  # completion marker, SET NX decides who completes the call
    lease: str  # the worker holding the call's job renews this; gone = that worker died
    metadata: str  # JSON the call was opened with (a media stream's start message), if any

    @property
    def all(self) -> tuple[str, ...]:
        return (
            self.packets,
            self.meta,
            self.seen,
            self.seen_high,
            self.done,
            self.lease,
            self.metadata,
        )


def call_keys(call_id: str) -> CallKeys:
    tag = f"{{call:{call_id}}}"
    return CallKeys(
        packets=f"{tag}:packets",
        meta=f"{tag}:meta",
        seen=f"{tag}:seen",
        seen_high=f"{tag}:seen_high",
        done=f"{tag}:done",
        lease=f"{tag}:lease",
        metadata=f"{tag}:metadata",
    )
