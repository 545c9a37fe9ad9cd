"""Two tracks' windows heard in one pass of the local model (jobs/packing.py): each track gets
back only its own words, on its own timeline; the Packer pairs the pieces of one call that come
together, and hears alone a piece that finds no partner, or none that fits."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from core.audio import Samples
from jobs import packing
from jobs.packing import Packer, hear_packed
from jobs.whisper import Segment, transcribe_pcm
from simulate.speech import silence
from tests.jobs.test_ai_local import ANGRY, HAPPY, TUESDAY, heard, pcm, recorded, text_of


def test_two_tracks_heard_in_one_pass_each_get_their_own_words_on_their_own_timeline():
    caller = pcm(recorded(HAPPY) + silence(1500) + recorded(TUESDAY))
    agent = pcm(silence(700) + recorded(ANGRY))

    mine, theirs = hear_packed([caller, agent], 8000)

    assert heard(HAPPY + " " + TUESDAY, text_of(mine)) >= 0.6, mine
    assert heard(ANGRY, text_of(theirs)) >= 0.6, theirs
    assert heard(ANGRY, text_of(mine)) <= 0.2
    assert heard(HAPPY, text_of(theirs)) <= 0.2
    for segments, samples in ((mine, caller), (theirs, agent)):
        length_s = len(samples) / 8000
        for s in segments:
            assert 0 <= s.start_s <= s.end_s <= length_s, segments
            assert all(s.start_s <= a <= b <= s.end_s for a, b, _ in s.words), s
    assert theirs[0].start_s >= 0.3  # its own silence first, not the caller's speech
    tuesday = [s for s in mine if "tuesday" in s.text.lower()]
    assert tuesday
    assert tuesday[0].start_s >= len(recorded(HAPPY)) / 8000


class FakePool:
    """LocalAI._run's stand-in: what it was asked, answered at once (or with `error`)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.asked: list[tuple[Any, tuple[Any, ...]]] = []
        self.error = error

    async def run(self, function: Any, *args: Any) -> Any:
        self.asked.append((function, args))
        await asyncio.sleep(0)
        if self.error is not None:
            raise self.error
        if function is hear_packed:
            return [[Segment(0.0, 1.0, f"piece {n}")] for n, _ in enumerate(args[0])]
        return [Segment(0.0, 1.0, "alone")]


def seconds(s: float) -> Samples:
    return np.zeros(int(s * 8000), dtype=np.int16)


async def test_two_pieces_of_a_call_that_come_together_are_heard_in_one_pass():
    pool = FakePool()
    packer = Packer(pool.run)

    first, second = await asyncio.gather(
        packer.heard("call", seconds(14), 8000, None), packer.heard("call", seconds(15), 8000, None)
    )

    assert [f for f, _ in pool.asked] == [hear_packed]
    assert [len(p) for p in pool.asked[0][1][0]] == [14 * 8000, 15 * 8000]
    assert (first[0].text, second[0].text) == ("piece 0", "piece 1")


async def test_a_piece_that_finds_no_partner_is_heard_alone_after_a_short_wait(monkeypatch):
    monkeypatch.setattr(packing, "WAIT_S", 0.05)
    pool = FakePool()
    found = await Packer(pool.run).heard("call", seconds(10), 8000, None)
    assert [f for f, _ in pool.asked] == [transcribe_pcm]
    assert found[0].text == "alone"


@pytest.mark.parametrize(
    ("a", "b"), [(("one", 10.0), ("two", 10.0)), (("call", 20.0), ("call", 12.0))]
)
async def test_pieces_of_two_calls_or_too_long_together_are_heard_apart(monkeypatch, a, b):
    monkeypatch.setattr(packing, "WAIT_S", 0.05)
    pool = FakePool()
    packer = Packer(pool.run)
    await asyncio.gather(
        packer.heard(a[0], seconds(a[1]), 8000, None), packer.heard(b[0], seconds(b[1]), 8000, None)
    )
    assert [f for f, _ in pool.asked] == [transcribe_pcm, transcribe_pcm]


async def test_a_piece_with_no_room_for_a_partner_does_not_wait_for_one(monkeypatch):
    monkeypatch.setattr(packing, "WAIT_S", 60.0)
    pool = FakePool()
    await asyncio.wait_for(Packer(pool.run).heard("call", seconds(29), 8000, None), 5)
    assert [f for f, _ in pool.asked] == [transcribe_pcm]


async def test_a_shared_pass_that_fails_fails_both_pieces_and_stops_at_the_later_deadline():
    pool = FakePool(RuntimeError("a model process died"))
    packer = Packer(pool.run)

    results = await asyncio.gather(
        packer.heard("call", seconds(10), 8000, 100.0),
        packer.heard("call", seconds(10), 8000, 200.0),
        return_exceptions=True,
    )

    assert [str(r) for r in results] == ["a model process died"] * 2
    assert pool.asked[0][1][2] == 200.0
