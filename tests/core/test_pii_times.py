"""Where personal data said is silenced, from the model's word times (core/audio_redaction.py's
pii_times): word times are estimates, so a span reaches to the words heard around it, and at its
stretch's edge to the stretches around it."""

from __future__ import annotations

from core.audio_redaction import PAD_S, pii_times
from core.redaction import ALL_ENTITIES

CARD = "My card number is 4111 1111 1111 1111."
WORDS = [
    (0.0, 0.3, "My"),
    (0.3, 0.6, "card"),
    (0.6, 0.9, "number"),
    (0.9, 1.1, "is"),
    (1.4, 2.0, "4111"),
    (2.0, 2.6, "1111"),
    (2.6, 3.2, "1111"),
    (3.2, 3.8, "1111."),
]


def test_a_span_last_in_its_stretch_runs_on_to_where_the_next_stretch_begins():
    # The model timed the stretch (and its last digits) as ending at 3.8 s; the next stretch
    # heard starts at 5.0 s: the digits said in between, if any, are silenced too.
    found = pii_times(CARD, 0.0, 3.8, WORDS, ALL_ENTITIES, room=(0.0, 5.0))
    assert found.spans == [(1.1, 5.0)]
    assert not found.fell_back


def test_a_span_reaches_back_to_the_end_of_the_word_heard_before_it_not_further():
    found = pii_times(CARD, 0.0, 3.8, WORDS, ALL_ENTITIES, room=(0.0, 5.0))
    assert found.spans[0][0] == 1.1  # "is" ended there: the pause after it is silenced


def test_a_span_between_words_stops_at_the_start_of_the_next_word_heard():
    text = CARD[:-1] + " thank you."
    words = [*WORDS[:-1], (3.2, 3.6, "1111"), (4.4, 4.7, "thank"), (4.7, 5.0, "you.")]
    found = pii_times(text, 0.0, 5.0, words, ALL_ENTITIES, room=(0.0, 9.0))
    assert found.spans == [(1.1, 4.4)]


def test_a_span_first_in_its_stretch_runs_back_to_where_the_previous_stretch_ended():
    words = [(w[0] + 2.0, w[1] + 2.0, w[2]) for w in WORDS[4:]] + [(6.3, 6.6, "thanks.")]
    found = pii_times("4111 1111 1111 1111 thanks.", 3.4, 6.6, words, ALL_ENTITIES, room=(1.0, 8.0))
    assert found.spans == [(1.0, 6.3)]


def test_words_close_together_keep_the_pad_around_the_span():
    words = [
        *WORDS[:4],
        (1.1, 1.7, "4111"),
        *WORDS[5:-1],
        (3.2, 3.8, "1111."),
    ]
    found = pii_times(CARD, 0.0, 3.8, words, ALL_ENTITIES)
    assert found.spans == [(1.1 - PAD_S, 3.8)]  # no room given: within the stretch


def test_no_personal_data_silences_nothing():
    assert pii_times("Thank you.", 0.0, 1.0, [(0.0, 1.0, "Thank you.")], ALL_ENTITIES).spans == []
