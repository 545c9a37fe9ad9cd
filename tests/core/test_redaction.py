"""The PII recogniser (core/redaction.py) on a corpus of contact-centre sentences: entities
planted as digits, as spoken words and as Whisper writes numbers read out, and the same
sentences without them; at least 95% of planted entities redacted, at most 2% of other words."""

from __future__ import annotations

import random

import pytest

from bench.pii_corpus import CLEAN, digits_left, planted
from core.redaction import ALL_ENTITIES, Entity, find_pii, parse_entities, redact


def test_at_least_95_percent_of_planted_entities_are_redacted_in_every_form():
    corpus = planted(random.Random(26))
    missed = []
    for sentence, entity, value in corpus:
        redacted = redact(sentence)
        gone = entity.placeholder in redacted and (
            value not in redacted if entity is Entity.EMAIL else value not in digits_left(redacted)
        )
        if not gone:
            missed.append((sentence, redacted))
    share = 1 - len(missed) / len(corpus)

    assert len(corpus) > 300
    assert share >= 0.95, missed[:10]
    # Cards, phones and e-mails, the ones the issue measures, each on their own.
    for entity in (Entity.CARD_NUMBER, Entity.PHONE_NUMBER, Entity.EMAIL):
        mine = [c for c in corpus if c[1] is entity]
        lost = [m for m in missed if any(m[0] == c[0] for c in mine)]
        assert 1 - len(lost) / len(mine) >= 0.95, (entity, lost[:5])


def test_at_most_2_percent_of_other_words_are_redacted():
    words = redacted_words = 0
    for sentence in CLEAN:
        found = find_pii(sentence)
        words += len(sentence.split())
        redacted_words += sum(len(sentence[s.start : s.end].split()) for s in found)

    assert redacted_words / words <= 0.02, [(s, redact(s)) for s in CLEAN if find_pii(s)]


def test_the_words_around_an_entity_are_kept_as_said():
    said = "My card number is 41, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1. Thanks!"

    assert redact(said) == "My card number is [CARD_NUMBER]. Thanks!"
    assert redact("call (555) 010-0199 now") == "call [PHONE_NUMBER] now"
    assert redact("four one one one one one one one one one one one one one one one") == (
        "[CARD_NUMBER]"
    )


def test_a_number_failing_luhn_is_no_card_and_entities_not_asked_for_stay():
    assert redact("my card is 4111 1111 1111 1112") == "my card is 4111 1111 1111 1112"
    assert redact("mail jo@example.com", {Entity.CARD_NUMBER}) == "mail jo@example.com"
    assert [s.entity for s in find_pii("jo@example.com or 555-010-0199")] == [
        Entity.EMAIL,
        Entity.PHONE_NUMBER,
    ]


@pytest.mark.parametrize(
    ("listed", "wanted"),
    [("all", ALL_ENTITIES), ("card_number, email", {Entity.CARD_NUMBER, Entity.EMAIL})],
)
def test_redact_pii_entities_names_what_is_redacted(listed: str, wanted: set[Entity]):
    assert parse_entities(listed) == wanted


def test_an_unknown_entity_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown PII entities.*card_number"):
        parse_entities("card")
