"""A corpus of contact-centre sentences with personal data planted in them (cards, phones,
e-mails, US SSNs, security codes, expiry dates), each as digits, as spoken words and as the
bundled Whisper writes numbers read out ("41, 1, 1, 1, ..."), and the same kind of sentences
without any: what the PII recogniser (core/redaction.py) is measured on, by its unit test
(tests/core/test_redaction.py) and by `python -m bench redaction`."""

from __future__ import annotations

import random

from core.redaction import Entity, digits_said, luhn_valid

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def card(rng: random.Random, prefix: str = "4", length: int = 16) -> str:
    """A number passing Luhn: the check digit completes random digits."""
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return next(body + d for d in "0123456789" if luhn_valid(body + d))


def spoken(digits: str, rng: random.Random) -> str:
    """Digits read out: one word each, "oh" for some zeros, "double" for some pairs."""
    out, i = [], 0
    while i < len(digits):
        d = digits[i]
        if i + 1 < len(digits) and digits[i + 1] == d and rng.random() < 0.5:
            out += ["double", WORDS[int(d)]]
            i += 2
            continue
        out.append("oh" if d == "0" and rng.random() < 0.5 else WORDS[int(d)])
        i += 1
    return " ".join(out)


def whisper(digits: str, rng: random.Random) -> str:
    """As the bundled Whisper writes digits read one by one: "41, 1, 1, 1, ..." (a first pair
    run together, then one digit at a time, comma-separated)."""
    head = 2 if rng.random() < 0.5 else 1
    return ", ".join([digits[:head], *digits[head:]])


TENS = ["", "ten", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
TEENS = ["ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen"]  # fmt: skip


def _pair(digits: str) -> str:
    """Two digits said as a number ("ninety seven"), or as digits when the first is 0."""
    tens, unit = int(digits[0]), int(digits[1])
    if tens == 0:
        return f"oh {WORDS[unit]}"
    if tens == 1:
        return TEENS[unit]
    return TENS[tens] + (f" {WORDS[unit]}" if unit else "")


def as_numbers(digits: str, groups: tuple[int, ...]) -> str:
    """Digits read out a group at a time as numbers, as people say a phone number ("three
    hundred eighty nine, five five five, ninety seven ninety seven"): a group of three as
    hundreds, of four as two pairs; one that starts with 0 digit by digit."""
    said, at = [], 0
    for size in groups:
        group = digits[at : at + size]
        at += size
        if group[0] == "0" or size not in (3, 4):
            said.append(" ".join(WORDS[int(d)] for d in group))
        elif size == 3:
            rest = "" if group[1:] == "00" else " " + _pair(group[1:])
            said.append(f"{WORDS[int(group[0])]} hundred{rest}")
        else:
            said.append(f"{_pair(group[:2])} {_pair(group[2:])}")
    return ", ".join(said)


def grouped(digits: str, sizes: tuple[int, ...], sep: str) -> str:
    parts, at = [], 0
    for size in sizes:
        parts.append(digits[at : at + size])
        at += size
    return sep.join(parts)


def forms(digits: str, rng: random.Random, groups: tuple[int, ...]) -> list[str]:
    return [
        digits,
        grouped(digits, groups, " "),
        grouped(digits, groups, "-"),
        spoken(digits, rng),
        whisper(digits, rng),
    ]


TEMPLATES = {
    Entity.CARD_NUMBER: [
        "My card number is {}.",
        "Sure, it's {} and that's a visa.",
        "okay the long number on the front is {} got it",
    ],
    Entity.PHONE_NUMBER: [
        "You can call me back on {} any time.",
        "My phone number is {}.",
        "the best number to reach me is {} thanks",
    ],
    Entity.EMAIL: [
        "My email is {} if that helps.",
        "Send the receipt to {} please.",
    ],
    Entity.US_SSN: [
        "My social security number is {}.",
        "the last thing, my SSN, is {}",
    ],
    Entity.CARD_SECURITY_CODE: [
        "The security code on the back is {}.",
        "CVV is {}",
    ],
    Entity.CARD_EXPIRY: [
        "It expires {}.",
        "The expiry date is {}, I think.",
    ],
}
CLEAN = [
    "Hello, thanks for calling, how can I help you today?",
    "I ordered 2 items on the 15th and only one arrived.",
    "It cost 49 dollars and 99 cents, order number is on the email.",
    "Can you look at this for me, I have been waiting for 3 weeks.",
    "Oh I see, so the package is at the depot until Monday.",
    "We were there at 10 30 in the morning with 4 people.",
    "The problem is resolved, great, thank you so much for your help.",
    "I'm calling about my account, it says I owe 120 dollars.",
    "My flight is at 7 and I land at 9 15.",
    "Room 214 on the second floor, near the lift.",
    "Press one for sales, two for support, or stay on the line.",
    "That was in 2019, about five years ago now.",
    "I want to cancel, this is the third time I've called about it.",
    "Yes, the reference you gave me was on the letter dated the 3rd of May.",
    "We have been waiting two hundred and fifty days, about three thousand people.",
    "The flight leaves at seven fifteen and lands at nine forty five.",
    "My email has been broken since last week, can you send it by post?",
    "It was nineteen ninety nine, the year before two thousand.",
]


def planted(rng: random.Random) -> list[tuple[str, Entity, str]]:
    """(sentence, entity, its digits or domain): every entity in every form and template."""
    corpus: list[tuple[str, Entity, str]] = []
    for _ in range(6):
        number = card(rng, rng.choice(["4", "51", "37", "6011"]), rng.choice([15, 16]))
        groups = (4, 4, 4, 4) if len(number) == 16 else (4, 6, 5)
        for form in forms(number, rng, groups):
            corpus += [
                (t.format(form), Entity.CARD_NUMBER, number) for t in TEMPLATES[Entity.CARD_NUMBER]
            ]
        phone = rng.choice("23456789") + "".join(rng.choice("0123456789") for _ in range(9))
        for form in [
            *forms(phone, rng, (3, 3, 4)),
            f"({phone[:3]}) {phone[3:6]}-{phone[6:]}",
            as_numbers(phone, (3, 3, 4)),
        ]:
            corpus += [
                (t.format(form), Entity.PHONE_NUMBER, phone) for t in TEMPLATES[Entity.PHONE_NUMBER]
            ]
        ssn = "".join(rng.choice("123456789") for _ in range(9))
        for form in [grouped(ssn, (3, 2, 4), "-"), spoken(ssn, rng), whisper(ssn, rng)]:
            corpus += [(t.format(form), Entity.US_SSN, ssn) for t in TEMPLATES[Entity.US_SSN]]
        code = "".join(rng.choice("0123456789") for _ in range(rng.choice([3, 4])))
        for form in [code, spoken(code, rng)]:
            corpus += [
                (t.format(form), Entity.CARD_SECURITY_CODE, code)
                for t in TEMPLATES[Entity.CARD_SECURITY_CODE]
            ]
        month, year = rng.randint(1, 12), rng.randint(25, 33)
        expiry = f"{month:02d}{year}"
        for form in [f"{month:02d}/{year}", spoken(expiry, rng), f"December 20{year}"]:
            digits = expiry if "December" not in form else f"20{year}"
            corpus += [
                (t.format(form), Entity.CARD_EXPIRY, digits) for t in TEMPLATES[Entity.CARD_EXPIRY]
            ]
        user, domain = (
            rng.choice(["jo.doe", "sam_lee", "mike42"]),
            rng.choice(["example", "mailhost"]),
        )
        spoken_user = user.replace(".", " dot ").replace("_", " underscore ")
        for form in [
            f"{user}@{domain}.com",
            f"{spoken_user} at {domain} dot com",
            f"{user} at {domain}.org",
            f"{spoken_user} {domain} dot com",  # the "at" lost, as the local model loses it
        ]:
            corpus += [(t.format(form), Entity.EMAIL, domain) for t in TEMPLATES[Entity.EMAIL]]
    return corpus


def digits_left(text: str) -> str:
    """Every digit the text still says, written or spoken (placeholders aside), read as the
    recogniser reads numbers: Whisper writes a phone number read out as "three million eight
    hundred ninety five million ...", which says its digits as much as "3, 8, 9, ..." does."""
    return digits_said(text)
