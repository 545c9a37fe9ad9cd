"""A call's transcript as a conversation: GET /v1/calls/{call_id}/transcript, its utterances by
speaker with their times and sentiments, live while the call goes on (the windows transcribed
so far), and once ARCHIVED the call's figures (per speaker, silence, overlap)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from core.errors import CallNotFound
from db import transcripts
from db.packets import TRACKS
from db.record import Conversation, Sentiment
from db.states import CallState
from service.deps import CallId, ResourcesDep, SessionDep
from service.schemas import INVALID_REQUEST, problem_response
from service.views import call_status

router = APIRouter(prefix="/v1/calls", tags=["calls"])


class UtteranceOut(BaseModel):
    speaker: str = Field(description="The track's speaker (SPEAKER_NAMES: caller, agent).")
    track: str = Field(description="inbound (the caller) or outbound (the agent).")
    start_s: float = Field(description="Seconds from the start of the call's recording.")
    end_s: float
    text: str
    sentiment: Sentiment


class TranscriptOut(BaseModel):
    call_id: str
    state: CallState
    transcript: str | None = Field(description="The utterances joined, by time (once stored).")
    sentiment: Sentiment | None = Field(description="The whole call's (the AI's), once known.")
    utterances: list[UtteranceOut] = Field(description="By start time; a live call's so far.")
    conversation: Conversation | None = Field(description="Per speaker, silence, overlap.")


@router.get(
    "/{call_id}/transcript",
    response_model=TranscriptOut,
    responses={404: problem_response("Unknown call."), **INVALID_REQUEST},
    summary="The call's transcript: utterances by speaker, with times and sentiments",
)
async def get_transcript(call_id: CallId, res: ResourcesDep, session: SessionDep) -> TranscriptOut:
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
        utterances=[
            UtteranceOut(
                speaker=names[u.track],
                track=TRACKS[u.track].value,
                start_s=u.start_s,
                end_s=u.end_s,
                text=u.text,
                sentiment=Sentiment(label=u.sentiment_label, score=u.sentiment_score),
            )
            for u in said
        ],
        conversation=status.conversation,
    )
