"""A segment's packets judged and decoded at once (core/packet_audio.py's audio_of_all) say
exactly what judging each packet alone (audio_of) says: the same bytes when all are audio, None
when one is not, whatever one packet among many alike ones holds."""

from __future__ import annotations

import base64
import random

import pytest

from core.packet_audio import audio_of, audio_of_all


def one_by_one(
    datas: list[str], sample_bytes: int, min_bytes: int
) -> tuple[bytes, list[int]] | None:
    parts = [audio_of(data, sample_bytes, min_bytes) for data in datas]
    if any(part is None for part in parts):
        return None
    found = [part for part in parts if part is not None]
    return b"".join(found), [len(part) for part in found]


def frames(count: int, size: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [base64.b64encode(rng.randbytes(size)).decode() for _ in range(count)]


@pytest.mark.parametrize("size", [160, 161, 162, 320, 1])  # padding of 2, 1, 0 digits
def test_frames_of_one_length_decode_to_their_bytes(size: int) -> None:
    datas = frames(50, size)
    found = audio_of_all(datas, 1, 1)
    assert found == (b"".join(base64.b64decode(d) for d in datas), [size] * 50)
    assert found == one_by_one(datas, 1, 1)


def test_a_frame_with_padding_bits_set_makes_the_row_text() -> None:
    datas = frames(10, 160)  # 216 digits, "==" at the end: the last digit's low 4 bits unused
    digit = datas[5][-3]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    datas[5] = datas[5][:-3] + alphabet[alphabet.index(digit) | 1] + "=="
    assert base64.b64decode(datas[5], validate=True)  # valid base64, but not canonical
    assert audio_of_all(datas, 1, 1) is None
    assert one_by_one(datas, 1, 1) is None


@pytest.mark.parametrize(("sample_bytes", "min_bytes"), [(2, 1), (1, 200)])
def test_frames_of_part_samples_or_too_short_are_not_audio(
    sample_bytes: int, min_bytes: int
) -> None:
    assert audio_of_all(frames(10, 161), sample_bytes, min_bytes) is None


def test_words_and_empty_data_stay_text() -> None:
    assert audio_of_all(["test", "word"], 1, 80) is None
    assert audio_of_all(["", ""], 1, 1) is None
    assert audio_of_all([], 1, 1) == (b"", [])


def test_any_one_digit_changed_in_a_run_of_frames_judged_as_alone() -> None:
    rng = random.Random(7)
    odd = "=+/Aa09 \n-_é\x00"
    for trial in range(400):
        size = rng.choice([158, 159, 160])
        datas = frames(8, size, seed=trial)
        k, at = rng.randrange(8), rng.randrange(len(datas[0]))
        datas[k] = datas[k][:at] + rng.choice(odd) + datas[k][at + 1 :]
        if rng.random() < 0.2:  # a frame of another length among them
            datas[rng.randrange(8)] = frames(1, size + 3, seed=trial)[0]
        assert audio_of_all(datas, 1, 1) == one_by_one(datas, 1, 1), (trial, datas[k])
