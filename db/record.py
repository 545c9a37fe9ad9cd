"""The call record, defined once.

`CallRecord` is what the system knows of a call, live or flushed, and what the API answers for it.
Each field says where it is stored (`Stored`): its name in the call's Redis hash while the call is
live, and its column in the `call` table once flushed. Reading from Redis, writing the flushed row,
reading the row back and the API's fields all follow from this one list; tests hold the Lua
scripts and the table to it, so a field added here and forgotten there fails the suite.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, Field

from db.states import CallState


@dataclass(frozen=True, slots=True)
class Stored:
    redis: str | None = (
        None  # field of the call's meta hash, written by the ingest/complete scripts
    )
    column: str | None = None  # column of the `call` table


class Sentiment(BaseModel):
    label: str = Field(description="positive | neutral | negative")
    score: float = Field(description="Polarity in [-1, 1].")


class SpeakerFigures(BaseModel):
    """One party of a call: how long they talked, how often, and how they sounded."""

    track: str = Field(description="inbound or outbound.")
    utterances: int
    talk_s: float = Field(description="Seconds of their utterances, added up.")
    sentiment: Sentiment | None = Field(description="Of everything they said.")


class Conversation(BaseModel):
    """The call as a conversation, from its utterances (db/transcripts.py)."""

    speakers: dict[str, SpeakerFigures] = Field(description="By speaker name (SPEAKER_NAMES).")
    silence_s: float = Field(description="Seconds of the call in which nobody talked.")
    overlap_count: int = Field(description="Times both parties talked at once.")
    overlap_s: float = Field(description="Seconds both parties talked at once.")


class TrackCounters(BaseModel):
    """One track's counters: each track is its own timeline (db/packets.py's Track)."""

    packets_received: int
    first_sequence: int | None
    last_sequence: int | None
    missing_count: int
    duplicate_packets: int
    out_of_order_packets: int


class CallRecord(BaseModel):
    call_id: Annotated[str, Stored(column="call_id")]
    state: Annotated[
        CallState,
        Field(description="IN_PROGRESS, COMPLETED, PROCESSING_AI, ARCHIVED or FAILED."),
        Stored(redis="state", column="state"),
    ]
    packets_received: Annotated[
        int, Field(description="Unique packets stored."), Stored("received", "packets_received")
    ]
    first_sequence: Annotated[int | None, Stored("min_seq", "first_sequence")]
    last_sequence: Annotated[
        int | None,
        Field(description="Highest sequence received."),
        Stored("max_seq", "last_sequence"),
    ]
    missing_sequences: Annotated[
        list[int],
        Field(
            description="Sequences absent between the first and the last "
            "(capped by MISSING_LIST_CAP)."
        ),
        Stored(column="missing_sequences"),
    ]
    missing_count: Annotated[int, Stored(column="missing_count")]
    duplicate_packets: Annotated[int, Stored("duplicates", "duplicate_packets")]
    out_of_order_packets: Annotated[int, Stored("out_of_order", "out_of_order_packets")]
    ai_attempts: Annotated[
        int,
        Field(description="AI requests made for this call, failed ones included."),
        Stored(column="ai_attempts"),
    ] = 0
    last_error: Annotated[
        str | None,
        Field(description="Last AI error; the failure reason when FAILED."),
        Stored(column="last_error"),
    ] = None
    transcript: Annotated[str | None, Stored(column="transcript")] = None
    # Two columns (sentiment_label, sentiment_score): see from_row / SENTIMENT_COLUMNS.
    sentiment: Sentiment | None = None
    completion_reason: Annotated[
        str | None,
        Field(description="explicit or idle."),
        Stored("completion_reason", "completion_reason"),
    ]
    metadata: Annotated[
        dict[str, Any] | None,
        Field(description="What a media stream's `start` message said of the call, else null."),
        Stored(column="start_metadata"),  # live: its own key, call_keys(id).metadata (JSON)
    ] = None
    created_at: Annotated[datetime, Stored("created_at", "created_at")]
    completed_at: Annotated[datetime | None, Stored("completed_at", "completed_at")]
    finished_at: Annotated[datetime | None, Stored(column="finished_at")] = None
    conversation: Annotated[
        Conversation | None,
        Field(
            description="Per speaker (talk time, utterances, sentiment), silence and overlap; "
            "the utterances themselves: GET /v1/calls/{call_id}/transcript. Null until ARCHIVED."
        ),
        Stored(column="conversation"),
    ] = None
    audio_erased_at: Annotated[
        datetime | None,
        Field(description="When its recording was erased (AUDIO_RETENTION_DAYS), else null."),
        Stored(column="audio_erased_at"),
    ] = None
    audio_erase_at: Annotated[
        datetime | None,
        Field(
            description="When retention will erase its recording (AUDIO_RETENTION_DAYS after it "
            "started; null: never, or done)."
        ),
    ] = None
    erase_at: Annotated[
        datetime | None,
        Field(
            description="When retention will erase the whole call (RETENTION_DAYS after it "
            "started; null: never)."
        ),
    ] = None
    tracks: Annotated[
        dict[str, TrackCounters],
        Field(
            description="Each track's counters, by track: `inbound` (the caller; HTTP packets "
            "that name no track) and `outbound` (the agent); only tracks that sent packets. The "
            "top-level sequences are the inbound track's, the counters the call's totals."
        ),
        Stored(column="tracks"),  # live: from the hash's per-track fields (_tracks)
    ] = Field(default_factory=dict)


SENTIMENT_COLUMNS = ("sentiment_label", "sentiment_score")
# Filled in by the worker after the flush; a live call has none of them.
WORKER_FIELDS = frozenset(
    {
        "ai_attempts",
        "last_error",
        "transcript",
        "sentiment",
        "finished_at",
        "conversation",
        "audio_erased_at",  # written by an erasure of its recording
    }
)
# Computed when the record is read (with_retention, from the settings), stored nowhere.
DERIVED_FIELDS = frozenset({"audio_erase_at", "erase_at"})
# Hash fields the scripts keep for their own bookkeeping, not part of the record.
# last_packet_at: when the call last sent a new packet (the idle sweep's clock);
# data_bytes: the data bytes of its stored packets (the MAX_CALL_BYTES cap);
# last_run_from: the first sequence of its last run of sequences (dedup, db/lua/ingest.lua);
# progress_at: when it last published a progress event (db/events.py);
# o_*: the outbound track's bounds, dedup tail and counters (the inbound one's are the totals
# minus them; _tracks);
# seg_open_at, seg_asked_at, seg_asked: the unflushed tail's age and its segment requests
# (db/lua/ingest.lua, segment_done.lua); seg_trimmed: a stored segment's entries left the
# stream (segment_done.lua): until then the stream holds every entry the call sent.
_OUTBOUND_FIELDS = ("max_seq", "min_seq", "last_run_from", "received", "duplicates", "out_of_order")
INTERNAL_HASH_FIELDS = frozenset(
    {
        "last_packet_at",
        "data_bytes",
        "last_run_from",
        "progress_at",
        "seg_open_at",
        "seg_asked_at",
        "seg_asked",
        "seg_trimmed",
        *(f"o_{name}" for name in _OUTBOUND_FIELDS),
    }
)


def _stored(name: str) -> Stored:
    found = [m for m in CallRecord.model_fields[name].metadata if isinstance(m, Stored)]
    return found[0] if found else Stored()


STORAGE: dict[str, Stored] = {name: _stored(name) for name in CallRecord.model_fields}
HASH_FIELDS: dict[str, str] = {n: s.redis for n, s in STORAGE.items() if s.redis is not None}
COLUMNS: dict[str, str] = {n: s.column for n, s in STORAGE.items() if s.column is not None}
# The columns a flush fills: everything Redis knows of a call.
FLUSHED: dict[str, str] = {n: c for n, c in COLUMNS.items() if n not in WORKER_FIELDS}

# What a live call's hash lacks until the event that writes the field has happened.
_LIVE_DEFAULTS: dict[str, Any] = {
    "state": CallState.IN_PROGRESS,
    "packets_received": 0,
    "duplicate_packets": 0,
    "out_of_order_packets": 0,
    "first_sequence": None,
    "last_sequence": None,
    "completion_reason": None,
    "created_at": 0,
    "completed_at": None,
}


def from_redis(
    call_id: str, meta: dict[bytes, bytes], metadata: bytes | None, missing: list[int]
) -> CallRecord:
    """A live call from its Redis hash (and its metadata key); `missing`: the inbound track's
    missing sequences, read from its runs."""
    values: dict[str, Any] = {**_LIVE_DEFAULTS, "call_id": call_id}
    for name, field in HASH_FIELDS.items():
        raw = meta.get(field.encode())
        if raw is not None:
            values[name] = raw.decode()
    values["tracks"] = tracks = _tracks(meta)
    values["missing_count"] = sum(t.missing_count for t in tracks.values())
    values["missing_sequences"] = missing
    values["metadata"] = orjson.loads(metadata) if metadata else None
    return CallRecord.model_validate(values)


def _int(meta: dict[bytes, bytes], field: str) -> int | None:
    raw = meta.get(field.encode())
    return int(raw) if raw is not None else None


def _track(received: int, first: int | None, last: int | None, dups: int, late: int) -> Any:
    span = last - first + 1 if first is not None and last is not None else 0
    return TrackCounters(
        packets_received=received,
        first_sequence=first,
        last_sequence=last,
        missing_count=max(span - received, 0),
        duplicate_packets=dups,
        out_of_order_packets=late,
    )


def _tracks(meta: dict[bytes, bytes]) -> dict[str, TrackCounters]:
    """Each track's counters from the hash: the outbound track's own fields, the inbound one's
    the totals minus those (db/lua/ingest.lua)."""

    def total(field: str) -> int:
        return _int(meta, field) or 0

    out = total("o_received")
    counters = {}
    if total("received") > out:
        counters["inbound"] = _track(
            total("received") - out,
            _int(meta, "min_seq"),
            _int(meta, "max_seq"),
            total("duplicates") - total("o_duplicates"),
            total("out_of_order") - total("o_out_of_order"),
        )
    if out:
        counters["outbound"] = _track(
            out,
            _int(meta, "o_min_seq"),
            _int(meta, "o_max_seq"),
            total("o_duplicates"),
            total("o_out_of_order"),
        )
    return counters


def from_row(row: Any) -> CallRecord:
    """A flushed call from its `call` row (any object with the columns as attributes)."""
    values = {name: getattr(row, column) for name, column in COLUMNS.items()}
    values["tracks"] = values["tracks"] or {}  # rows from before tracks have none
    label, score = (getattr(row, column) for column in SENTIMENT_COLUMNS)
    if label is not None and score is not None:
        values["sentiment"] = Sentiment(label=label, score=score)
    return CallRecord.model_validate(values)


def with_retention(
    call: CallRecord, retention_days: int | None, audio_retention_days: int | None
) -> CallRecord:
    """The call with the times retention will erase it and its recording (RETENTION_DAYS,
    AUDIO_RETENTION_DAYS counted from its start; null when off)."""
    audio_at = None
    if audio_retention_days is not None and call.audio_erased_at is None:
        audio_at = call.created_at + timedelta(days=audio_retention_days)
    call_at = None
    if retention_days is not None:
        call_at = call.created_at + timedelta(days=retention_days)
    return call.model_copy(update={"audio_erase_at": audio_at, "erase_at": call_at})


def flushed_columns(live: CallRecord) -> dict[str, Any]:
    """The columns of the row a flush creates: everything Redis knew of the call."""
    columns = {
        column: getattr(live, name) for name, column in COLUMNS.items() if name not in WORKER_FIELDS
    }
    columns["tracks"] = {name: t.model_dump() for name, t in live.tracks.items()}
    return columns
