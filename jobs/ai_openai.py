"""AI_PROVIDER=openai: any service that speaks OpenAI's audio and chat API (OpenAI itself, a
self-hosted faster-whisper server, vLLM).

Transcription: POST {AI_BASE_URL}/v1/audio/transcriptions, multipart, the call's audio as a 16-bit
mono WAV at the call's own rate, with AI_TRANSCRIPTION_MODEL. The audio is first spooled to a
temporary file (memory stays bounded; the WAV header needs the exact length); a WAV larger than
AI_MAX_UPLOAD_BYTES is sent in parts, each cut at the quietest 20 ms frame of its last seconds,
transcribed in order and joined.

It asks for `verbose_json`, whose `segments` say when each stretch was spoken (seconds of the
part, moved by the part's start to seconds of the whole audio); a server that answers without
segments (one that ignores verbose_json, or a model OpenAI serves only as plain json) still
works: its `text` becomes one stretch over the whole part. A 400 that names `response_format`
(gpt-4o-transcribe's refusal of verbose_json) is asked again as plain json, and so is every later
part this client sends.

Sentiment: chat completions with AI_SENTIMENT_MODEL and a JSON answer, or VADER in this process
(AI_SENTIMENT=local).

What the provider answers becomes (jobs/ai.py):
- 429: TransientAIError with the provider's Retry-After (or retry-after-ms): run_step waits at
  least that long and pauses every worker's slots (jobs/ai_limit.py) for it;
- 408, 409, 5xx, a timeout, a connection refused or dropped: TransientAIError, retried;
- any other 4xx (400, 401, 403, 404, 413...): PermanentAIError with the provider's own reason;
  the call ends FAILED, never retried;
- a transcription answer that is not JSON, has no text, or whose segments are malformed (a time
  that is not a finite number, an end before its start, text that is not a string):
  PermanentAIError. A server answers the same audio the same way, so asking again would not help
  (unlike a chat model, which may follow the JSON asked for next time: retried).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import IO, Any, TypeGuard

import httpx
import numpy as np
from pydantic import SecretStr

from core.audio import WAV_HEADER_BYTES, quietest_cut, wav_header
from jobs.ai import (
    AIError,
    PermanentAIError,
    Sentiment,
    SpeechSource,
    Spoken,
    TransientAIError,
    Word,
)
from jobs.ai_local import vader_sentiment

LABELS = ("positive", "neutral", "negative")
MULTIPART_SLACK = 4096  # the form's other fields and boundaries, within the upload limit
SEARCH_S = 10.0  # a part ends at the quietest frame of its last seconds (or tenth)
COPY_BYTES = 64 * 1024
Form = list[tuple[str, str]]  # a form's fields, in order; a name may repeat
TIMED: Form = [("response_format", "verbose_json"), ("timestamp_granularities[]", "segment")]
# Word times too, when audio redaction asks for them (OpenAI's API: a second granularity).
WORDS: Form = [("timestamp_granularities[]", "word")]
UNTIMED: Form = [("response_format", "json")]
CONNECT_TIMEOUT_S = 10.0
# A chat model reads the end of a long call: how it ended says most about how it went.
SENTIMENT_MAX_CHARS = 16_000
SENTIMENT_PROMPT = (
    "You rate the sentiment of a customer-service phone call from its transcript (automatic "
    'speech recognition, so expect errors). Answer with JSON only: {"label": "positive" | '
    '"neutral" | "negative", "score": a number from -1 (very negative) to 1 (very positive)}.'
)


class FormatRefused(PermanentAIError):
    """A 400 about `response_format`: the server (or model) does not give verbose_json."""


class OpenAICompatible:
    def __init__(
        self,
        base_url: str,
        api_key: SecretStr,
        transcription_model: str,
        sentiment_model: str | None,
        *,
        local_sentiment: bool = False,
        max_upload_bytes: int = 25_000_000,
        request_timeout_s: float = 10.0,
        timeout_per_audio_s: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not local_sentiment and not sentiment_model:
            raise ValueError(
                "sentiment needs a chat model (AI_SENTIMENT_MODEL) or AI_SENTIMENT=local"
            )
        self.transcription_model = transcription_model
        self.sentiment_model = sentiment_model
        self.local_sentiment = local_sentiment
        self.max_upload_bytes = max_upload_bytes
        self.request_timeout_s = request_timeout_s
        self.timeout_per_audio_s = timeout_per_audio_s
        self.untimed = False  # the server refused verbose_json: ask for plain json from now on
        key = api_key.get_secret_value()
        self.client = httpx.AsyncClient(
            base_url=api_root(base_url),
            headers={"Authorization": f"Bearer {key}"} if key else {},
            timeout=httpx.Timeout(
                request_timeout_s, connect=min(request_timeout_s, CONNECT_TIMEOUT_S)
            ),
            transport=transport,
        )

    async def transcribe_segments(
        self, call_id: str, audio: SpeechSource, *, words: bool = False
    ) -> list[Spoken]:
        rate = (await audio.format()).rate
        # Plain blocking I/O on a local temporary file: it runs at the page cache's speed, and
        # a thread hop per chunk would cost more than the write.
        with tempfile.TemporaryFile() as spool:
            size = 0
            async for samples in audio.pcm():
                size += spool.write(samples.astype("<i2").tobytes())
            heard: list[Spoken] = []
            for start, end in parts(spool, size, rate, self._largest_part(rate)):
                answer = await self._transcribe_part(spool, start, end, rate, words)
                # Both ends from byte offsets the same way: a part starts exactly where the
                # one before it ended, so the times keep increasing across parts.
                heard += spoken_from(answer, start / 2 / rate, end / 2 / rate, words)
        return heard

    async def analyse_sentiment(self, call_id: str, transcript: str) -> Sentiment:
        if self.local_sentiment:
            return await asyncio.to_thread(vader_sentiment, transcript)
        if not transcript.strip():
            return Sentiment(label="neutral", score=0.0)  # nothing was said: nothing to ask about
        request = {
            "model": self.sentiment_model,
            "messages": [
                {"role": "system", "content": SENTIMENT_PROMPT},
                {"role": "user", "content": transcript[-SENTIMENT_MAX_CHARS:]},
            ],
            "response_format": {"type": "json_object"},
        }
        response = await self._post("sentiment", "/v1/chat/completions", json=request)
        return sentiment_from(_json(response, "chat completion"))

    async def aclose(self) -> None:
        await self.client.aclose()

    def _largest_part(self, rate: int) -> int:
        """The most PCM bytes one upload may carry, in whole 20 ms frames."""
        frame = rate // 50 * 2
        room = self.max_upload_bytes - WAV_HEADER_BYTES - MULTIPART_SLACK
        return max(room // frame, 1) * frame

    async def _transcribe_part(
        self, spool: IO[bytes], start: int, end: int, rate: int, words: bool
    ) -> Any:
        """The provider's JSON answer for the PCM bytes [start, end) of the spool."""
        untimed = self.untimed
        timed = TIMED + WORDS if words else TIMED
        try:
            return await self._post_part(spool, start, end, rate, UNTIMED if untimed else timed)
        except FormatRefused:
            if untimed:
                raise
            self.untimed = True
            return await self._post_part(spool, start, end, rate, UNTIMED)

    async def _post_part(
        self, spool: IO[bytes], start: int, end: int, rate: int, asked: Form
    ) -> Any:
        boundary = uuid.uuid4().hex
        fields = [("model", self.transcription_model), *asked]
        head, tail = _form(boundary, fields, "audio.wav", "audio/wav")
        header = wav_header(end - start, rate)
        body = _stream(head + header, spool, start, end, tail)
        seconds = (end - start) / 2 / rate
        response = await self._post(
            "transcription",
            "/v1/audio/transcriptions",
            content=body,
            headers={
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Content-Length": str(len(head) + len(header) + end - start + len(tail)),
            },
            timeout=httpx.Timeout(
                self.request_timeout_s + self.timeout_per_audio_s * seconds,
                connect=min(self.request_timeout_s, CONNECT_TIMEOUT_S),
            ),
        )
        return _json(response, "transcription")

    async def _post(self, what: str, path: str, **request: Any) -> httpx.Response:
        started = time.monotonic()
        try:
            response = await self.client.post(path, **request)
        except httpx.TimeoutException as exc:
            took = time.monotonic() - started
            raise TransientAIError(
                f"provider: {what} timed out after {took:.1f}s ({exc!r})"
            ) from exc
        except httpx.TransportError as exc:
            raise TransientAIError(f"provider: {what} connection failed: {exc!r}") from exc
        if response.is_success:
            return response
        raise error_for(what, response)


def api_root(base_url: str) -> str:
    """AI_BASE_URL with or without its /v1 (as OpenAI's SDKs take it): the same root."""
    root = base_url.rstrip("/")
    return root.removesuffix("/v1")


def error_for(what: str, response: httpx.Response) -> AIError:
    status, reason = response.status_code, _reason(response)
    said = f"provider refused the {what}: {status} {reason}"
    if status == 429:
        return TransientAIError(said, retry_after_s=retry_after_s(response.headers))
    if status in (408, 409) or status >= 500:
        return TransientAIError(said)
    if status == 413:
        said += "; AI_MAX_UPLOAD_BYTES must not exceed the provider's upload limit"
    if status == 400 and "response_format" in response.text:
        return FormatRefused(said)
    return PermanentAIError(said)


def retry_after_s(headers: httpx.Headers) -> float | None:
    """How long the provider asked us to wait: retry-after-ms (OpenAI's), else Retry-After in
    seconds or as an HTTP date; None when it did not say."""
    try:
        if "retry-after-ms" in headers:
            return max(float(headers["retry-after-ms"]) / 1000, 0.0)
        value = headers.get("retry-after")
        if value is None:
            return None
        if value.strip().replace(".", "", 1).isdigit():
            return float(value)
        when = email.utils.parsedate_to_datetime(value)
    except (ValueError, TypeError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def sentiment_from(completion: Any) -> Sentiment:
    """The label and score out of a chat completion whose message is the JSON asked for."""
    try:
        content = completion["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise PermanentAIError("the provider's answer is not a chat completion") from None
    try:
        answer = json.loads(content)
        label, score = answer["label"], float(answer["score"])
    except (ValueError, KeyError, TypeError):
        # A model that did not follow the format this once may well follow it next time.
        raise TransientAIError(
            f"the sentiment model did not answer the JSON asked: {str(content)[:200]!r}"
        ) from None
    if label not in LABELS or not np.isfinite(score):
        raise TransientAIError(
            f"the sentiment model answered {label!r} {score}, not a label and a score"
        )
    return Sentiment(label=label, score=round(min(max(score, -1.0), 1.0), 3))


def spoken_from(answer: Any, start_s: float, end_s: float, words: bool = False) -> list[Spoken]:
    """What one part's answer says was spoken, in seconds of the whole audio (the part runs
    from start_s to end_s): its segments, their text stripped, the empty ones left out, each
    clamped into the part and to start no earlier than the one before ended; without segments,
    its text as one stretch over the whole part. With `words`, each stretch gets the answer's
    words that fall in it (None when the answer has no `words`: a server that ignored the
    granularity)."""
    heard = _stretches(answer, start_s, end_s)
    if not words:
        return heard
    timed = _words(answer, start_s, end_s)
    if timed is None:
        return heard
    return [s._replace(words=tuple(w for w in timed if _inside(w, s))) for s in heard]


def _inside(word: Word, stretch: Spoken) -> bool:
    middle = (word.start_s + word.end_s) / 2
    return stretch.start_s <= middle <= stretch.end_s


def _words(answer: Any, start_s: float, end_s: float) -> list[Word] | None:
    """verbose_json's top-level `words` ({"word", "start", "end"}, seconds of the part), in
    seconds of the whole audio, clamped into the part; None if the answer has none."""
    found = answer.get("words") if isinstance(answer, dict) else None
    if not isinstance(found, list):
        return None
    timed = []
    for item in found:
        got = item if isinstance(item, dict) else {}
        begin, finish, word = got.get("start"), got.get("end"), got.get("word")
        if not (_seconds(begin) and _seconds(finish) and isinstance(word, str)):
            raise PermanentAIError(f"the provider's word is malformed: {str(item)[:200]!r}")
        a = min(max(start_s + begin, start_s), end_s)
        timed.append(Word(a, min(max(start_s + finish, a), end_s), word.strip()))
    return timed


def _stretches(answer: Any, start_s: float, end_s: float) -> list[Spoken]:
    segments = answer.get("segments") if isinstance(answer, dict) else None
    if segments is None or segments == []:
        text = answer.get("text") if isinstance(answer, dict) else None
        if not isinstance(text, str):
            raise PermanentAIError("the provider's transcription answer has no text")
        return [Spoken(start_s, end_s, text.strip())] if text.strip() else []
    if not isinstance(segments, list):
        raise PermanentAIError(f"the provider's segments are not a list: {str(segments)[:200]!r}")
    heard: list[Spoken] = []
    after = start_s
    for segment in segments:
        begin, finish, text = _segment(segment)
        begin = min(max(start_s + begin, after), end_s)
        finish = min(max(start_s + finish, begin), end_s)
        if text:
            heard.append(Spoken(begin, finish, text))
            after = finish
    return heard


def _segment(segment: Any) -> tuple[float, float, str]:
    """A verbose_json segment's start, end (seconds of its part) and stripped text."""
    found = segment if isinstance(segment, dict) else {}
    start, end, text = found.get("start"), found.get("end"), found.get("text")
    if not (_seconds(start) and _seconds(end) and isinstance(text, str)) or end < start:
        raise PermanentAIError(f"the provider's segment is malformed: {str(segment)[:200]!r}")
    return float(start), float(end), text.strip()


def _seconds(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parts(spool: IO[bytes], size: int, rate: int, largest: int) -> Iterator[tuple[int, int]]:
    """(start, end) byte ranges of the spooled PCM, each at most `largest` bytes, cut at the
    quietest 20 ms frame of a part's last tenth (SEARCH_S seconds at most)."""
    frame = rate // 50 * 2
    search = min(int(SEARCH_S * rate) * 2, largest // 10) // frame * frame
    start = 0
    while size - start > largest:
        window = start + largest - search
        spool.seek(window)
        samples = np.frombuffer(spool.read(search), dtype="<i2")
        cut = window + quietest_cut(samples, 0, len(samples), frame // 2) * 2
        cut = cut if cut > start else start + largest
        yield start, cut
        start = cut
    if size > start:
        yield start, size


def _form(boundary: str, fields: Form, filename: str, mime: str) -> tuple[bytes, bytes]:
    """The multipart form around one file: what comes before its bytes, and after."""
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields
    )
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{filename}"\r\nContent-Type: {mime}\r\n\r\n'
    ).encode()
    return head, f"\r\n--{boundary}--\r\n".encode()


async def _stream(
    head: bytes, spool: IO[bytes], start: int, end: int, tail: bytes
) -> AsyncIterator[bytes]:
    yield head
    spool.seek(start)
    left = end - start
    while left > 0:
        chunk = spool.read(min(COPY_BYTES, left))
        if not chunk:
            raise PermanentAIError("the spooled audio ended early")  # never: we wrote it
        left -= len(chunk)
        yield chunk
    yield tail


def _reason(response: httpx.Response) -> str:
    """The provider's own words: OpenAI's {"error": {"message"}}, else the body's start."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300].strip() or response.reason_phrase
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])[:300]
    if isinstance(error, str):
        return error[:300]
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return str(body["detail"])[:300]  # FastAPI-based servers (faster-whisper-server)
    return response.text[:300]


def _json(response: httpx.Response, what: str) -> Any:
    try:
        return response.json()
    except ValueError:
        start = response.text[:100]
        raise PermanentAIError(f"the provider's {what} answer is not JSON: {start!r}") from None
