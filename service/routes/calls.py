"""The supervisor's view: one call's status, the list of calls, and dead-letter replay."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import AwareDatetime

from core.conversation import speaker_names
from core.errors import CallNotFailed, CallNotFound
from db import calls
from db.search import UtteranceFilter
from db.states import CallState
from service.conditional import (
    CONDITIONAL_RESPONSES,
    MAX_WAIT_S,
    IfNoneMatch,
    IfNoneMatchHeader,
    answer,
    etag_of,
    parse_if_none_match,
    render,
    wait_for_change,
    woken_by,
)
from service.deps import CallId, ResourcesDep, SessionDep
from service.feed import EventFilter
from service.gate import actor_of
from service.resources import ApiResources
from service.schemas import (
    INVALID_REQUEST,
    AttemptOut,
    CallHistory,
    CallPage,
    CallSearchPage,
    CallStatus,
    CompleteResponse,
    TransitionOut,
    problem_response,
)
from service.search import MAX_QUERY_CHARS, search_calls, search_words
from service.views import TimeRange, call_status, list_calls, refuse_erased, retained

router = APIRouter(prefix="/v1/calls", tags=["calls"])


Wait = Annotated[
    float | None,
    Query(
        ge=0,
        le=MAX_WAIT_S,
        allow_inf_nan=False,
        description="Hold the request up to this many seconds while the answer would be `304` "
        "(it names the If-None-Match ETag; without If-None-Match, it is the answer when the "
        "request arrived): `200` with the new body as soon as the call changes, `304` if it "
        "has not by then. `If-None-Match: *` is always `304`.",
    ),
]


@router.get(
    "/{call_id}",
    response_model=CallStatus,
    responses={
        **CONDITIONAL_RESPONSES,
        404: problem_response("Unknown call."),
        **INVALID_REQUEST,
    },
    summary="Status of one call (conditional; long polling with `wait`)",
)
async def get_call(
    call_id: CallId,
    res: ResourcesDep,
    request: Request,
    if_none_match: IfNoneMatchHeader = None,
    wait: Wait = None,
) -> Response:
    condition = parse_if_none_match(if_none_match)
    body = await status_body(res, call_id)
    if wait is not None:
        # Without If-None-Match the client is taken to have the answer of this moment.
        condition = condition or IfNoneMatch(any=False, tags=frozenset({etag_of(body)}))
        async with (
            res.feed.subscribe(EventFilter(call_id=call_id)) as events,
            woken_by(events) as changed,
        ):
            body = await wait_for_change(
                body,
                condition,
                wait,
                lambda: status_body(res, call_id),
                request.is_disconnected,
                changed,
            )
    return answer(body, condition)


async def status_body(res: ApiResources, call_id: str) -> bytes:
    """The answer's body (this route's, and service/status_path.py's): one read of the call, one
    statement on the reader's pool (no transaction, no pre-ping): a waiting request holds no
    PostgreSQL connection between its reads."""
    found = await call_status(res.reads, res.live, call_id, res.settings.missing_list_cap)
    if found is None:
        raise CallNotFound(f"call {call_id} is unknown")
    return render(retained(found, res.settings))


@router.get(
    "/{call_id}/history",
    response_model=CallHistory,
    responses={
        404: problem_response("Not (yet) in PostgreSQL, or erased (`call_erased`)."),
        **INVALID_REQUEST,
    },
    summary="Every state transition and AI attempt of a flushed call",
)
async def get_history(call_id: CallId, session: SessionDep) -> CallHistory:
    await refuse_erased(session, call_id)
    transitions, attempts = await calls.history(session, call_id)
    if not transitions:
        raise CallNotFound(f"call {call_id} has no history in PostgreSQL (unknown or still live)")
    return CallHistory(
        call_id=call_id,
        transitions=[TransitionOut.model_validate(t) for t in transitions],
        attempts=[AttemptOut.model_validate(a) for a in attempts],
    )


Sentiment = Literal["positive", "neutral", "negative"]


@router.get(
    "",
    response_model=CallPage | CallSearchPage,
    responses={**CONDITIONAL_RESPONSES, **INVALID_REQUEST},
    summary="Calls, newest first (keyset-paginated; conditional); search their transcripts",
)
async def get_calls(
    res: ResourcesDep,
    session: SessionDep,
    state: Annotated[CallState | None, Query(description="Only calls in this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Page size.")] = 50,
    cursor: Annotated[
        str | None,
        Query(pattern=r"^[A-Za-z0-9_-]+$", description="`next_cursor` of the previous page."),
    ] = None,
    since: Annotated[
        AwareDatetime | None, Query(description="Only calls created at or after this time.")
    ] = None,
    until: Annotated[
        AwareDatetime | None, Query(description="Only calls created before this time.")
    ] = None,
    q: Annotated[
        str | None,
        Query(
            max_length=MAX_QUERY_CHARS,
            description="Words said in the call (full-text search of every stored utterance, "
            'web search syntax: `"exact phrase"`, `or`, `-word`): only calls with a matching '
            "utterance, each with its best `matches`. Any text is a valid search.",
        ),
    ] = None,
    speaker: Annotated[
        str | None,
        Query(
            description="With `q` (or alone): only utterances of this speaker "
            "(SPEAKER_NAMES: `caller`, `agent`)."
        ),
    ] = None,
    sentiment: Annotated[
        Sentiment | None,
        Query(description="With `q` (or alone): only utterances of this sentiment."),
    ] = None,
    if_none_match: IfNoneMatchHeader = None,
) -> Response:
    created = TimeRange(since, until)
    words = search_words(q)
    if words is None and speaker is None and sentiment is None:
        missing_cap = res.settings.missing_list_cap
        page = await list_calls(session, res.live, state, cursor, limit, missing_cap, created)
        page.items = [retained(c, res.settings) for c in page.items]
        return answer(render(page), parse_if_none_match(if_none_match))
    names = speaker_names(res.settings.speaker_names)
    wanted = UtteranceFilter(words, track_of(names, speaker), sentiment)
    found = await search_calls(session, names, wanted, state, created, cursor, limit, res.settings)
    return answer(render(found), parse_if_none_match(if_none_match))


def track_of(names: dict[int, str], speaker: str | None) -> int | None:
    if speaker is None:
        return None
    for track, name in names.items():
        if name == speaker:
            return track
    problem = {
        "loc": ("query", "speaker"),
        "msg": f"speaker must be one of {', '.join(names.values())}",
        "type": "value_error",
    }
    raise RequestValidationError([problem])


@router.post(
    "/{call_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=CompleteResponse,
    responses={
        404: problem_response("Unknown call."),
        409: problem_response("The call is not FAILED."),
        **INVALID_REQUEST,
    },
    summary="Replay a FAILED call (dead letter)",
)
async def retry_call(
    call_id: CallId, res: ResourcesDep, session: SessionDep, request: Request
) -> CompleteResponse:
    """FAILED -> COMPLETED with a fresh attempt budget, then re-enqueued; exactly once."""
    await refuse_erased(session, call_id)
    await session.commit()  # the replay's transaction starts afresh
    async with session.begin():
        replayed = await calls.replay_failed(session, call_id)
        current = None if replayed else await calls.get_call(session, call_id)
    if not replayed:
        if current is None:
            raise CallNotFound(f"call {call_id} is unknown")
        raise CallNotFailed(f"call {call_id} is {current.state}; only FAILED calls can be retried")
    await res.ingestion.requeue(call_id, actor=actor_of(request.scope))
    return CompleteResponse(call_id=call_id, state=CallState.COMPLETED.value)
