"""The feed's events, defined once (db/feed_events.py): each type's worst case fits the bound,
a body no model describes is refused before it reaches Redis, the free texts are capped, and an
attempt says whether it is live."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from pydantic import ValidationError

from db.events import attempt_event, first_packet_payload, payload, state_event
from db.feed_events import (
    CALL_EVENT,
    CALL_ID_MAX_CHARS,
    EXCERPT_CHARS,
    MAX_EVENT_BYTES,
    MESSAGE_MAX_CHARS,
    NAME_MAX_CHARS,
    UTTERANCE_MAX_CHARS,
    AttemptEvent,
    ProgressEvent,
    SegmentEvent,
    StateEvent,
    UtteranceEvent,
)
from db.packets import Track
from db.record import Sentiment
from db.states import CallState
from db.worker_writes import AttemptRecord

# The costliest characters JSON can hold: a control character is escaped as \u00XX (6 bytes),
# an emoji is 4 bytes of UTF-8.
WORST = ("\x01", "\U0001f600")
LONGEST_ID = "9" * 20 + "-" + "9" * 20  # a feed entry id
BIG = 2**53 - 1


def worst_cases(
    char: str,
) -> list[StateEvent | AttemptEvent | ProgressEvent | SegmentEvent | UtteranceEvent]:
    call_id = "c" * CALL_ID_MAX_CHARS
    common = {"call_id": call_id, "at": 1e12}
    return [
        StateEvent(
            **common,
            state=CallState.ARCHIVED,
            reason=char * 100_000,
            sentiment=Sentiment(label=char * 10, score=-0.123456789),
            transcript_excerpt=char * EXCERPT_CHARS,
        ),
        AttemptEvent(
            **common,
            state=CallState.IN_PROGRESS,
            step="transcription",
            attempt=BIG,
            outcome="timeout",
            error=char * 100_000,
            duration_ms=1.2345678901234e300,
            live=True,
            window=char * 100_000,
        ),
        ProgressEvent(
            **common,
            state=CallState.IN_PROGRESS,
            received=BIG,
            duplicates=BIG,
            out_of_order=BIG,
            missing=BIG,
            data_bytes=BIG,
            last_packet_at=1.2345678901234e300,
        ),
        SegmentEvent(
            **common, state=CallState.COMPLETED, segment=BIG, packets=BIG, seconds=1.23e300
        ),
        UtteranceEvent(
            **common,
            state=CallState.PROCESSING_AI,
            speaker=char * 100_000,
            track=Track.OUTBOUND,
            start_s=1.2345678901234e300,
            end_s=1.2345678901234e300,
            text=char * 100_000,
            sentiment=Sentiment(label=char * 10, score=-0.123456789),
        ),
    ]


@pytest.mark.parametrize("char", WORST, ids=["escaped", "four-byte"])
def test_no_event_of_any_type_can_pass_the_bound_whatever_its_texts_hold(char: str):
    for event in worst_cases(char):
        stored = payload(event.body())
        # As a reader gets it: with its id.
        wire = orjson.dumps({"id": LONGEST_ID, **orjson.loads(stored)})
        assert len(wire) <= MAX_EVENT_BYTES, (event.type, len(wire))
        assert CALL_EVENT.validate_json(stored).type == event.type


def test_long_texts_are_cut_to_their_caps_and_say_so():
    state, attempt, _, _, utterance = worst_cases("x")
    assert isinstance(state, StateEvent)
    assert isinstance(attempt, AttemptEvent)
    assert isinstance(utterance, UtteranceEvent)
    assert len(state.reason or "") == MESSAGE_MAX_CHARS
    assert (state.reason or "").endswith("…")
    assert len(attempt.error or "") == MESSAGE_MAX_CHARS
    assert len(attempt.window or "") == MESSAGE_MAX_CHARS
    assert len(utterance.text) == UTTERANCE_MAX_CHARS
    assert utterance.text.endswith("…")
    assert len(utterance.speaker) == NAME_MAX_CHARS
    short = UtteranceEvent(
        call_id="c1",
        state=CallState.IN_PROGRESS,
        speaker="caller",
        track=Track.INBOUND,
        start_s=0.0,
        end_s=1.0,
        text="y" * UTTERANCE_MAX_CHARS,
        sentiment=Sentiment(label="neutral", score=0.0),
    )
    assert short.text == "y" * UTTERANCE_MAX_CHARS  # at the cap: kept whole


@pytest.mark.parametrize(
    "body",
    [
        {"type": "gossip", "call_id": "c1", "state": "IN_PROGRESS"},  # no such type
        {"type": "state", "call_id": "c1", "state": "SLEEPING"},  # no such state
        {"type": "state", "call_id": "c1", "state": "ARCHIVED", "secret": "x"},  # unknown field
        {"type": "segment", "call_id": "c1", "state": "COMPLETED", "segment": 0},  # fields missing
        {"type": "state", "call_id": "c" * (CALL_ID_MAX_CHARS + 1), "state": "ARCHIVED"},
    ],
)
def test_a_body_no_model_describes_is_refused_before_it_is_stored(body: dict[str, object]):
    with pytest.raises(ValidationError):
        payload(body)


def test_a_state_event_keeps_its_shape_archived_fields_only_when_archived():
    assert state_event("c1", "COMPLETED", "explicit") == {
        "type": "state",
        "call_id": "c1",
        "state": "COMPLETED",
        "reason": "explicit",
        "at": None,
    }
    archived = state_event(
        "c1", "ARCHIVED", sentiment={"label": "positive", "score": 1.0}, transcript_excerpt="hi"
    )
    assert archived["sentiment"] == {"label": "positive", "score": 1.0}
    assert orjson.loads(payload(archived, 5.0))["at"] == 5.0


def record(live: bool, window: str | None) -> AttemptRecord:
    return AttemptRecord("transcription", 1, "ok", None, datetime.now(UTC), 12.5, window, live)


def test_an_attempt_says_its_window_and_whether_it_was_live():
    window = "the caller's audio at 35.8-75.0 s"
    live = attempt_event("c1", "IN_PROGRESS", record(True, window))
    final = attempt_event("c1", "PROCESSING_AI", record(False, window))
    sentiment = attempt_event("c1", "PROCESSING_AI", record(False, None))
    assert (live["live"], live["window"]) == (True, window)
    assert (final["live"], final["window"]) == (False, window)
    assert (sentiment["live"], sentiment["window"]) == (False, None)


def test_the_first_packets_event_on_the_ingest_path_is_the_one_its_model_builds():
    assert orjson.loads(first_packet_payload("c1", 7.5)) == orjson.loads(
        payload(state_event("c1", "IN_PROGRESS"), 7.5)
    )
