"""An utterance's text is capped (db/feed_events.py): core/conversation.py's split_long tells
longer speech as several utterances, cut between words, over the same time."""

from __future__ import annotations

from itertools import pairwise

import pytest

from core.conversation import TimedText, split_long
from db.feed_events import UTTERANCE_MAX_CHARS


def test_speech_within_the_cap_is_one_utterance_as_it_came():
    text = "x" * UTTERANCE_MAX_CHARS
    assert split_long(1.5, 4.0, text) == [TimedText(1.5, 4.0, text)]


def test_longer_speech_is_cut_between_words_into_utterances_within_the_cap():
    words = [f"word{n}" for n in range(1_000)]
    text = " ".join(words)
    pieces = split_long(10.0, 70.0, text, max_chars=100)
    assert len(pieces) > 1
    assert all(0 < len(p.text) <= 100 for p in pieces)
    assert " ".join(p.text for p in pieces).split() == words  # nothing lost, nothing doubled
    assert all(not p.text.startswith(" ") and not p.text.endswith(" ") for p in pieces)


def test_the_pieces_share_the_stretchs_time_in_order_without_gaps():
    pieces = split_long(10.0, 70.0, " ".join(["abcdefghi"] * 100), max_chars=100)
    assert pieces[0].start_s == 10.0
    assert pieces[-1].end_s == 70.0
    for before, after in pairwise(pieces):
        assert before.end_s == after.start_s
        assert before.start_s < before.end_s


def test_a_word_longer_than_the_cap_is_cut_inside_it():
    pieces = split_long(0.0, 1.0, "a " + "b" * 250 + " c", max_chars=100)
    assert [p.text for p in pieces] == ["a", "b" * 100, "b" * 100, "b" * 50 + " c"]


@pytest.mark.parametrize("megabytes", [4.2])
def test_megabytes_of_text_become_utterances_of_the_default_cap(megabytes: float):
    text = ("hello thanks for calling " * int(megabytes * 1_000_000 / 25)).strip()
    pieces = split_long(0.0, 0.0, text)
    assert max(len(p.text) for p in pieces) <= UTTERANCE_MAX_CHARS
    assert sum(len(p.text) for p in pieces) + len(pieces) - 1 == len(text)
