"""A call's recording: GET /v1/calls/{call_id}/audio, a WAV file streamed from its stored
segments (core/recording.py), with byte ranges (206) so that a player can seek, and a strong
ETag that changes whenever a segment is stored (a live call serves what is flushed so far)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import StreamingResponse

from core.errors import AudioErased, CallNotFound, NoAudio, RangeNotSatisfiable
from core.recording import NotAudio, Recording, load_recording
from db import transcripts
from db.segments import SegmentReader
from service.conditional import parse_if_none_match
from service.deps import CallId, ResourcesDep, SessionDep
from service.schemas import INVALID_REQUEST, problem_response
from service.views import call_status

router = APIRouter(prefix="/v1/calls", tags=["calls"])

WAV = "audio/wav"
# Up to 18 digits a number (below 10^18: far past any recording); a longer one is absurd, and
# ignored like any range we do not serve (RFC 9110 14.2 lets a server ignore a Range).
_RANGE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one byte range asked for, as inclusive (first, last); None for the whole file (no
    Range, or one we ignore as RFC 9110 allows: several ranges, another unit, numbers of more
    than 18 digits, or `a-b` with b < a, which is no range at all). Raises RangeNotSatisfiable
    (with `Content-Range: bytes */size`, RFC 9110 15.5.17) for a range outside the file."""
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None or not any(match.groups()):
        return None
    first, last = (int(n) if n else None for n in match.groups())
    if first is not None and last is not None and last < first:
        return None
    whole = {"Content-Range": f"bytes */{size}"}
    if first is None:  # the last N bytes
        assert last is not None
        if last == 0 or size == 0:
            raise RangeNotSatisfiable(
                f"the file is {size} bytes; a suffix of {last} bytes is empty", whole
            )
        return max(size - last, 0), size - 1
    if first >= size:
        raise RangeNotSatisfiable(
            f"the file is {size} bytes: bytes {header.strip()[6:]} are outside it", whole
        )
    return first, min(last, size - 1) if last is not None else size - 1


def _etag(call_id: str, version: object, channels: int) -> str:
    raw = f"{call_id}:{version}:{channels}".encode()
    return f'"{hashlib.blake2b(raw, digest_size=16).hexdigest()}"'


@router.head("/{call_id}/audio", include_in_schema=False)
@router.get(
    "/{call_id}/audio",
    response_class=Response,
    responses={
        200: {"content": {WAV: {}}, "description": "The whole recording."},
        206: {"content": {WAV: {}}, "description": "The bytes the Range asked for."},
        304: {"description": "Not modified (If-None-Match names the current ETag)."},
        404: problem_response(
            "Unknown call; erased (`call_erased`); its recording erased (`audio_erased`)."
        ),
        409: problem_response("The call's packets are not audio (code `no_audio`)."),
        416: problem_response("The Range lies outside the file (`Content-Range: bytes */<size>`)."),
        502: problem_response("The object store refused, or this API has none (store_error)."),
        503: problem_response("The object store is unavailable (store_unavailable)."),
        **INVALID_REQUEST,
    },
    summary="The call's recording as WAV (Range, ETag)",
)
async def get_audio(
    call_id: CallId,
    request: Request,
    res: ResourcesDep,
    session: SessionDep,
    range_header: Annotated[str | None, Header(alias="Range")] = None,
    if_range: Annotated[str | None, Header(alias="If-Range")] = None,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
) -> Response:
    """The recording as 16-bit PCM WAV at the call's rate: mono for one track, stereo for two
    (left: inbound, the caller; right: outbound, the agent), gaps as silence. A live call's
    recording is what has been flushed so far: it grows a segment at a time (with
    REDACT_PII=transcript,audio, what has been transcribed and redacted so far)."""
    status = await call_status(session, res.live, call_id, 0)
    if status is None:
        raise CallNotFound(f"call {call_id} is unknown")
    if status.audio_erased_at is not None:
        when = status.audio_erased_at.isoformat(timespec="seconds")
        raise AudioErased(f"call {call_id}'s recording was erased at {when} (retention)")
    # With audio redaction, only what is transcribed (and so silenced where it said personal
    # data) is served: a live call's recording trails its transcription.
    heard = (
        await transcripts.transcribed_to(session, call_id) if res.settings.redact_audio else None
    )
    await session.close()  # the recording reads in short transactions of its own
    reader = SegmentReader(res.sessions, call_id, res.objects)
    version = await reader.version()
    try:
        recording = await load_recording(reader, status.metadata, res.settings)
    except NotAudio as exc:
        raise NoAudio(f"call {call_id} has no recording: {exc}") from None
    if heard is not None:
        recording = recording.heard_to(heard)
    served = None if heard is None else sorted(heard.items())  # changes as windows are stored
    etag = _etag(call_id, (version, served), recording.channels)
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, no-cache",
    }
    condition = parse_if_none_match(if_none_match)
    if condition is not None and condition.matches(etag):
        return Response(status_code=304, headers=headers)
    size = recording.wav_size
    wanted = parse_range(range_header, size) if if_range in (None, etag) else None
    first, last = wanted if wanted is not None else (0, size - 1)
    headers["Content-Length"] = str(last - first + 1)
    code = 200
    if wanted is not None:
        code = 206
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    if request.method == "HEAD":
        return Response(status_code=code, headers=headers, media_type=WAV)
    # The first bytes are read now, so that a store that is down is a 503, not a cut stream.
    start = max(first - len(recording.wav_header()), 0) // recording.frame_bytes
    await recording.frames(start, start + 1)
    return StreamingResponse(_body(recording, first, last), code, headers, media_type=WAV)


async def _body(recording: Recording, first: int, last: int) -> AsyncIterator[bytes]:
    async for chunk in recording.wav_bytes(first, last):
        if chunk:
            yield chunk
