"""The live feed's events, defined once: one pydantic model per event type. Every producer builds
its events through these (the worker's Python, and the bodies the Lua scripts append: each script
takes its event pre-encoded, except ingest.lua's `progress`, whose counters only the script knows,
so it fills them in under the names of ProgressEvent, which the tests hold it to), the API
documents them from these, and the dashboard's contract (service/dashboard/contract.js) is
generated from them (scripts/contract_js.py).

Every event is bounded: no event is larger than MAX_EVENT_BYTES once encoded. The free texts are
capped where they are built: an utterance's text is at most UTTERANCE_MAX_CHARS (longer speech is
told as several utterances: core/conversation.py's split_long), an error or a failure reason is
cut at MESSAGE_MAX_CHARS, an ARCHIVED call's transcript at EXCERPT_CHARS, a speaker's name at
NAME_MAX_CHARS. With every text capped, the bound holds whatever the texts hold (the tests encode
each type's worst case); `encode` still refuses anything larger, so an event past the bound is a
bug that fails where it is built, never a megabyte sent to every subscriber.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from db.packets import TRACKS, Track
from db.record import Sentiment
from db.states import CallState

MAX_EVENT_BYTES = 16 * 1024  # an event as stored and sent (JSON, its id included)
UTTERANCE_MAX_CHARS = 1_000  # about a minute of speech; longer speech is several utterances
MESSAGE_MAX_CHARS = 500  # an attempt's error, a failure's reason, a window's label
EXCERPT_CHARS = 140  # of a transcript, in an ARCHIVED event
NAME_MAX_CHARS = 64  # a speaker's name (SPEAKER_NAMES)
CALL_ID_MAX_CHARS = 128  # core/ingestion.py's CALL_ID_PATTERN allows no more

Outcome = Literal["ok", "error", "timeout", "rejected"]
Step = Literal["transcription", "sentiment"]
Reason = Annotated[
    str | None,
    Field(
        description=(
            "Why: `explicit`/`idle`/`replay` for COMPLETED, the failure for FAILED "
            f"(at most {MESSAGE_MAX_CHARS} characters)."
        )
    ),
]


def clip(text: str | None, limit: int = MESSAGE_MAX_CHARS) -> str | None:
    """A message cut to `limit` characters, marked with an ellipsis where it was cut."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


class _Event(BaseModel):
    """What every event says: its type, its call, the call's state as of the event, and when."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str | None = Field(
        default=None,
        description="The event's id (its feed entry's): resume after it. Set by the feed.",
    )
    call_id: str = Field(max_length=CALL_ID_MAX_CHARS)
    state: CallState = Field(description="The call's state as of this event.")
    at: float | None = Field(
        default=None, description="Epoch seconds of the server's clock; stamped when appended."
    )

    def body(self) -> dict[str, Any]:
        """The event as producers hand it to the feed (no id: the feed's entry gives it)."""
        return self.model_dump(mode="json", exclude={"id"}, exclude_none=False)


class StateEvent(_Event):
    """The call moved to `state`."""

    type: Literal["state"] = "state"
    reason: Reason = None
    sentiment: Sentiment | None = Field(default=None, description="ARCHIVED: the call's.")
    transcript_excerpt: str | None = Field(
        default=None,
        max_length=EXCERPT_CHARS,
        description=f"ARCHIVED: the transcript's first {EXCERPT_CHARS} characters.",
    )

    @field_validator("reason")
    @classmethod
    def _clipped(cls, reason: str | None) -> str | None:
        return clip(reason)

    def body(self) -> dict[str, Any]:
        """As the base's, without the ARCHIVED fields unless it is (as the event always was)."""
        fields = super().body()
        for name in ("sentiment", "transcript_excerpt"):
            if fields[name] is None:
                del fields[name]
        return fields


class AttemptEvent(_Event):
    """One request to the AI ended. A `live` attempt transcribed a window while the call goes on
    (the call stays IN_PROGRESS); a final one belongs to the call's AI run (PROCESSING_AI)."""

    type: Literal["attempt"] = "attempt"
    step: Step
    attempt: int = Field(ge=1, description="Its number within its window or step.")
    outcome: Outcome
    error: str | None = Field(description=f"What went wrong (at most {MESSAGE_MAX_CHARS} chars).")
    duration_ms: float
    live: bool = Field(default=False, description="True: a live window's, while the call goes on.")
    window: str | None = Field(
        default=None,
        description='What it transcribed, e.g. "the caller\'s audio at 35.8-75.0 s"; None for '
        "a whole step.",
    )

    @field_validator("error", "window")
    @classmethod
    def _clipped(cls, text: str | None) -> str | None:
        return clip(text)


class ProgressEvent(_Event):
    """A live call's counters, at most once every EVENTS_PROGRESS_INTERVAL_S (db/lua/ingest.lua
    builds it: only the script knows the counters)."""

    type: Literal["progress"] = "progress"
    received: int
    duplicates: int
    out_of_order: int
    missing: int
    data_bytes: int
    last_packet_at: float


class SegmentEvent(_Event):
    """A segment of the call's audio is stored: its recording has grown."""

    type: Literal["segment"] = "segment"
    segment: int = Field(description="Its number.")
    packets: int
    seconds: float = Field(description="Of the longer track's audio; 0 for text packets.")


class Said(BaseModel):
    """One utterance as every reader gets it: the feed's `utterance` event, GET
    /v1/calls/{id}/transcript and the `call.utterance` webhook share this one shape."""

    speaker: str = Field(
        description=f"SPEAKER_NAMES' name for the track (at most {NAME_MAX_CHARS}): caller "
        "(inbound), agent (outbound) by default."
    )
    track: Track = Field(description="inbound (the caller) or outbound (the agent).")
    start_s: float = Field(description="Seconds from the start of the call's recording.")
    end_s: float
    text: str = Field(
        description=f"At most {UTTERANCE_MAX_CHARS} characters: longer speech is several "
        "utterances."
    )
    sentiment: Sentiment

    @classmethod
    def of(
        cls,
        track: int,
        start_s: float,
        end_s: float,
        text: str,
        sentiment: tuple[str, float],
        speakers: Sequence[str],
    ) -> Said:
        """An utterance as stored (its track's number, its sentiment's label and score)."""
        label, score = sentiment
        return cls(speaker=speakers[track], track=TRACKS[track], start_s=start_s, end_s=end_s,
                   text=text, sentiment=Sentiment(label=label, score=score))  # fmt: skip

    def fields(self) -> dict[str, Any]:
        """Its JSON fields, for a body that holds them with others (an event, a webhook)."""
        return self.model_dump(mode="json")


class UtteranceEvent(_Event, Said):
    """What one speaker said, as soon as its window is transcribed. Its text is at most
    UTTERANCE_MAX_CHARS: the worker tells longer speech as several utterances (core/
    conversation.py's split_long), so this cuts nothing; if a producer forgot, the event is cut
    (marked with an ellipsis) rather than sent whole or not at all, and the call's transcript
    (GET /v1/calls/{id}/transcript) has the whole text."""

    type: Literal["utterance"] = "utterance"

    @field_validator("text")
    @classmethod
    def _capped(cls, text: str) -> str:
        return clip(text, UTTERANCE_MAX_CHARS) or ""

    @field_validator("speaker")
    @classmethod
    def _named(cls, speaker: str) -> str:
        return clip(speaker, NAME_MAX_CHARS) or ""


class ResetEvent(BaseModel):
    """Not stored: the API tells a reader that events it should have had are gone. Re-read the
    calls, then carry on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["reset"] = "reset"
    reason: str


CallEvent = Annotated[
    StateEvent | AttemptEvent | ProgressEvent | SegmentEvent | UtteranceEvent,
    Field(discriminator="type"),
]
CALL_EVENT: TypeAdapter[CallEvent] = TypeAdapter(CallEvent)
CALL_EVENT_TYPES: tuple[type[_Event], ...] = (
    StateEvent,
    AttemptEvent,
    ProgressEvent,
    SegmentEvent,
    UtteranceEvent,
)


# Every message a feed reader may get: the `data:` of a Server-Sent Event, a WebSocket message.
FeedMessage = Annotated[
    StateEvent | AttemptEvent | ProgressEvent | SegmentEvent | UtteranceEvent | ResetEvent,
    Field(discriminator="type"),
]


class EventTooLarge(ValueError):
    """An event over MAX_EVENT_BYTES: its producer failed to cap a text (a bug)."""


def encode(body: Any, at: float) -> bytes:
    """An event body (a model, or a mapping the models validate) as the feed stores it, stamped
    `at` unless it says otherwise. Raises pydantic's ValidationError for a body no model
    describes, EventTooLarge for one over the bound (a feed entry id adds at most 41 bytes)."""
    fields = body.body() if isinstance(body, _Event) else dict(body)
    if fields.get("at") is None:
        fields["at"] = at
    event = CALL_EVENT.validate_python(fields)
    encoded = orjson.dumps(event.body())
    if len(encoded) > MAX_EVENT_BYTES - 64:
        raise EventTooLarge(f"a {event.type} event of {len(encoded)} bytes")
    return encoded
