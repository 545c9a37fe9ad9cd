"""A call's transcript as a conversation: GET /v1/calls/{call_id}/transcript, its utterances by
speaker with their times and sentiments, live while the call goes on (the windows transcribed
so far), and once ARCHIVED the call's figures (per speaker, silence, overlap); or the same
utterances as captions (WebVTT, SRT: core/captions.py), by `format` or by `Accept`."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Response
from pydantic import BaseModel, Field

from core import captions
from core.errors import CallNotFound
from db import transcripts
from db.feed_events import Said
from db.record import Conversation, Sentiment
from db.states import CallState
from service.deps import CallId, ResourcesDep, SessionDep
from service.negotiation import choose
from service.schemas import INVALID_REQUEST, problem_response
from service.views import call_status

router = APIRouter(prefix="/v1/calls", tags=["calls"])


class TranscriptOut(BaseModel):
    call_id: str
    state: CallState
    transcript: str | None = Field(description="The utterances joined, by time (once stored).")
    sentiment: Sentiment | None = Field(description="The whole call's (the AI's), once known.")
    utterances: list[Said] = Field(description="By start time; a live call's so far.")
    conversation: Conversation | None = Field(description="Per speaker, silence, overlap.")


JSON = "application/json"
# What `format` names, by media type; JSON first: the answer without a format or an Accept.
FORMATS: dict[str, Literal["json", "vtt", "srt"]] = {
    JSON: "json",
    captions.MEDIA_TYPES["vtt"]: "vtt",
    captions.MEDIA_TYPES["srt"]: "srt",
}
TranscriptFormat = Annotated[
    Literal["json", "vtt", "srt"] | None,
    Query(
        alias="format",
        description="`json` (the default), `vtt` (WebVTT, `text/vtt`: one cue per utterance, "
        "the speaker as a voice span) or `srt` (`application/x-subrip`). Without it, `Accept` "
        "chooses.",
    ),
]
_CAPTIONS = {
    media: {"schema": {"type": "string"}} for media, name in FORMATS.items() if name != "json"
}


@router.get(
    "/{call_id}/transcript",
    response_model=TranscriptOut,
    responses={
        200: {"content": _CAPTIONS, "description": "The transcript, in the format asked for."},
        404: problem_response("Unknown call."),
        406: problem_response("`Accept` names none of JSON, WebVTT, SRT (and no `format`)."),
        **INVALID_REQUEST,
    },
    summary="The call's transcript: utterances by speaker, with times and sentiments",
)
async def get_transcript(
    call_id: CallId,
    res: ResourcesDep,
    session: SessionDep,
    fmt: TranscriptFormat = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response | TranscriptOut:
    chosen = fmt or FORMATS[choose(accept, list(FORMATS))]
    found = await _transcript(call_id, res, session)
    if chosen == "json":
        return found
    cues = [captions.Cue(u.speaker, u.start_s, u.end_s, u.text) for u in found.utterances]
    return Response(
        captions.render(chosen, cues),
        media_type=captions.MEDIA_TYPES[chosen],
        headers={"Content-Disposition": f'attachment; filename="{call_id}.{chosen}"'},
    )


async def _transcript(call_id: str, res: ResourcesDep, session: SessionDep) -> TranscriptOut:
    status = await call_status(session, res.live, call_id, 0)
    if status is None:
        raise CallNotFound(f"call {call_id} is unknown")
    names = res.settings.speaker_names
    said = await transcripts.utterances(session, call_id)
    return TranscriptOut(
        call_id=call_id,
        state=status.state,
        transcript=status.transcript,
        sentiment=status.sentiment,
        utterances=[Said.of(u.track, u.start_s, u.end_s, u.text, u.sentiment, names) for u in said],
        conversation=status.conversation,
    )
