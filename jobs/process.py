"""process_call: flush a completed call to PostgreSQL, run transcription then sentiment, and end
in ARCHIVED or FAILED. Idempotent: delivery is at least once, so every step checks where the call
is, writes with upserts, and fences its writes with the epoch it claimed.

A short call whose AI answers first time costs five PostgreSQL statements: its segment, its row
(which also claims the call), its window with its utterances, the transcript, and the final
write (sentiment, attempts, transition); a run that stored the call's every segment itself reads
nothing back (jobs/flushing.py's Held.heads, jobs/segments.py's none_trimmed).
Failed attempts are written as they happen, so a budget spent is spent even if the worker dies.

A call whose data PostgreSQL refuses (jobs/flushing.py's `refusing`: a NUL in text, a number out
of its column's range) would be refused again on every re-run, so it ends FAILED at once with the
reason, and its keys are released like any finished call's. Outages are not refusals: the job is
retried for them (jobs/worker.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core import metrics
from core.conversation import Utterance, conversation, flat_text, speaker_names
from core.logs import about
from core.recording import NotAudio, load_recording
from db import calls, transcripts, worker_writes
from db.events import archived_extras, attempt_event, state_event
from db.record import Conversation
from db.segments import SegmentReader
from db.states import TERMINAL_STATES, CallState
from db.worker_writes import AttemptRecord, Claim, budget_key
from jobs.ai import Sentiment
from jobs.attempts import CallDeadline, LeaseLost, StepExhausted, policy_of, run_step
from jobs.flushing import Held, Refused, fail_held, flush_call, refusing
from jobs.resources import WorkerResources
from jobs.transcription import transcribe_ready, utterance_scorer, window_transcriber

log = logging.getLogger(__name__)


class UnknownCall(LookupError):
    """Neither Redis nor PostgreSQL knows the call (its data expired, or it never existed)."""


async def process_call(res: WorkerResources, call_id: str) -> str:
    """Bring one completed call to a terminal state; returns the state it ends in."""
    try:
        async with res.lease_keeper.hold(call_id, caller_takes=True) as holder:
            try:
                with res.stages.timing("flush"), metrics.FLUSH_SECONDS.time():
                    held = await flush_call(res, call_id, holder)
                if held is None:
                    settled = await release_if_settled(res, call_id)
                    if settled is None:
                        raise UnknownCall(call_id)
                    return settled.value
                announce = await _run_ai(res, held)
            except asyncio.CancelledError:
                # Shutdown or timeout: arq re-queues a cancelled job; let the next worker start.
                await asyncio.shield(res.leases.drop(call_id, holder))
                raise
    except LeaseLost:
        log.warning(
            "%s: lost the call to another worker; leaving it to them", call_id, extra=about(call_id)
        )
        return "LEASE_LOST"
    except UnknownCall:
        # Nothing to process and nothing to lose: stop the reaper from trying again and again.
        log.error(
            "%s: neither Redis nor PostgreSQL knows this call; dropping its job",
            call_id,
            extra=about(call_id),
        )
        await res.flush.release(call_id, 1, 1)
        return "UNKNOWN"
    with res.stages.timing("finish"):
        await _release(res, call_id, announce)
    res.stages.calls += 1
    return str(announce[-1]["state"])


async def release_if_settled(res: WorkerResources, call_id: str) -> CallState | None:
    """The call's state in PostgreSQL (None if it has no row). A call that reached a terminal
    state gets its Redis keys released, in case its worker died between commit and release."""
    async with res.sessions() as session:
        call = await calls.get_call(session, call_id)
    if call is None:
        return None
    state = CallState(call.state)
    if state in TERMINAL_STATES:
        # Its final event may not be out (it goes with the release): publish it (again).
        sentiment = None
        if call.sentiment_label is not None and call.sentiment_score is not None:
            sentiment = (call.sentiment_label, call.sentiment_score)
        final = _final_event(call_id, state, call.last_error, call.transcript, sentiment)
        await _release(res, call_id, [final])
    return state


def _final_event(
    call_id: str,
    state: CallState,
    reason: str | None,
    transcript: str | None = None,
    sentiment: tuple[str, float] | None = None,
) -> dict[str, Any]:
    extras = archived_extras(transcript, sentiment) if state is CallState.ARCHIVED else {}
    return state_event(call_id, state.value, reason, **extras)


async def _release(
    res: WorkerResources, call_id: str, announce: Sequence[Mapping[str, Any]]
) -> None:
    """Let the call's keys expire, publishing its last events (the final state's) with them."""
    s = res.settings
    await res.flush.release(call_id, s.key_retention_s, s.completed_marker_retention_s, announce)


@dataclass
class _Journal:
    """What the run has to write: successful attempts wait for the next write; a failed one is
    written at once, so its budget stays spent, and so is a transcript."""

    res: WorkerResources
    claim: Claim
    attempts: list[AttemptRecord] = field(default_factory=list)
    transcript: str | None = None  # known but not yet stored
    events: list[dict[str, Any]] = field(default_factory=list)  # published after the next write
    told: list[dict[str, Any]] = field(default_factory=list)  # stored: published with the next
    final: dict[str, Any] | None = None  # the final state's event, published with the release
    spoken: str | None = None  # the transcript, for the final event
    # Failed attempts of this run, by unit of work (worker_writes.budget_key).
    failed: dict[str, int] = field(default_factory=dict)

    async def record(self, attempt: AttemptRecord) -> bool:
        self.attempts.append(attempt)
        self.events.append(attempt_event(self.claim.call_id, CallState.PROCESSING_AI, attempt))
        if attempt.outcome == "ok":
            return True
        self.failed[attempt.budget] = self.failed.get(attempt.budget, 0) + 1
        return await self.save()

    def spent(self, unit: str) -> int:
        """The unit's failed attempts in this generation's final runs (its budget spent)."""
        return self.claim.failed.get(unit, 0) + self.failed.get(unit, 0)

    async def save(self) -> bool:
        """Write what waits, then tell the feed; False if another worker took the call since.
        What waits is taken before the write: the two tracks' windows record at once, and an
        attempt recorded during the write waits for the next one (written once, not twice)."""
        attempts, transcript, events, told = self.attempts, self.transcript, self.events, self.told
        self.attempts, self.transcript, self.events, self.told = [], None, [], []
        # One statement on a connection of the pool's for it alone (db/direct.py).
        kept = await worker_writes.write_progress(
            self.res.autocommit, self.claim, attempts, transcript
        )
        await self.res.events.publish(*told, *(events if kept else []))
        return kept

    async def finish(self, target: CallState, reason: str, **results: object) -> None:
        with self.res.stages.timing("finish"):
            await self._finish(target, reason, **results)

    async def _finish(self, target: CallState, reason: str, **results: object) -> None:
        finished = await worker_writes.finish(
            self.res.autocommit,
            self.claim,
            target,
            reason,
            self.attempts,
            transcript=self.transcript,
            webhooks=self.res.webhooks,
            **results,  # type: ignore[arg-type]
        )
        if not finished:
            raise LeaseLost(self.claim.call_id)
        sentiment = results.get("sentiment")
        final = _final_event(
            self.claim.call_id,
            target,
            reason if target is CallState.FAILED else None,
            self.spoken,
            sentiment if isinstance(sentiment, tuple) else None,
        )
        self.final = final

    def announcements(self) -> list[dict[str, Any]]:
        """What the release publishes: utterances and attempts not yet told, then the final
        state."""
        return [*self.told, *self.events, *([] if self.final is None else [self.final])]


async def _run_ai(res: WorkerResources, held: Held) -> list[dict[str, Any]]:
    """The run's last events, the final state's last."""
    try:
        return await refusing("a write of the call's AI results", _ai_steps(res, held))
    except Refused as refused:
        reason = str(refused)
    await fail_held(res, held.claim, reason)
    return [_final_event(held.claim.call_id, CallState.FAILED, reason)]


async def _ai_steps(res: WorkerResources, held: Held) -> list[dict[str, Any]]:
    claim, call_id = held.claim, held.claim.call_id
    policy = policy_of(res.settings)
    # The call's AI work in this run is bounded by time (grown by each window's audio); each
    # window and the sentiment step has a budget of attempts of its own.
    deadline = CallDeadline(policy.budget_s)
    journal = _Journal(res, claim)
    transcribe = window_transcriber(
        res, call_id, journal.record, live=False, spent=journal.spent, deadline=deadline
    )

    async def sentiment(text: str) -> Sentiment:
        with res.stages.timing("ai"):
            return await run_step(
                "sentiment",
                lambda: res.ai.analyse_sentiment(call_id, text),
                policy,
                journal.record,
                journal.spent(budget_key("sentiment", None)),
                deadline=deadline.at,
                breaker=res.breaker,
                limiter=res.ai_limiter,
            )

    metadata = claim.metadata
    seconds = None
    try:
        transcript = claim.transcript
        if transcript is None:
            # The windows a live transcription left (all of them, for a short call), then the
            # transcript: every window's utterances, by time (known without a read when this
            # run transcribed the call whole).
            ready = await transcribe_ready(
                res, call_id, metadata, transcribe, final=True, state=CallState.PROCESSING_AI,
                heads=held.heads,
            )  # fmt: skip
            journal.told += ready.told  # the utterances stored, told with the transcript
            said = ready.said if ready.said is not None else await _utterances(res, call_id)
            seconds = ready.seconds
            transcript = flat_text(said)
            # Kept at once: a worker that dies during sentiment must not cost a transcription.
            journal.transcript = transcript
            if not await journal.save():
                raise LeaseLost(call_id)
        else:
            said = None  # an earlier run kept the transcript: the figures read the utterances
        journal.spoken = transcript
        scored = await sentiment(transcript)
    except StepExhausted as exc:
        await journal.finish(CallState.FAILED, str(exc), last_error=str(exc))
        return journal.announcements()
    await journal.finish(
        CallState.ARCHIVED,
        "transcription and sentiment stored",
        sentiment=(scored.label, scored.score),
        conversation=(await _conversation(res, call_id, metadata, said, seconds)).model_dump(),
    )
    return journal.announcements()


async def _utterances(res: WorkerResources, call_id: str) -> list[Utterance]:
    async with res.reads() as session:
        rows = await transcripts.utterances(session, call_id)
    return [
        Utterance(
            r.track,
            r.start_s,
            r.end_s,
            r.text,
            Sentiment(label=r.sentiment_label, score=r.sentiment_score),
        )
        for r in rows
    ]


async def _conversation(
    res: WorkerResources,
    call_id: str,
    metadata: dict[str, Any] | None,
    said: list[Utterance] | None,
    seconds: float | None,
) -> Conversation:
    """The call's figures from its utterances (`said`, if this run knows them already) and its
    recording's length (`seconds`, likewise): per speaker, silence, overlap."""
    if seconds is None:
        try:
            reader = SegmentReader(res.reads, call_id, res.objects)
            seconds = (await load_recording(reader, metadata, res.settings)).seconds
        except NotAudio:
            seconds = 0.0  # text packets: no time to speak of
    names = speaker_names(res.settings.speaker_names)
    if said is None:
        said = await _utterances(res, call_id)
    # Off the event loop: it scores each speaker's words (VADER is CPU work: invariant 14).
    return await asyncio.to_thread(
        conversation, said, seconds, names, utterance_scorer(res.settings)
    )
