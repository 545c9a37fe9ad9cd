"""AI_PROVIDER=local on real speech and the real model (faster-whisper, the bundled tiny.en): the
shipped recordings (simulate/recordings/, 8 kHz μ-law, spoken by espeak-ng) and, where espeak-ng
is installed, sentences spoken now. The model must hear far more of what was said than of the same
audio scrambled or decoded wrongly, time its segments within the audio, tell a clearly polar
call's sentiment, and run in the process pool one thread a process. Few and short: a few seconds
of audio each."""

from __future__ import annotations

import base64
import json
import os
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from importlib import resources

import numpy as np
import pytest
from httpx import AsyncClient
from websockets.asyncio.client import connect

from core.audio import TELEPHONY, AudioFormat, Samples, decode
from jobs import whisper
from jobs.ai import Sentiment, SpeechSource, Spoken
from jobs.ai_local import SEGMENT_S, LocalAI, PcmAudio
from jobs.resources import ai_concurrency, make_ai_client, make_resources
from jobs.whisper import Segment, transcribe_pcm
from service.app import create_app
from settings import Settings
from simulate.speech import frames, silence, synthesise
from tests.conftest import drain_queue, make_settings
from tests.factories import complete, packet, status
from tests.needs import speech_or_skip
from tests.serving import serving

_SHIPPED = resources.files("simulate") / "recordings"
RECORDED: dict[str, str] = {
    e["text"]: e["file"] for e in json.loads((_SHIPPED / "manifest.json").read_text())
}
HAPPY = "thank you so much, this is excellent service"
ANGRY = "this is terrible, I am very angry about the broken router"
TUESDAY = "call me back on tuesday morning"
MEDIA_FORMAT = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
# μ-law read as 16-bit linear: noise with the speech's rhythm. (Read as A-law, the other G.711,
# it stays speech that Whisper understands: no control.)
MISREAD = AudioFormat("l16", 8000)


def recorded(text: str) -> bytes:
    """The shipped recording of `text`: 8 kHz μ-law, as a PBX sends it."""
    return (_SHIPPED / RECORDED[text]).read_bytes()


def padded(text: str) -> bytes:
    """The recording in whole 20 ms frames, as a media stream sends it."""
    return b"".join(frames(recorded(text)))


def pcm(mulaw: bytes, fmt: AudioFormat = TELEPHONY) -> Samples:
    return decode(mulaw, fmt)


def shuffled(mulaw: bytes, seed: int = 9) -> bytes:
    """Every 20 ms frame there, in the wrong order."""
    cut = frames(mulaw)
    random.Random(seed).shuffle(cut)
    return b"".join(cut)


def heard(said: str, transcript: str) -> float:
    """The share of the words said (those of more than three letters: "the", "and", "i'm" come
    up in any transcript) that the transcript has."""
    said_words = Counter(w for w in re.findall(r"[a-z']+", said.lower()) if len(w) > 3)
    found = Counter(re.findall(r"[a-z']+", transcript.lower()))
    return sum((said_words & found).values()) / sum(said_words.values())


def text_of(segments: list[Segment]) -> str:
    return " ".join(s.text for s in segments)


def test_whisper_hears_the_shipped_recordings_and_not_their_scrambled_or_misread_audio():
    for text in (HAPPY, ANGRY, TUESDAY):
        clear = heard(text, text_of(transcribe_pcm(pcm(recorded(text)), 8000)))
        scrambled = heard(text, text_of(transcribe_pcm(pcm(shuffled(recorded(text))), 8000)))
        misread = heard(text, text_of(transcribe_pcm(pcm(padded(text), MISREAD), 8000)))
        assert clear >= 0.6, (text, clear)
        assert scrambled <= clear / 3, (text, scrambled)
        assert misread <= clear / 3, (text, misread)


def in_order_within(segments: list[Segment], length_s: float) -> bool:
    ends = [0.0] + [s.end_s for s in segments]
    return all(e <= s.start_s <= s.end_s <= length_s for e, s in zip(ends, segments, strict=False))


def test_segments_asked_with_words_are_cut_at_pauses_and_timed_where_the_words_were_said():
    parts = [recorded(HAPPY), silence(1500), recorded(TUESDAY)]
    tuesday_from = sum(len(p) for p in parts[:2]) / 8000
    audio = pcm(b"".join(parts))
    length_s = len(audio) / 8000

    segments = transcribe_pcm(audio, 8000, words=True)

    assert segments, "nothing heard"
    previous_end = 0.0
    for segment in segments:
        assert previous_end <= segment.start_s <= segment.end_s <= length_s, segments
        previous_end = segment.end_s
    tuesday = [s for s in segments if "tuesday" in s.text.lower()]
    assert tuesday, segments
    assert tuesday[0].start_s >= tuesday_from - 1.0, segments  # not in the first sentence
    assert segments[0].start_s < 1.0  # the first sentence starts at once


def test_segments_without_words_are_heard_and_timed_in_order_within_the_audio():
    parts = [recorded(HAPPY), silence(1500), recorded(TUESDAY)]
    audio = pcm(b"".join(parts))

    segments = transcribe_pcm(audio, 8000)

    assert heard(HAPPY + " " + TUESDAY, text_of(segments)) >= 0.6, segments
    assert in_order_within(segments, len(audio) / 8000), segments
    assert segments[0].start_s < 1.0


def test_nothing_is_heard_in_silence_or_in_too_little_audio():
    assert transcribe_pcm(np.zeros(8000 * 3, dtype=np.int16), 8000) == []
    assert transcribe_pcm(np.zeros(100, dtype=np.int16), 8000) == []


def test_a_sentence_with_a_name_and_numbers_spoken_now_is_heard():
    speech_or_skip()
    text = "my name is Sarah Johnson and the engineer comes on Friday at four"
    transcript = text_of(transcribe_pcm(pcm(synthesise(text)), 8000)).lower()

    assert heard(text, transcript) >= 0.5, transcript
    assert "sarah" in transcript, transcript


def test_a_folder_that_is_not_a_whisper_model_stops_the_worker_at_start(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"")
    settings = make_settings(
        "postgresql://x", "redis://x", ai_provider="local", ai_local_model=str(tmp_path)
    )

    with pytest.raises(ValueError, match=r"no config\.json, tokenizer\.json"):
        make_ai_client(settings)


def test_unset_ai_local_model_is_the_bundled_tiny_en():
    folder = whisper.model_folder(None)

    assert json.loads((folder / "config.json").read_text())["lang_ids"]  # a Whisper config
    assert (folder / "model.bin").stat().st_size > 30_000_000


@pytest.fixture(scope="module")
async def local_ai() -> AsyncIterator[LocalAI]:
    ai = LocalAI(processes=min(2, len(os.sched_getaffinity(0))))
    yield ai
    await ai.aclose()


async def test_a_call_longer_than_a_segment_is_timed_from_the_start_of_the_call(local_ai):
    # A sentence, then silence past the first segment's end, then another: the second one's
    # times come from the second segment, offset by the first's length.
    late_s = SEGMENT_S + 3
    gap_ms = int(late_s * 1000) - len(recorded(HAPPY)) // 8
    audio = recorded(HAPPY) + silence(gap_ms) + recorded(TUESDAY)

    segments = await local_ai.transcribe_segments("call", PcmAudio(pcm(audio), TELEPHONY))

    assert heard(HAPPY + " " + TUESDAY, text_of(segments)) >= 0.6, segments
    tuesday = [s for s in segments if "tuesday" in s.text.lower()]
    assert tuesday, segments
    assert late_s - 1 <= tuesday[0].start_s <= tuesday[0].end_s <= len(audio) / 8000 + 0.1
    assert [s.start_s for s in segments] == sorted(s.start_s for s in segments)


async def test_word_times_come_when_asked_each_inside_its_stretch_in_the_calls_time(local_ai):
    audio = recorded(HAPPY) + silence(1000) + recorded(TUESDAY)

    plain = await local_ai.transcribe_segments("call", PcmAudio(pcm(audio), TELEPHONY))
    timed = await local_ai.transcribe_segments("call", PcmAudio(pcm(audio), TELEPHONY), words=True)

    assert all(s.words is None for s in plain)  # not asked: not given
    assert [s.text for s in timed] == [s.text for s in plain]
    for stretch in timed:
        assert stretch.words
        assert " ".join(w.text for w in stretch.words) == " ".join(stretch.text.split())
        assert all(stretch.start_s <= w.start_s <= w.end_s <= stretch.end_s for w in stretch.words)


def timed_transcription(samples: Samples, rate: int) -> tuple[float, float, int]:
    """Run in a pool process: CPU and wall seconds of one transcription, and the process id."""
    cpu, wall = time.process_time(), time.monotonic()
    transcribe_pcm(samples, rate)
    return time.process_time() - cpu, time.monotonic() - wall, os.getpid()


async def test_transcriptions_run_in_the_pool_one_thread_a_process(local_ai):
    audio = pcm(recorded(ANGRY))
    await local_ai.analyse_sentiment("warm-up", "hello")  # the pool is up, its models loaded

    results = [
        await local_ai._run(timed_transcription, audio, 8000) for _ in range(local_ai.processes)
    ]

    for cpu_s, wall_s, pid in results:
        assert pid != os.getpid()  # never on the worker's event loop
        # One thread: the CPU it used is at most the time it took (more would be threads).
        assert cpu_s <= wall_s * 1.2 + 0.05, (cpu_s, wall_s)


def test_the_local_providers_concurrency_is_capped_by_the_cores():
    local = make_settings("postgresql://x", "redis://x", ai_provider="local", ai_max_concurrency=99)
    mock = make_settings("postgresql://x", "redis://x", ai_max_concurrency=99)

    assert ai_concurrency(local) == min(99, len(os.sched_getaffinity(0)))
    assert ai_concurrency(mock) == 99
    client = make_ai_client(local)
    assert isinstance(client, LocalAI)
    assert client.processes == ai_concurrency(local)  # its pool's size


class Borrowed:
    """The module's LocalAI lent to one test's worker: its pool outlives the worker."""

    def __init__(self, ai: LocalAI) -> None:
        self.ai = ai

    async def transcribe_segments(
        self, call_id: str, audio: SpeechSource, *, words: bool = False
    ) -> list[Spoken]:
        return await self.ai.transcribe_segments(call_id, audio)

    async def analyse_sentiment(self, call_id: str, transcript: str) -> Sentiment:
        return await self.ai.analyse_sentiment(call_id, transcript)

    async def aclose(self) -> None:
        pass


@pytest.fixture
def run_local_worker(server_urls: tuple[str, str], local_ai: LocalAI):
    settings = make_settings(*server_urls, ai_provider="local", ai_attempt_timeout_s=60.0)

    async def run() -> None:
        res = make_resources(settings, ai=Borrowed(local_ai))
        try:
            await drain_queue(res)
        finally:
            await res.close()

    return run


def twilio_start(call_id: str, encoding: str = "audio/x-mulaw") -> str:
    start = {
        "callSid": call_id,
        "streamSid": "MZ1",
        "tracks": ["inbound"],
        "mediaFormat": {**MEDIA_FORMAT, "encoding": encoding},
    }
    return json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": "MZ1", "start": start})


def twilio_media(sequence: int, frame: bytes) -> str:
    media = {
        "track": "inbound",
        "chunk": str(sequence),
        "timestamp": str(sequence * 20),
        "payload": base64.b64encode(frame).decode(),
    }
    return json.dumps(
        {"event": "media", "sequenceNumber": str(sequence), "streamSid": "MZ1", "media": media}
    )


async def stream_call(address: str, call_id: str, audio: list[bytes], encoding: str) -> None:
    """A Twilio Media Stream: start, one media message per frame, stop."""
    async with connect(f"ws://{address}/v1/call/media") as ws:
        await ws.send(twilio_start(call_id, encoding))
        for sequence, frame in enumerate(audio, start=2):
            await ws.send(twilio_media(sequence, frame))
        await ws.send(json.dumps({"event": "stop", "sequenceNumber": "999999", "streamSid": "MZ1"}))
        await ws.wait_closed()


async def post_call(client: AsyncClient, call_id: str, audio: list[bytes]) -> None:
    """HTTP packets: one per 20 ms frame, in batches, as a PBX posts them."""
    packets = [packet(s, base64.b64encode(f).decode()) for s, f in enumerate(audio)]
    for start in range(0, len(packets), 200):
        batch = {"packets": packets[start : start + 200]}
        assert (
            await client.post(f"/v1/call/stream/{call_id}/batch", json=batch)
        ).status_code == 202
    await complete(client, call_id)


async def test_a_call_spoken_over_the_media_websocket_is_transcribed_and_its_sentiment_scored(
    settings: Settings, run_local_worker
):
    audio = frames(recorded(HAPPY))
    async with serving(create_app(settings)) as address:
        await stream_call(address, "CA-happy", audio, "audio/x-mulaw")
        # The same audio, but the stream says it is 16-bit linear: decoded, noise with a rhythm.
        await stream_call(address, "CA-misread", audio, "audio/L16")

        await run_local_worker()

        async with AsyncClient(base_url=f"http://{address}") as client:
            happy = await status(client, "CA-happy")
            misread = await status(client, "CA-misread")
    assert happy["state"] == "ARCHIVED"
    assert misread["state"] == "ARCHIVED"
    assert heard(HAPPY, happy["transcript"]) >= 0.6, happy["transcript"]
    assert heard(HAPPY, misread["transcript"]) <= heard(HAPPY, happy["transcript"]) / 3
    assert happy["sentiment"]["label"] == "positive"
    assert 0.05 <= happy["sentiment"]["score"] <= 1


async def test_a_call_spoken_in_http_packets_is_transcribed_and_its_sentiment_scored(
    client: AsyncClient, run_local_worker
):
    await post_call(client, "angry", frames(recorded(ANGRY)))
    await post_call(client, "shuffled", frames(shuffled(recorded(ANGRY))))

    await run_local_worker()

    angry, scrambled = await status(client, "angry"), await status(client, "shuffled")
    assert angry["state"] == "ARCHIVED"
    assert scrambled["state"] == "ARCHIVED"
    assert heard(ANGRY, angry["transcript"]) >= 0.6, angry["transcript"]
    assert heard(ANGRY, scrambled["transcript"]) <= heard(ANGRY, angry["transcript"]) / 3
    assert angry["sentiment"]["label"] == "negative"
    assert -1 <= angry["sentiment"]["score"] <= -0.05


async def test_packets_that_are_not_audio_fail_the_call_for_good_with_the_reason(
    client: AsyncClient, run_local_worker
):
    for s in range(3):
        assert (await client.post("/v1/call/stream/words", json=packet(s))).status_code == 202
    await complete(client, "words")

    await run_local_worker()

    call = await status(client, "words")
    assert call["state"] == "FAILED"
    assert call["last_error"] == (
        "transcription failed permanently: the call's audio cannot be decoded: "
        "packet 0's data is not base64 (transcribing the caller's text)"
    )
    assert call["ai_attempts"] == 1  # never retried
