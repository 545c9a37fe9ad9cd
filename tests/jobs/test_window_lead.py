"""A short window heard with the audio before it (jobs/transcription.py's LEAD_S): what was
said in the lead is dropped again, by word times where there are some, and the rest is timed
from the window's own start."""

from __future__ import annotations

from jobs.ai import Spoken, Word
from jobs.transcription import after_lead


def test_stretches_said_in_the_lead_are_dropped_and_the_rest_timed_from_the_window():
    placed = [
        Spoken(1.0, 4.0, "I love the new phone.", (Word(1.0, 2.0, "I"), Word(2.0, 4.0, "love"))),
        Spoken(6.25, 8.0, "Your awful.", (Word(6.25, 7.0, "Your"), Word(7.0, 8.0, "awful."))),
    ]
    assert after_lead(placed, 6.0) == [
        Spoken(0.25, 2.0, "Your awful.", (Word(0.25, 1.0, "Your"), Word(1.0, 2.0, "awful.")))
    ]


def test_a_stretch_across_the_lead_keeps_only_its_words_after_it():
    words = (Word(4.0, 5.0, "amazing."), Word(5.5, 5.75, "Your"), Word(6.25, 7.0, "service"))
    kept = after_lead([Spoken(4.0, 7.0, "amazing. Your service", words)], 5.75)
    # "Your" ends where the lead does: the window before heard it.
    assert kept == [Spoken(0.5, 1.25, "service", (Word(0.5, 1.25, "service"),))]


def test_without_word_times_a_stretch_is_kept_when_most_of_it_is_after_the_lead():
    placed = [Spoken(0.0, 5.0, "before"), Spoken(5.0, 9.0, "across"), Spoken(7.0, 8.0, "after")]
    assert [(s.start_s, s.end_s, s.text) for s in after_lead(placed, 6.0)] == [
        (0.0, 3.0, "across"),
        (1.0, 2.0, "after"),
    ]


def test_no_lead_changes_nothing():
    placed = [Spoken(0.0, 1.0, "hello", (Word(0.0, 1.0, "hello"),))]
    assert after_lead(placed, 0.0) == placed
