"""Request and response models: the wire contract, documented field by field in /docs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from core.errors import MAX_PROBLEMS, PROBLEM_JSON
from core.ingestion import MAX_SEQUENCE
from db.packets import Track
from db.record import CallRecord, Sentiment

# The call record is defined once (db/record.py); the API answers it as it is.
CallStatus = CallRecord
SentimentOut = Sentiment


def _integral(value: object) -> object:
    """JSON Schema counts 7.0 as an integer, so do we; 7.5, "7" and true stay refused."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Sequence = Annotated[
    int,
    Field(strict=True, ge=0, le=MAX_SEQUENCE, description="Packet number within the call, >= 0."),
    BeforeValidator(_integral),
]


def _storable_text(value: str) -> str:
    # JSON may escape a lone surrogate ("\ud800") or a NUL ("\u0000"): neither can be stored
    # as PostgreSQL text, so a call holding one could never be archived. Refused at the door.
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("data must be valid Unicode text (it holds a lone surrogate)") from None
    if "\x00" in value:
        raise ValueError("data must not hold a NUL character (\\u0000)")
    return value


class PacketIn(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sequence: Sequence
    data: Annotated[
        str,
        Field(strict=True, description="Audio metadata (or payload) of the packet, as text."),
        AfterValidator(_storable_text),
    ]
    timestamp: Annotated[
        float,
        Field(strict=True, allow_inf_nan=False, description="Sender's timestamp (finite)."),
    ]
    track: Annotated[
        Track,
        Field(
            description="Whose audio: `inbound` (the caller, the default) or `outbound` (the "
            "agent). Each track has its own sequences, gaps and duplicates."
        ),
    ] = Track.INBOUND


class BatchIn(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    packets: Annotated[list[PacketIn], Field(min_length=1, description="Packets of one call.")]


class PacketWarning(BaseModel):
    type: Literal["out_of_order", "gap", "duplicate"] = Field(
        description="What was detected about this packet."
    )
    message: str
    missing_from: int | None = Field(None, description="First missing sequence of a gap.")
    missing_to: int | None = Field(None, description="Last missing sequence of a gap.")


class PacketAccepted(BaseModel):
    call_id: str
    sequence: int
    duplicate: bool = Field(description="True if this sequence was already stored (stored once).")
    warnings: list[PacketWarning]


class BatchAccepted(BaseModel):
    call_id: str
    accepted: int = Field(description="New packets stored.")
    duplicates: int
    results: list[PacketAccepted]


class CompleteResponse(BaseModel):
    call_id: str
    state: str


class CallPage(BaseModel):
    items: list[CallStatus]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page.")


class UtteranceMatch(BaseModel):
    speaker: str = Field(description="The track's speaker (SPEAKER_NAMES: caller, agent).")
    track: Track
    start_s: float = Field(description="Seconds from the start of the call's recording.")
    end_s: float
    text: str = Field(description="The utterance, as stored (no markup).")
    offsets: list[tuple[int, int]] = Field(
        description="Where `q` matches in `text`: [start, end) of each matching word, in "
        "characters (Unicode code points); empty without `q`."
    )


class CallFound(CallRecord):
    matches: list[UtteranceMatch] = Field(
        description="The call's best few utterances that match (`q`, `speaker`, `sentiment`), "
        "in time order."
    )


class CallSearchPage(BaseModel):
    """`GET /v1/calls` with `q`, `speaker` or `sentiment`: the flushed calls that match."""

    items: list[CallFound]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page.")


class TransitionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    from_state: str | None
    to_state: str
    at: datetime
    reason: str


class AttemptOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    step: str = Field(description="transcription or sentiment")
    generation: int = Field(description="0 for the first run, +1 for each dead-letter replay.")
    attempt: int
    outcome: str = Field(description="ok, error (transient), timeout or rejected (permanent).")
    error: str | None
    started_at: datetime
    duration_ms: float
    window: str | None = Field(
        description="the unit of work the attempt is for, whose retry budget it spends: a "
        'transcription window ("the caller\'s audio at 35.8-75.0 s"), or null for sentiment'
    )
    live: bool = Field(
        description="made while the call went on (a live window), not by its final run; a live "
        "window's failures spend nothing of the final run's budgets"
    )


class CallHistory(BaseModel):
    call_id: str
    transitions: list[TransitionOut]
    attempts: list[AttemptOut]


class Problem(BaseModel):
    loc: list[str | int] = Field(description="Where: path, query or body, then the field.")
    msg: str
    type: str


class ErrorBody(BaseModel):
    """RFC 9457 problem details (`application/problem+json`), with our stable `code`."""

    type: str = Field(description="about:blank: the status and `code` say it all.")
    title: str = Field(description="The HTTP status phrase.")
    status: int
    detail: str = Field(description="What was wrong, for a person.")
    code: str = Field(description="What was wrong, for a program: stable across versions.")


class InvalidRequestBody(ErrorBody):
    errors: list[Problem] = Field(description=f"The first {MAX_PROBLEMS} problems found.")


def problem_response(description: str, model: type[ErrorBody] = ErrorBody) -> dict[str, Any]:
    """An error answer as /docs shows it: problem details under their own media type."""
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"model": model, "description": description, "content": {PROBLEM_JSON: {"schema": ref}}}


# What the gate (service/gate.py) may answer on any route, before the route itself is reached.
GATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: problem_response("No API key, or one that is not valid (keys are on)."),
    403: problem_response(
        "The key's role may not do this; or no keys, and not on loopback or a cross-site write."
    ),
    413: problem_response("The body is larger than MAX_BODY_BYTES; nothing stored."),
    421: problem_response("No keys configured, and the Host does not name this machine."),
    429: problem_response("The key sent more than its rate; retry after Retry-After."),
}

# Every route documents its 422 with the body our handler really sends.
INVALID_REQUEST: dict[int | str, dict[str, Any]] = {
    422: problem_response("Malformed request; nothing stored.", InvalidRequestBody)
}


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
