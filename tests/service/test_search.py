"""Search across transcripts: GET /v1/calls?q= finds the calls whose stored utterances say the
words (PostgreSQL full text, web search syntax), with each call's matches and where the words lie
in them; it combines with the list's filters and keyset paging, and with `speaker` and
`sentiment`; no input makes it fail."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import pytest
from httpx import AsyncClient

from jobs.ai_local import LocalAI
from jobs.resources import make_resources
from settings import Settings
from simulate.speech import frames
from tests.conftest import drain_queue

RECORDINGS = resources.files("simulate") / "recordings"

CALLS = {
    "s-cancel": [
        ("I want to cancel my contract", "inbound"),
        ("let me process your refund today", "outbound"),
    ],
    "s-hello": [("hello there", "inbound"), ("goodbye and thanks", "outbound")],
}


async def said(client: AsyncClient, call_id: str, lines: list[tuple[str, str]]) -> None:
    for n, (words, track) in enumerate(lines):
        packet = {"sequence": n, "timestamp": 1e9 + n, "data": words, "track": track}
        assert (await client.post(f"/v1/call/stream/{call_id}", json=packet)).status_code == 202
    assert (await client.post(f"/v1/call/complete/{call_id}")).status_code == 202


async def found(client: AsyncClient, **params: Any) -> list[dict[str, Any]]:
    answer = await client.get("/v1/calls", params=params)
    assert answer.status_code == 200, answer.text
    return list(answer.json()["items"])


async def test_search_finds_the_agents_phrase_where_it_was_said_and_never_a_phrase_not_said(
    client: AsyncClient, run_worker
):
    for call_id, lines in CALLS.items():
        await said(client, call_id, lines)
    await run_worker()

    (refund,) = await found(client, q="refund")
    (match,) = refund["matches"]
    phrase = await found(client, q='"cancel my contract"')
    either = await found(client, q="refund or goodbye")
    not_said = await found(client, q="banana smoothie")
    excluded = await found(client, q="refund -today")
    by_caller = await found(client, q="refund", speaker="caller")
    by_agent = await found(client, q="refund", speaker="agent")
    stemmed = await found(client, q="refunds")

    assert refund["call_id"] == "s-cancel"
    assert refund["state"] == "ARCHIVED"
    assert (match["speaker"], match["track"]) == ("agent", "outbound")
    assert match["text"] == "let me process your refund today"
    assert [match["text"][a:b] for a, b in match["offsets"]] == ["refund"]
    assert match["end_s"] >= match["start_s"]
    assert [c["call_id"] for c in phrase] == ["s-cancel"]
    assert phrase[0]["matches"][0]["speaker"] == "caller"
    assert {c["call_id"] for c in either} == {"s-cancel", "s-hello"}
    assert not_said == []
    assert excluded == []
    assert by_caller == []
    assert [c["call_id"] for c in by_agent] == ["s-cancel"]
    assert [c["call_id"] for c in stemmed] == ["s-cancel"]


async def test_search_pages_newest_first_and_combines_with_state_time_and_filters(
    client: AsyncClient, run_worker
):
    for n in range(5):
        await said(client, f"s-{n}", [(f"call {n} about a refund", "inbound")])
    await said(client, "s-other", [("nothing to see", "inbound")])
    await run_worker()
    await said(client, "s-live", [("a refund while still talking", "inbound")])  # not flushed

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"q": "refund", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/v1/calls", params=params)).json()
        seen += [c["call_id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    everything = await found(client, limit=50)
    newest_first = [c["call_id"] for c in everything if c["call_id"] in seen]
    now = datetime.now(UTC)

    assert sorted(seen) == [f"s-{n}" for n in range(5)]
    assert seen == newest_first
    assert await found(client, q="refund", state="FAILED") == []
    assert len(await found(client, q="refund", state="ARCHIVED")) == 5
    assert await found(client, q="refund", since=(now + timedelta(hours=1)).isoformat()) == []
    assert await found(client, q="refund", until=(now - timedelta(days=1)).isoformat()) == []
    assert len(await found(client, q="refund", since=(now - timedelta(days=1)).isoformat())) == 5
    # The time range filters the plain list too.
    assert await found(client, until=(now - timedelta(days=1)).isoformat()) == []
    # Filters alone: every call with an utterance of that speaker (or sentiment).
    assert len(await found(client, speaker="caller")) == 6
    assert await found(client, speaker="agent") == []
    positive = await found(client, sentiment="positive")
    assert all(m["text"] for c in positive for m in c["matches"])


ODD = [
    "'", '"', '"""', "-", "--", "or", "OR OR", "!", "&|!():*", "\\", "%", "_", "<->", "(((",
    "*", ":*", "a & b", "'; DROP TABLE call; --", "the", "   ", "\x00", "refund\x00today",
    "ünïcödé", "退款", "🙂", "\u202eevil", "-refund", '"unterminated', "a" * 1000,
    "x:*A", "!!!!refund", "refund <2> today", "a|b", "NOT", "-", "\t\n",
]  # fmt: skip


@pytest.mark.parametrize("q", ODD, ids=range(len(ODD)))
async def test_no_text_makes_the_search_fail(client: AsyncClient, q: str):
    answer = await client.get("/v1/calls", params={"q": q, "speaker": "caller"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["items"] == []


async def test_bad_search_parameters_are_a_clear_422(client: AsyncClient):
    for params in (
        {"q": "a" * 1001},
        {"q": "refund", "speaker": "robot"},
        {"q": "refund", "sentiment": "ecstatic"},
        {"q": "refund", "since": "yesterday"},
        {"q": "refund", "until": "2026-01-01T00:00:00"},  # no time zone
        {"q": "refund", "cursor": "bm90IGEgY3Vyc29y"},
    ):
        answer = await client.get("/v1/calls", params=params)
        assert answer.status_code == 422, params
        assert answer.headers["content-type"] == "application/problem+json"


async def test_search_finds_what_the_agent_said_in_a_two_party_call_of_real_speech(
    client: AsyncClient, settings: Settings
):
    """Recorded speech (simulate/recordings, spoken by espeak-ng) heard by the local Whisper
    model: the search finds the agent's words in the agent's utterance, and not the caller's."""
    caller = frames((RECORDINGS / "negative-1.ulaw").read_bytes())  # "...the broken router"
    agent = frames((RECORDINGS / "neutral-2.ulaw").read_bytes())  # "call me back on tuesday..."
    for track, audio in (("inbound", caller), ("outbound", agent)):
        packets = [
            {"sequence": n, "timestamp": 1e9 + n * 0.02, "track": track,
             "data": base64.b64encode(frame).decode()}
            for n, frame in enumerate(audio)
        ]  # fmt: skip
        for start in range(0, len(packets), 200):
            batch = {"packets": packets[start : start + 200]}
            answer = await client.post("/v1/call/stream/spoken/batch", json=batch)
            assert answer.status_code == 202
    assert (await client.post("/v1/call/complete/spoken")).status_code == 202
    ai = LocalAI(processes=1)
    res = make_resources(settings.model_copy(update={"ai_attempt_timeout_s": 60.0}), ai=ai)
    try:
        await drain_queue(res)
    finally:
        await res.close()

    (tuesday,) = await found(client, q="tuesday")
    by_caller = await found(client, q="tuesday", speaker="caller")
    router = await found(client, q="router", speaker="caller")
    never = await found(client, q="refund")

    (match,) = tuesday["matches"]
    assert match["speaker"] == "agent"
    assert [match["text"][a:b].lower() for a, b in match["offsets"]] == ["tuesday"]
    assert by_caller == []
    assert [c["call_id"] for c in router] == ["spoken"]
    assert never == []
