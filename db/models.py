"""PostgreSQL tables: calls, their audio in segments, every AI attempt and state transition."""

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column

from db.base import Base

__all__ = [
    "AiAttempt",
    "Base",
    "Call",
    "CallSegment",
    "Erasure",
    "StateTransition",
    "TranscriptWindow",
    "Utterance",
    "WebhookDelivery",
]
from db.states import CallState

_STATES = ", ".join(f"'{s.value}'" for s in CallState)


class Call(Base):
    __tablename__ = "call"
    __table_args__ = (
        CheckConstraint(f"state IN ({_STATES})", name="state_known"),
        # Keyset pagination for the supervisor's list, newest first, with or without a state.
        Index("ix_call_created", text("created_at DESC"), text("call_id DESC")),
        Index("ix_call_state_created", "state", text("created_at DESC"), text("call_id DESC")),
    )

    call_id: Mapped[str] = mapped_column(Text, primary_key=True)
    state: Mapped[str] = mapped_column(Text)
    packets_received: Mapped[int] = mapped_column(Integer, default=0)
    first_sequence: Mapped[int | None] = mapped_column(BigInteger)
    last_sequence: Mapped[int | None] = mapped_column(BigInteger)
    missing_sequences: Mapped[list[int]] = mapped_column(ARRAY(BigInteger), default=list)
    missing_count: Mapped[int] = mapped_column(BigInteger, default=0)
    duplicate_packets: Mapped[int] = mapped_column(Integer, default=0)
    out_of_order_packets: Mapped[int] = mapped_column(Integer, default=0)
    completion_reason: Mapped[str | None] = mapped_column(Text)
    # What the call was opened with (a media stream's start message); null for HTTP calls.
    start_metadata: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # Each track's counters (db/record.py's TrackCounters), by track name; null before tracks.
    tracks: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # The conversation's figures (db/record.py's Conversation): per speaker, silence, overlap.
    conversation: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    transcript: Mapped[str | None] = mapped_column(Text)
    sentiment_label: Mapped[str | None] = mapped_column(Text)
    sentiment_score: Mapped[float | None] = mapped_column(Float)
    ai_attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    # Fencing token: bumped by every worker that takes the call; every write checks it.
    lease_epoch: Mapped[int] = mapped_column(Integer, default=0)
    # Bumped by each dead-letter replay; AI attempt budgets count within one generation.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When its recording was erased (AUDIO_RETENTION_DAYS); its transcript and figures stay.
    audio_erased_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class CallSegment(Base):
    """One track of one segment of a call's audio, stored once: the packets' bytes in sequence
    order (decoded from base64 when they are the call's audio, else their text as sent) and what
    each packet said, as arrays. A live call's segments are written while it goes on, so the
    row of the call itself may not exist yet: no foreign key."""

    __tablename__ = "call_segment"

    call_id: Mapped[str] = mapped_column(Text, primary_key=True)
    segment: Mapped[int] = mapped_column(Integer, primary_key=True)  # from 0, in flush order
    track: Mapped[int] = mapped_column(SmallInteger, primary_key=True)  # db.packets.Track.index
    # The stream id of the segment's last entry (both tracks' rows say the same): a flush stores
    # only entries after the latest segment's, so a re-run never stores a packet twice.
    last_entry_ms: Mapped[int] = mapped_column(BigInteger)
    last_entry_n: Mapped[int] = mapped_column(BigInteger)
    encoding: Mapped[str] = mapped_column(Text)  # the audio format, or "text"
    packets: Mapped[int] = mapped_column(Integer)
    first_sequence: Mapped[int] = mapped_column(BigInteger)
    last_sequence: Mapped[int] = mapped_column(BigInteger)
    sequences: Mapped[list[int]] = mapped_column(ARRAY(BigInteger))  # ascending
    sizes: Mapped[list[int]] = mapped_column(ARRAY(Integer))  # each packet's bytes in payload
    timestamps: Mapped[list[float]] = mapped_column(ARRAY(Float))  # as the packets said
    arrivals: Mapped[list[float]] = mapped_column(ARRAY(Float))  # epoch s, from the stream
    payload: Mapped[bytes] = mapped_column(LargeBinary)  # STORAGE EXTERNAL (migration 0003)
    # With AUDIO_STORE_URL: the object holding the bytes (payload is then empty).
    object_key: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class TranscriptWindow(Base):
    """A stretch of one track that has been transcribed (its utterances are in `utterance`):
    samples on the track's own timeline (core/recording.py), cut at a quiet frame."""

    __tablename__ = "transcript_window"

    call_id: Mapped[str] = mapped_column(Text, primary_key=True)
    track: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    start_sample: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    end_sample: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Utterance(Base):
    """What one speaker said, when (seconds of the call), and its sentiment."""

    __tablename__ = "utterance"
    __table_args__ = (
        Index("ix_utterance_call", "call_id", "start_s"),
        Index("ix_utterance_search", "search", postgresql_using="gin"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(Text)
    track: Mapped[int] = mapped_column(SmallInteger)
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    text: Mapped[str] = mapped_column(Text)
    sentiment_label: Mapped[str] = mapped_column(Text)
    sentiment_score: Mapped[float] = mapped_column(Float)
    # What was said, for full-text search (db/search.py): generated by PostgreSQL, GIN-indexed.
    search: Mapped[str] = mapped_column(
        TSVECTOR, Computed("to_tsvector('english'::regconfig, text)", persisted=True)
    )


class WebhookDelivery(Base):
    """One event for one endpoint (db/outbox.py writes it, db/deliveries.py reads it)."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        CheckConstraint("state IN ('pending', 'delivered', 'failed')", name="state_known"),
        Index("ix_webhook_delivery_due", "next_at", postgresql_where=text("state = 'pending'")),
        Index("ix_webhook_delivery_state", "state", text("id DESC")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(Text)  # webhook-id; unique with the endpoint
    event_type: Mapped[str] = mapped_column(Text)
    call_id: Mapped[str] = mapped_column(Text)
    endpoint: Mapped[str] = mapped_column(Text)
    occurred_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    state: Mapped[str] = mapped_column(Text, server_default="pending")
    body: Mapped[str | None] = mapped_column(Text)  # fixed at the first attempt
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    final_attempt: Mapped[int | None] = mapped_column(Integer)
    next_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    attempt_log: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, server_default="[]")
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AiAttempt(Base):
    """One AI request. No foreign key: a live call's windows are transcribed, and their attempts
    kept, before the call's own row exists."""

    __tablename__ = "ai_attempt"
    __table_args__ = (Index("ix_ai_attempt_call", "call_id", "step", "generation"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(Text)
    step: Mapped[str] = mapped_column(Text)
    generation: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    duration_ms: Mapped[float] = mapped_column(Float)
    # The unit of work the attempt belongs to (its retry budget's): a transcription window's
    # label ("the caller's audio at 35.8-75.0 s"), None for the sentiment step. `window` is an
    # SQL keyword, hence the column's name.
    window: Mapped[str | None] = mapped_column("window_label", Text)
    live: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))


class StateTransition(Base):
    __tablename__ = "state_transition"
    __table_args__ = (Index("ix_state_transition_call", "call_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(Text, ForeignKey("call.call_id", ondelete="CASCADE"))
    from_state: Mapped[str | None] = mapped_column(Text)
    to_state: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reason: Mapped[str] = mapped_column(Text)


class Erasure(Base):
    """The erasure ledger: one row per erasure asked for (of a whole call, or of its recording
    only), kept after the call is gone so that a restored backup can be erased again. It holds
    nothing of the call's content: its id, what was erased, why, who asked (an API key's id,
    never the key) and when."""

    __tablename__ = "erasure"
    __table_args__ = (
        CheckConstraint("scope IN ('call', 'audio')", name="erasure_scope_known"),
        CheckConstraint("reason IN ('request', 'retention')", name="erasure_reason_known"),
        Index("ux_erasure_call_scope", "call_id", "scope", unique=True),
        Index("ix_erasure_erased", "erased_at"),
        Index("ix_erasure_pending", "requested_at", postgresql_where=text("erased_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(Text)
    scope: Mapped[str] = mapped_column(Text)  # "call" (everything) or "audio" (the recording)
    reason: Mapped[str] = mapped_column(Text)  # "request" (DELETE) or "retention"
    requested_by: Mapped[str] = mapped_column(Text)  # core/audit.py's actor: "key:<id>", ...
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Null while it runs (the call already answers 404 call_erased); set once nothing is left.
    erased_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # How often the upkeep queued it again unfinished: bounded (db/erasures.py MAX_REQUEUES).
    requeues: Mapped[int] = mapped_column(Integer, server_default=text("0"))
