"""CPU work never runs on the worker's event loop (invariant 14): each utterance's sentiment (VADER
for the real providers, a few milliseconds an utterance) and the call's figures are scored in a
thread, as the local model runs in its process pool. Real Redis, PostgreSQL, arq."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from httpx import AsyncClient

from jobs import process, transcription
from jobs.ai import Sentiment, sentiment_of
from jobs.resources import make_resources
from settings import Settings
from tests.conftest import drain_queue
from tests.factories import complete, send_all, status
from tests.fakes import ScriptedAI


async def test_every_utterance_and_the_calls_figures_are_scored_off_the_event_loop(
    client: AsyncClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    loop_thread = threading.get_ident()
    scored_on: list[int] = []

    def scorer(_: Settings) -> Callable[[str], Sentiment]:
        def score(text: str) -> Sentiment:
            scored_on.append(threading.get_ident())
            return sentiment_of(text)

        return score

    # The provider's own scorer, wherever the worker asks for it.
    monkeypatch.setattr(transcription, "utterance_scorer", scorer)
    monkeypatch.setattr(process, "utterance_scorer", scorer)
    await send_all(client, "off-loop", [0, 1, 2])
    await complete(client, "off-loop")
    res = make_resources(settings, ai=ScriptedAI())
    try:
        await drain_queue(res)
    finally:
        await res.close()

    assert (await status(client, "off-loop"))["state"] == "ARCHIVED"
    assert scored_on  # the utterances, and the figures per speaker
    assert loop_thread not in scored_on
