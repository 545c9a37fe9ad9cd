"""A transcript as captions: every export parses with a WebVTT or SRT parser from PyPI
(webvtt-py, srt) and its cues are the call's utterances, escaped text included; `format` and
`Accept` choose the representation, and a bad one is a clear 4xx."""

from __future__ import annotations

import html
import io
from typing import Any

import pytest
import srt
import webvtt
from httpx import AsyncClient

from core.captions import Cue, to_srt, to_webvtt

# What the call says: markup, an ampersand, a timing arrow and a line break, said by each party.
SAID = [
    ("hello <b>thanks</b> & welcome", "inbound"),
    ("the arrow --> is not a timing line\n\nnor is this", "outbound"),
    ("tom & jerry <3 the problem is resolved great", "inbound"),
]


async def _archived_call(client: AsyncClient, run_worker: Any, call_id: str) -> None:
    for n, (words, track) in enumerate(SAID):
        packet = {"sequence": n, "timestamp": 1e9 + n, "data": words, "track": track}
        assert (await client.post(f"/v1/call/stream/{call_id}", json=packet)).status_code == 202
    assert (await client.post(f"/v1/call/complete/{call_id}")).status_code == 202
    await run_worker()


def _seconds(clock: str) -> float:
    hours, minutes, seconds = clock.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _as_said(text: str) -> str:
    return " ".join(text.split())  # line breaks become spaces in a cue


async def test_vtt_and_srt_exports_parse_and_their_cues_are_the_utterances(
    client: AsyncClient, run_worker
):
    await _archived_call(client, run_worker, "cap-1")
    utterances = (await client.get("/v1/calls/cap-1/transcript")).json()["utterances"]
    vtt = await client.get("/v1/calls/cap-1/transcript", params={"format": "vtt"})
    srt_answer = await client.get("/v1/calls/cap-1/transcript", params={"format": "srt"})

    assert vtt.status_code == 200
    assert vtt.headers["content-type"].startswith("text/vtt")
    assert srt_answer.headers["content-type"].startswith("application/x-subrip")
    assert 'filename="cap-1.vtt"' in vtt.headers["content-disposition"]
    assert len(utterances) >= 2
    cues = webvtt.from_buffer(io.StringIO(vtt.text)).captions
    assert len(cues) == len(utterances)
    for cue, said in zip(cues, utterances, strict=True):
        assert cue.voice == said["speaker"]
        assert html.unescape(cue.text) == _as_said(said["text"])
        assert _seconds(cue.start) == pytest.approx(said["start_s"], abs=0.001)
        assert _seconds(cue.end) == pytest.approx(said["end_s"], abs=0.001)
        assert "<b>" not in cue.raw_text  # the caller's markup is text, not a tag
    subtitles = list(srt.parse(srt_answer.text))
    assert len(subtitles) == len(utterances)
    for subtitle, said in zip(subtitles, utterances, strict=True):
        assert html.unescape(subtitle.content) == f"{said['speaker']}: {_as_said(said['text'])}"
        assert subtitle.start.total_seconds() == pytest.approx(said["start_s"], abs=0.001)


async def test_accept_chooses_the_format_and_the_format_parameter_wins(
    client: AsyncClient, run_worker
):
    await _archived_call(client, run_worker, "cap-2")
    url = "/v1/calls/cap-2/transcript"

    as_vtt = await client.get(url, headers={"accept": "text/vtt"})
    as_srt = await client.get(url, headers={"accept": "text/html;q=0.9, application/x-subrip"})
    browser = await client.get(url, headers={"accept": "text/html,*/*;q=0.8"})
    format_wins = await client.get(url, params={"format": "json"}, headers={"accept": "text/vtt"})

    assert as_vtt.text.startswith("WEBVTT")
    assert as_srt.headers["content-type"].startswith("application/x-subrip")
    assert browser.json()["call_id"] == "cap-2"
    assert format_wins.json()["call_id"] == "cap-2"


async def test_an_unknown_format_or_an_accept_of_nothing_offered_is_a_clear_4xx(
    client: AsyncClient, run_worker
):
    await _archived_call(client, run_worker, "cap-3")
    url = "/v1/calls/cap-3/transcript"

    bad_format = await client.get(url, params={"format": "docx"})
    refused = await client.get(url, headers={"accept": "image/png, text/vtt;q=0"})
    unknown = await client.get("/v1/calls/nobody/transcript", params={"format": "vtt"})

    assert bad_format.status_code == 422
    assert bad_format.headers["content-type"] == "application/problem+json"
    assert refused.status_code == 406
    assert refused.json()["code"] == "not_acceptable"
    assert unknown.status_code == 404


def test_a_call_with_no_utterances_exports_valid_empty_captions():
    assert list(webvtt.from_buffer(io.StringIO(to_webvtt([]))).captions) == []
    assert list(srt.parse(to_srt([]))) == []


def test_odd_cue_text_and_speaker_names_stay_inside_their_cue():
    odd = [
        Cue("a<gent>&", 0.0, 0.0, "ends where it starts"),
        Cue("caller", 3725.5, 3726.25, "-->\r\n00:00:01.000 --> 00:00:02.000\n\nWEBVTT"),
        Cue("caller", 5.0, 6.0, "   "),  # nothing said: no cue
    ]
    cues = webvtt.from_buffer(io.StringIO(to_webvtt(odd))).captions
    subtitles = list(srt.parse(to_srt(odd)))

    assert len(cues) == len(subtitles) == 2
    assert html.unescape(cues[0].voice or "") == "a<gent>&"
    assert (cues[0].start, cues[0].end) == ("00:00:00.000", "00:00:00.001")
    assert cues[1].start == "01:02:05.500"
    assert html.unescape(cues[1].text) == "--> 00:00:01.000 --> 00:00:02.000 WEBVTT"
    assert subtitles[1].start.total_seconds() == 3725.5
