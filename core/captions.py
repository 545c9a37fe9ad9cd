"""A transcript as captions: WebVTT (one cue per utterance, the speaker as a voice span) and SRT
(the speaker as a prefix). Pure functions, no I/O.

Escaping: a cue's text ends at its first blank line, a `-->` in it reads as a timing line and a
`<` opens a tag, so line breaks become spaces and `&`, `<`, `>` become character references
(`-->` becomes `--&gt;`). WebVTT defines these references; SRT has no escape of its own, and the
same references are what its common players (and `srt`-based tools) leave as the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

CaptionFormat = Literal["vtt", "srt"]
MEDIA_TYPES: dict[CaptionFormat, str] = {"vtt": "text/vtt", "srt": "application/x-subrip"}
# A cue shorter than this is stretched to it: players drop cues that end where they start.
_SHORTEST_S = 0.001
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029\x0b\x0c\x85]+")


@dataclass(frozen=True, slots=True)
class Cue:
    speaker: str
    start_s: float
    end_s: float
    text: str


def escape(text: str) -> str:
    """Text safe inside a cue (and inside a voice span's annotation): one line, no markup."""
    one_line = _LINE_BREAKS.sub(" ", text)
    return one_line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clock(seconds: float, decimal: str) -> str:
    millis = max(round(seconds * 1000), 0)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def _span(cue: Cue, decimal: str) -> str:
    start = max(cue.start_s, 0.0)
    end = max(cue.end_s, start + _SHORTEST_S)
    return f"{_clock(start, decimal)} --> {_clock(end, decimal)}"


def _kept(cues: Iterable[Cue]) -> list[Cue]:
    return [c for c in cues if c.text.strip()]


def to_webvtt(cues: Sequence[Cue]) -> str:
    blocks = ["WEBVTT"]
    for n, cue in enumerate(_kept(cues), start=1):
        blocks.append(f"{n}\n{_span(cue, '.')}\n<v {escape(cue.speaker)}>{escape(cue.text)}</v>")
    return "\n\n".join(blocks) + "\n"


def to_srt(cues: Sequence[Cue]) -> str:
    blocks = [
        f"{n}\n{_span(cue, ',')}\n{escape(cue.speaker)}: {escape(cue.text)}"
        for n, cue in enumerate(_kept(cues), start=1)
    ]
    return "\n\n".join(blocks) + "\n" if blocks else ""


def render(fmt: CaptionFormat, cues: Sequence[Cue]) -> str:
    return to_webvtt(cues) if fmt == "vtt" else to_srt(cues)
