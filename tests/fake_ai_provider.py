"""A fake OpenAI-compatible provider for the tests: a real HTTP/1.1 server on loopback (raw
asyncio, so that it can misbehave as a real one does: hang, drop the connection), serving
POST /v1/audio/transcriptions and POST /v1/chat/completions.

It checks what it receives as a strict provider would: the multipart form, the model, and a valid
16-bit mono PCM WAV whose header matches its data. Anything wrong is answered 400 and kept in
`problems`, so a test can also assert that nothing was wrong. Every request is kept in `received`.

Tell it how to answer the next requests of an endpoint with `answer(endpoint, *replies)`; once
the script is spent it answers well: a transcript (`transcript_of`) and a sentiment (`sentiment`).

Asked for `verbose_json`, it also says when the transcript was spoken, as Whisper does: its words
spread in order over the stretches of the WAV that are louder than silence (`speech_in`), one
segment per stretch (neighbouring stretches share one when there are fewer words); in a WAV of
silence it hears nothing, as Whisper (on a good day): no text, no segments. Told
`gives_segments = False` it answers plain `{"text"}` whatever was asked (a server that ignores
verbose_json); told `refuses_verbose_json = True` it answers verbose_json with a 400 naming
`response_format`, as OpenAI does for a model that only gives json.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
import wave
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal

import numpy as np

Endpoint = Literal["transcriptions", "chat"]
PATHS: dict[str, Endpoint] = {
    "/v1/audio/transcriptions": "transcriptions",
    "/v1/chat/completions": "chat",
}
FORMATS = ("json", "verbose_json")  # the response formats it gives
SPEECH_LEVEL = 100  # a 20 ms frame louder than this (RMS of 16-bit samples) is speech
PAUSE_S = 0.5  # a quieter stretch shorter than this is a pause within one stretch of speech


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = None  # JSON; None: the well-behaved answer
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # never answer (the client's timeout ends it)
    delay_s: float = 0.0  # answer, but only after this long
    drop: bool = False  # close the connection without an answer

    @classmethod
    def error(cls, status: int, message: str, **headers: str) -> Reply:
        """An error as OpenAI words it: {"error": {"message", "type"}}."""
        body = {"error": {"message": message, "type": "invalid_request_error"}}
        return cls(status, body, headers)


@dataclass(frozen=True)
class Wav:
    rate: int
    pcm: bytes  # 16-bit little-endian mono samples


@dataclass(frozen=True)
class Received:
    endpoint: Endpoint
    at: float  # time.monotonic() when the whole request had arrived
    headers: dict[str, str]
    form: dict[str, str]  # the multipart form's text fields
    wav: Wav | None
    body: Any  # the JSON body of a chat request


class BadRequest(Exception):
    pass


class FakeProvider:
    def __init__(self) -> None:
        self.script: dict[Endpoint, deque[Reply]] = defaultdict(deque)
        self.received: list[Received] = []
        self.problems: list[str] = []
        self.transcript_of: Callable[[Wav], str] = lambda wav: "hello from the fake provider"
        self.sentiment: dict[str, Any] = {"label": "positive", "score": 0.75}
        self.gives_segments = True
        self.refuses_verbose_json = False
        self.url = ""
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    def answer(self, endpoint: Endpoint, *replies: Reply) -> None:
        self.script[endpoint].extend(replies)

    def requests(self, endpoint: Endpoint) -> list[Received]:
        return [r for r in self.received if r.endpoint == endpoint]

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[FakeProvider]:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        try:
            yield self
        finally:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while await self._one_request(reader, writer):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away (a timeout, a cancelled attempt)
        finally:
            self._connections.discard(task)
            writer.close()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; False once the connection is to be closed."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await _read_body(reader, headers)
        endpoint = PATHS.get(path)
        if method != "POST" or endpoint is None:
            await _respond(writer, 404, {"error": {"message": f"no route {method} {path}"}})
            return True
        scripted = bool(self.script[endpoint])
        reply = self.script[endpoint].popleft() if scripted else Reply()
        try:
            received = self._understand(endpoint, headers, body)
        except BadRequest as exc:
            self.problems.append(str(exc))
            await _respond(writer, 400, {"error": {"message": str(exc)}})
            return True
        self.received.append(received)
        if self.refuses_verbose_json and received.form.get("response_format") == "verbose_json":
            if scripted:
                self.script[endpoint].appendleft(reply)  # the refusal is not the scripted answer
            refusal = {
                "message": "response_format 'verbose_json' is not compatible with this model",
                "type": "invalid_request_error",
                "param": "response_format",
            }
            await _respond(writer, 400, {"error": refusal})
            return True
        if reply.drop:
            writer.transport.abort()
            return False
        if reply.hang:
            await asyncio.sleep(3600)
        await asyncio.sleep(reply.delay_s)
        await _respond(writer, reply.status, self._body(reply, received), reply.headers)
        return True

    def _understand(self, endpoint: Endpoint, headers: dict[str, str], body: bytes) -> Received:
        at = time.monotonic()
        if endpoint == "chat":
            try:
                request = json.loads(body)
            except ValueError as exc:
                raise BadRequest(f"the chat request is not JSON: {exc}") from None
            if not isinstance(request, dict) or not request.get("model"):
                raise BadRequest("a chat request needs a model")
            return Received(endpoint, at, headers, {}, None, request)
        form, files = _multipart(headers.get("content-type", ""), body)
        if not form.get("model"):
            raise BadRequest("a transcription needs a model")
        if "file" not in files:
            raise BadRequest("a transcription needs a file")
        if form.get("response_format", "json") not in FORMATS:
            raise BadRequest(f"response_format {form['response_format']!r} is not one it gives")
        return Received(endpoint, at, headers, form, _wav(files["file"]), None)

    def _body(self, reply: Reply, received: Received) -> Any:
        if reply.body is not None:
            return reply.body
        if received.endpoint == "chat":
            message = {"role": "assistant", "content": json.dumps(self.sentiment)}
            return {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
        assert received.wav is not None
        text = self.transcript_of(received.wav)
        if received.form.get("response_format") != "verbose_json" or not self.gives_segments:
            return {"text": text}
        return verbose_answer(received.wav, text)


def verbose_answer(wav: Wav, text: str) -> dict[str, Any]:
    """Whisper's verbose_json: the text's words spread over the stretches of speech."""
    duration = len(wav.pcm) / 2 / wav.rate
    spans = speech_in(wav)
    words = text.split() if spans else []
    groups = min(len(spans), len(words))
    segments = []
    for i in range(groups):
        together = spans[i * len(spans) // groups : (i + 1) * len(spans) // groups]
        said = words[i * len(words) // groups : (i + 1) * len(words) // groups]
        segments.append(
            {
                "id": i,
                "seek": 0,
                # Whisper's times come in 20 ms steps, rounded: they may pass the end a little.
                "start": round(together[0][0], 2),
                "end": round(together[-1][1], 2),
                "text": " " + " ".join(said),  # Whisper's segments start with a space
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": -0.25,
                "compression_ratio": 1.2,
                "no_speech_prob": 0.01,
            }
        )
    return {
        "task": "transcribe",
        "language": "english",
        "duration": duration,
        "text": " ".join(words),
        "segments": segments,
    }


def speech_in(wav: Wav) -> list[tuple[float, float]]:
    """(start, end) seconds of each stretch of 20 ms frames louder than SPEECH_LEVEL, pauses
    shorter than PAUSE_S within it."""
    frame = wav.rate // 50
    samples = np.frombuffer(wav.pcm, dtype="<i2").astype(np.float64)
    frames = samples[: len(samples) // frame * frame].reshape(-1, frame)
    loud = np.flatnonzero(np.sqrt((frames**2).mean(axis=1)) > SPEECH_LEVEL)
    spans: list[tuple[float, float]] = []
    for index in loud.tolist():
        start, end = index * frame / wav.rate, (index + 1) * frame / wav.rate
        if spans and start - spans[-1][1] < PAUSE_S:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return bytes(body)
            body += chunk[:-2]
    return b""


async def _respond(
    writer: asyncio.StreamWriter, status: int, body: Any, headers: dict[str, str] | None = None
) -> None:
    data = json.dumps(body).encode()
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(data)}",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + data)
    await writer.drain()


def _multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, bytes]]:
    """The text fields and the files of a multipart/form-data body, byte for byte."""
    kind, _, params = content_type.partition(";")
    boundary = params.strip().removeprefix("boundary=").strip('"')
    if kind.strip() != "multipart/form-data" or not boundary:
        raise BadRequest(f"a transcription is multipart/form-data, not {content_type!r}")
    delimiter = b"--" + boundary.encode()
    if not body.startswith(delimiter) or not body.endswith(delimiter + b"--\r\n"):
        raise BadRequest("the multipart body is not delimited by its boundary")
    form: dict[str, str] = {}
    files: dict[str, bytes] = {}
    # The CRLF before each delimiter belongs to the delimiter (RFC 2046), the last one's too.
    inner = body[len(delimiter) : -len(delimiter + b"--\r\n")].removesuffix(b"\r\n")
    for part in inner.split(b"\r\n" + delimiter):
        head, sep, content = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            raise BadRequest("a multipart part has no headers")
        disposition = next(
            (
                line
                for line in head.decode().split("\r\n")
                if line.lower().startswith("content-disposition")
            ),
            "",
        )
        name = disposition.split('name="', 1)[1].split('"', 1)[0] if 'name="' in disposition else ""
        if "filename=" in disposition:
            files[name] = content
        else:
            form[name] = content.decode()
    return form, files


def _wav(data: bytes) -> Wav:
    """The upload, if it is a 16-bit mono PCM WAV whose header tells its true length."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise BadRequest("the file is not a WAV")
    if int.from_bytes(data[4:8], "little") != len(data) - 8:
        raise BadRequest("the WAV's RIFF size is not its length")
    if int.from_bytes(data[40:44], "little") != len(data) - 44:
        raise BadRequest("the WAV's data size is not the data sent")
    try:
        with wave.open(io.BytesIO(data)) as reader:
            if (reader.getnchannels(), reader.getsampwidth()) != (1, 2):
                raise BadRequest("the WAV is not 16-bit mono")
            return Wav(reader.getframerate(), reader.readframes(reader.getnframes()))
    except (wave.Error, EOFError) as exc:
        raise BadRequest(f"the WAV cannot be read: {exc}") from None
