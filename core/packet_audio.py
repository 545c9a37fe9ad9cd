"""When a packet's data is audio: canonical base64 (it encodes back to itself, so the text can be
given back exactly) of whole samples, at least a few bytes long; and a segment's packets decoded
at once when they are all alike, as a live call's 20 ms frames are."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

import numpy as np

_PAD, _ZERO_DIGIT = ord("="), ord("A")  # "A" is the digit of six zero bits


def audio_of(data: str, sample_bytes: int, min_bytes: int) -> bytes | None:
    """The packet's bytes if its data is canonical base64 of whole samples, at least
    `min_bytes` long; None if it is not audio."""
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) < min_bytes or len(raw) % sample_bytes or base64.b64encode(raw) != data.encode():
        return None
    return raw


def audio_of_all(
    datas: Sequence[str], sample_bytes: int, min_bytes: int
) -> tuple[bytes, list[int]] | None:
    """Every packet's bytes joined, and each one's length, if every packet is audio by
    `audio_of`'s rule; None if one is not. Packets of one length (a live call's frames) are
    decoded in one pass: for a 30 s segment's 1,500 frames of a track, ~0.4 ms of CPU where
    one `audio_of` a packet took ~5 ms."""
    alike = _alike(datas, sample_bytes, min_bytes) if datas else None
    if alike is not None:
        return alike
    parts = []
    for data in datas:
        raw = audio_of(data, sample_bytes, min_bytes)
        if raw is None:
            return None
        parts.append(raw)
    return b"".join(parts), [len(raw) for raw in parts]


def _alike(
    datas: Sequence[str], sample_bytes: int, min_bytes: int
) -> tuple[bytes, list[int]] | None:
    """`audio_of_all` for packets whose data all have the length of the first, whose padding
    (if any) is the first's: their text as one matrix, its padding digits made zero digits, is
    decoded in one strict call (which refuses any other '=' or non-alphabet byte); a packet is
    canonical when what those digits decode to is zero bits (an encoder writes zero bits where
    the padding cuts a digit). None when any of that does not hold: the caller then judges
    packet by packet, so the outcome is always `audio_of`'s."""
    width = len(datas[0])
    pad = len(datas[0]) - len(datas[0].rstrip("="))
    if not width or width % 4 or pad > 2 or any(len(data) != width for data in datas):
        return None
    try:
        text = "".join(datas).encode("ascii")
    except UnicodeEncodeError:
        return None
    digits = np.frombuffer(text, dtype=np.uint8).reshape(len(datas), width)
    if pad:
        if not (digits[:, width - pad :] == _PAD).all():
            return None
        digits = digits.copy()
        digits[:, width - pad :] = _ZERO_DIGIT
    try:
        raw = base64.b64decode(digits.tobytes(), validate=True)
    except (binascii.Error, ValueError):
        return None
    full = width // 4 * 3
    size = full - pad
    if size < min_bytes or size % sample_bytes:
        return None
    decoded = np.frombuffer(raw, dtype=np.uint8).reshape(len(datas), full)
    if pad and decoded[:, size:].any():
        return None
    payload = decoded[:, :size].tobytes() if pad else raw
    return payload, [size] * len(datas)
