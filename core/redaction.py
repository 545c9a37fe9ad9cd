"""Personal data in what a call said: find it and replace it (REDACT_PII, REDACT_PII_ENTITIES).
Pure functions of text, with no model: what a contact centre hears is numbers read out, and the
way a transcription model writes them is the hard part, not recognising a pattern.

Entities: payment card numbers (13-19 digits passing Luhn), their expiry dates and security
codes when said as such, phone numbers, e-mail addresses and US social security numbers; each
as digits ("4111 1111 1111 1111", "555-010-0199", "jo.doe@example.com") and as spoken words
("four one one one", "double four", "oh", "forty one"), and as Whisper writes a number read out
digit by digit ("41, 1, 1, 1, 1, ..."): a number is read through punctuation, grouping and words.

How: the text is cut into tokens; neighbouring numeric tokens (digits, number words, "double",
"triple") separated only by spaces and punctuation form a run of digits, which is classified by
its length, a checksum (Luhn) and the words just before it (context: "security code", "expires",
"social security", "phone"); e-mail addresses are found written (an @) or spoken ("at", "dot").
Each found entity is a character span (Span), so that a caller can also map it to word times
(to silence the recording); `redact` replaces each with its placeholder, e.g. `[CARD_NUMBER]`.

presidio-analyzer's pattern recognizers (no model needed) were considered: they match digits
written as digits, so the normalisation of spoken and Whisper-written numbers, the bulk of this
module, would be needed anyway, and presidio brings spaCy with it (hundreds of MB) for patterns
that are a few lines here."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum


class Entity(StrEnum):
    CARD_NUMBER = "card_number"
    CARD_EXPIRY = "card_expiry"
    CARD_SECURITY_CODE = "card_security_code"
    PHONE_NUMBER = "phone_number"
    EMAIL = "email"
    US_SSN = "us_ssn"

    @property
    def placeholder(self) -> str:
        return f"[{self.name}]"


ALL_ENTITIES = frozenset(Entity)


@dataclass(frozen=True, slots=True)
class Span:
    start: int  # character offsets in the text: text[start:end] is the entity as said
    end: int
    entity: Entity


@dataclass(frozen=True, slots=True)
class _Token:
    text: str
    start: int
    end: int

    @property
    def word(self) -> str:
        return self.text.lower()


_TOKEN = re.compile(
    r"[A-Za-z0-9_%+'-]+(?:\.[A-Za-z0-9_%+'-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"  # an e-mail
    r"|\d+(?:st|nd|rd|th)?(?![A-Za-z])"  # digits ("4th": Whisper writes some digits so)
    r"|[A-Za-z]+(?:'[A-Za-z]+)?"  # a word
)
_UNITS = {
    "zero": 0, "oh": 0, "o": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
    "six": 6, "seven": 7, "eight": 8, "nine": 9,
}  # fmt: skip
_TEENS = {
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
    "eighty": 80, "ninety": 90,
}  # fmt: skip
_REPEAT = {"double": 2, "triple": 3}
# Numbers said as numbers: Whisper writes "three million eight hundred ninety five million five
# hundred fifty nine thousand seven hundred ninety seven" for a phone number read out as one.
# A scale word only groups: what follows it is a group of three digits ("eighty two thousand
# nine" is 82 009), so the digits said come out in order whatever arithmetic the words make.
_SCALES = {"thousand", "million", "billion", "trillion"}
_WEAK = {"oh", "o"}  # a zero beside other digits; alone ("oh, I see") a word
# What may stand between two numeric tokens of one number: spaces, punctuation, "dash".
_GAP = re.compile(r"[\s,.\-/()]*")
_SPOKEN_GAPS = {"dash", "slash"}  # "oh four slash twenty seven"
_DASH = re.compile(r"(?i)\b(dash|slash)\b")
_MONTHS = {
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
    "sept", "oct", "nov", "dec",
}  # fmt: skip
# Words that are no e-mail's label around "at": "look at this dot com" is no address.
_NOT_LABELS = {
    "look", "me", "us", "him", "her", "them", "it", "is", "was", "be", "are", "am", "this",
    "that", "the", "a", "an", "my", "your", "our", "their", "here", "there", "home", "work",
}  # fmt: skip
_TLDS = {"com", "org", "net", "edu", "gov", "io", "co", "uk", "us", "de", "fr", "info", "biz"}
CONTEXT_WORDS = 6  # how many words before a number its context is read from
_CVV_CONTEXT = ({"security", "code"}, {"cvv"}, {"cvc"}, {"cvv2"}, {"verification"}, {"csc"})
_EXPIRY_CONTEXT = ({"expiry"}, {"expiration"}, {"expires"}, {"exp"}, {"expire"}, {"valid"})
_SSN_CONTEXT = ({"social", "security"}, {"ssn"}, {"social"})
_PHONE_CONTEXT = ({"phone"}, {"number"}, {"call"}, {"reach"}, {"cell"}, {"mobile"}, {"fax"})


@dataclass(frozen=True, slots=True)
class _Run:
    """Neighbouring numeric tokens: tokens[first:last] of the text, and their digits."""

    first: int
    last: int  # exclusive
    digits: str
    groups: tuple[int, ...]  # digits per token (written grouping: 3-2-4, 4-4-4-4)
    plus: bool  # written with a "+" before it: an international phone number


def find_pii(text: str, entities: Iterable[Entity] = ALL_ENTITIES) -> list[Span]:
    """The personal data in `text` of the kinds asked for, as spans in text order."""
    wanted = frozenset(entities)
    tokens = [_Token(m[0], m.start(), m.end()) for m in _TOKEN.finditer(text)]
    spans = _emails(text, tokens) if Entity.EMAIL in wanted else []
    taken = {i for span in spans for i in _covered(tokens, span)}
    for run in _runs(text, tokens, taken):
        entity = _classify(tokens, run)
        if entity is not None and entity in wanted:
            first = _with_month(tokens, run.first) if entity is Entity.CARD_EXPIRY else run.first
            end = tokens[run.last - 1].end
            spans.append(Span(_opened(text, tokens[first].start), end, entity))
    return sorted(spans, key=lambda s: s.start)


def digits_said(text: str) -> str:
    """Every digit `text` says, written or spoken, in order, as the recogniser reads numbers
    ("seven hundred seventy seven" is 777): what a measurement checks a redaction left."""
    tokens = [_Token(m[0], m.start(), m.end()) for m in _TOKEN.finditer(text)]
    return "".join(run.digits for run in _runs(text, tokens, set()))


def _opened(text: str, start: int) -> int:
    """A number's span takes the "(" or "+" written right before it: "(555) 010 0199"."""
    return start - 1 if start > 0 and text[start - 1] in "(+" else start


def redact(text: str, entities: Iterable[Entity] = ALL_ENTITIES) -> str:
    """`text` with each entity found replaced by its placeholder (`[CARD_NUMBER]`, ...)."""
    out, at = [], 0
    for span in find_pii(text, entities):
        if span.start < at:
            at = max(at, span.end)  # overlaps the one before: replaced with it, to its end
            continue
        out += [text[at : span.start], span.entity.placeholder]
        at = span.end
    return "".join([*out, text[at:]])


def parse_entities(listed: str) -> frozenset[Entity]:
    """REDACT_PII_ENTITIES: comma-separated names (`card_number,email`), or `all`."""
    names = {n.strip().lower() for n in listed.split(",") if n.strip()}
    if names == {"all"}:
        return ALL_ENTITIES
    unknown = names - {e.value for e in Entity}
    if unknown or not names:
        known = ", ".join(e.value for e in Entity)
        raise ValueError(f"unknown PII entities {sorted(unknown)}: use `all` or some of {known}")
    return frozenset(Entity(n) for n in names)


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        n = int(char) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def _covered(tokens: Sequence[_Token], span: Span) -> range:
    inside = [i for i, t in enumerate(tokens) if t.start >= span.start and t.end <= span.end]
    return range(inside[0], inside[-1] + 1) if inside else range(0)


def _value(tokens: Sequence[_Token], i: int) -> tuple[str, int] | None:
    """The digits token i (and the tokens it takes with it) says, and how many tokens it took:
    "41" -> ("41", 1); "forty one" -> ("41", 2); "double four" -> ("44", 2)."""
    word = _ordinal_digits(tokens[i].word)
    if word.isdigit():
        return word, 1
    if word in _SCALES:
        return _scaled(tokens, i)
    hundreds = _hundreds(tokens, i)
    if hundreds is not None:
        return hundreds
    if word in _UNITS:
        return str(_UNITS[word]), 1
    if word in _TEENS:
        return str(_TEENS[word]), 1
    if word in _TENS:
        following = tokens[i + 1].word if i + 1 < len(tokens) else ""
        if following in _UNITS and following not in _WEAK and _UNITS[following]:
            return str(_TENS[word] + _UNITS[following]), 2
        return str(_TENS[word]), 1
    if word in _REPEAT and i + 1 < len(tokens):
        repeated = _value(tokens, i + 1)
        if repeated is not None and len(repeated[0]) == 1:
            return repeated[0] * _REPEAT[word], 1 + repeated[1]
    return None


def _scaled(tokens: Sequence[_Token], i: int) -> tuple[str, int]:
    """A scale word ("thousand") and the group of three digits it leads: "thousand nine" ->
    ("009", 2); alone, "000"."""
    group = _value(tokens, i + 1) if i + 1 < len(tokens) else None
    if group is None or tokens[i + 1].word in _SCALES:
        return "000", 1
    return group[0].zfill(3), 1 + group[1]


def _ordinal_digits(word: str) -> str:
    """ "4th" -> "4" (Whisper writes some digits read out so); any other word as it is."""
    if word[:1].isdigit() and word[-2:] in ("st", "nd", "rd", "th"):
        return word[:-2]
    return word


def _hundreds(tokens: Sequence[_Token], i: int) -> tuple[str, int] | None:
    """ "seven hundred seventy seven" -> ("777", 4); "hundred five" -> ("105", 2)."""
    word = tokens[i].word
    head, at = 1, i
    if word in _UNITS and word not in _WEAK and i + 1 < len(tokens):
        if tokens[i + 1].word != "hundred":
            return None
        head, at = _UNITS[word], i + 1
    elif word != "hundred":
        return None
    rest = _value(tokens, at + 1) if at + 1 < len(tokens) else None
    if rest is None or len(rest[0]) > 2 or tokens[at + 1].word.isdigit():
        return str(head * 100), at + 1 - i
    return str(head * 100 + int(rest[0])), at + 1 - i + rest[1]


def _runs(text: str, tokens: Sequence[_Token], taken: set[int]) -> list[_Run]:
    """Maximal runs of numeric tokens with only spaces, punctuation or "dash" between them; a
    run of nothing but "oh" is a word, not a zero."""
    runs: list[_Run] = []
    parts: list[tuple[int, int, str]] = []  # (first token, end token, digits)

    def close() -> None:
        if all(tokens[p[0]].word in _WEAK for p in parts):
            parts.clear()  # "oh" with no digit beside it is a word
        if parts:
            digits = "".join(p[2] for p in parts)
            groups = tuple(len(p[2]) for p in parts)
            plus = text[: tokens[parts[0][0]].start].endswith("+")
            runs.append(_Run(parts[0][0], parts[-1][1], digits, groups, plus))
        parts.clear()

    i = 0
    while i < len(tokens):
        found = None if i in taken else _value(tokens, i)
        if found is None:
            if not (parts and tokens[i].word in _SPOKEN_GAPS):
                close()
            i += 1
            continue
        if parts:
            gap = text[tokens[parts[-1][1] - 1].end : tokens[i].start]
            if not _GAP.fullmatch(_DASH.sub("", gap)):
                close()
        parts.append((i, i + found[1], found[0]))
        i += found[1]
    close()
    return runs


def _between(text: str, tokens: Sequence[_Token], i: int) -> str:
    """The text between token i and the one before it."""
    return text[tokens[i - 1].end : tokens[i].start] if i > 0 else ""


def _context(tokens: Sequence[_Token], first: int) -> set[str]:
    return {t.word for t in tokens[max(0, first - CONTEXT_WORDS) : first]}


def _said(context: set[str], cues: Iterable[set[str]]) -> bool:
    return any(cue <= context for cue in cues)


def _classify(tokens: Sequence[_Token], run: _Run) -> Entity | None:
    """What the run is, by its length, its checksum, its grouping and the words before it."""
    n, context = len(run.digits), _context(tokens, run.first)
    if 13 <= n <= 19 and luhn_valid(run.digits):
        return Entity.CARD_NUMBER
    if n == 9 and (_said(context, _SSN_CONTEXT) or run.groups == (3, 2, 4)):
        return Entity.US_SSN
    if n in (3, 4) and _said(context, _CVV_CONTEXT):
        return Entity.CARD_SECURITY_CODE
    if 3 <= n <= 6 and (_said(context, _EXPIRY_CONTEXT) or _expiry_written(tokens, run)):
        return Entity.CARD_EXPIRY
    if n == 10 or (n == 11 and run.digits[0] == "1"):
        return Entity.PHONE_NUMBER
    if 7 <= n <= 15 and (run.plus or _said(context, _PHONE_CONTEXT)):
        return Entity.PHONE_NUMBER
    if n > 19 and _starts_with_card(tokens, run):
        return Entity.CARD_NUMBER  # read on into its expiry or code: all of it goes
    if n > 19 and _said(context, ({"card"}, {"number"})):
        # A card number misheard (Whisper doubles digits: "4,100,1011,111, ..."), too long for
        # any card, phone or code; a 13-19 digit run failing Luhn stays (a reference number).
        return Entity.CARD_NUMBER
    return None


def _expiry_written(tokens: Sequence[_Token], run: _Run) -> bool:
    """A month named just before the year ("December 2027"), after a card's context."""
    month = run.first > 0 and tokens[run.first - 1].word in _MONTHS
    return month and _said(_context(tokens, run.first - 1), ({"card"}, *_EXPIRY_CONTEXT))


def _with_month(tokens: Sequence[_Token], first: int) -> int:
    return first - 1 if first > 0 and tokens[first - 1].word in _MONTHS else first


def _starts_with_card(tokens: Sequence[_Token], run: _Run) -> bool:
    """A longer run whose first tokens are a card number (13-19 digits passing Luhn)."""
    for end in range(run.last, run.first, -1):
        digits = "".join(v[0] for v in _values(tokens, run.first, end))
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            return True
    return False


def _values(tokens: Sequence[_Token], first: int, end: int) -> list[tuple[str, int]]:
    found, i = [], first
    while i < end:
        value = _value(tokens, i)
        if value is None:
            i += 1
            continue
        found.append(value)
        i += value[1]
    return found


def _emails(text: str, tokens: Sequence[_Token]) -> list[Span]:
    """E-mail addresses: written (one token with an @), or spoken ("jo dot doe at example dot
    com"): the domain is labels joined by "dot" (or a written ".") ending in a known top-level
    domain; the local part is the labels joined by "dot", "underscore", "dash" (or written
    punctuation without spaces) before "at"."""
    spans = [Span(t.start, t.end, Entity.EMAIL) for t in tokens if "@" in t.text]
    for i, token in enumerate(tokens):
        if token.word != "at" or i == 0 or tokens[i - 1].word in _NOT_LABELS:
            continue
        if i + 1 < len(tokens) and tokens[i + 1].word in _NOT_LABELS:
            continue
        end = _domain_end(text, tokens, i + 1)
        if end is None:
            continue
        start = i - 1
        while True:
            joined = _joined(text, tokens, start)
            if joined == 0 or start - joined < 0:
                break
            start -= joined
        spans.append(Span(tokens[start].start, tokens[end - 1].end, Entity.EMAIL))
    return spans + _unlinked_emails(text, tokens, spans)


_EMAIL_CUES = ({"email"}, {"mail"}, {"address"}, {"send"})
LOCAL_PART_WORDS = 3  # what an address said without its "at" takes before its domain


def _unlinked_emails(text: str, tokens: Sequence[_Token], found: list[Span]) -> list[Span]:
    """An address whose "at" the model lost ("jo doe example dot com"): a domain after an
    e-mail's cue ("email", "send it to"), with the few words before it (its local part), up to
    the cue or a word no address holds."""
    spans: list[Span] = []
    for i in range(len(tokens)):
        if any(sp.start <= tokens[i].start < sp.end for sp in [*found, *spans]):
            continue
        if i > 0 and _domain_end(text, tokens, i - 1) is not None:
            continue  # inside a domain that starts earlier
        end = _domain_end(text, tokens, i)
        # The cue comes before the local part too: the context reaches back past it.
        cues = {t.word for t in tokens[max(0, i - CONTEXT_WORDS - LOCAL_PART_WORDS) : i]}
        if end is None or not _said(cues, _EMAIL_CUES):
            continue
        start = i
        while start > 0 and i - start < LOCAL_PART_WORDS:
            word, before = tokens[start - 1].word, tokens[start - 1].start
            if word in _NOT_LABELS or word in {"email", "mail", "to", "at", "address", "send"}:
                break
            if any(sp.start <= before < sp.end for sp in [*found, *spans]):
                break  # the address before this one
            start -= 1
        spans.append(Span(tokens[start].start, tokens[end - 1].end, Entity.EMAIL))
    return spans


def _joined(text: str, tokens: Sequence[_Token], k: int) -> int:
    """How far back the label before token k is, if the two are joined: 2 across a spoken
    joiner ("dot", "underscore", "dash"), 1 across written punctuation without a space, else 0."""
    if k >= 2 and tokens[k - 1].word in ("dot", "underscore", "dash"):
        return 2
    if k >= 1 and re.fullmatch(r"[._-]?", text[tokens[k - 1].end : tokens[k].start]):
        return 1
    return 0


def _domain_end(text: str, tokens: Sequence[_Token], i: int) -> int | None:
    """The end of a domain starting at token i ("example dot com", "example.com"), or None."""
    labels, j = 0, i
    while j < len(tokens) and tokens[j].word.isalnum():
        labels += 1
        if j + 2 < len(tokens) and tokens[j + 1].word == "dot":
            j += 2
        elif j + 1 < len(tokens) and text[tokens[j].end : tokens[j + 1].start] == ".":
            j += 1
        else:
            break
    if labels >= 2 and j < len(tokens) and tokens[j].word in _TLDS:
        return j + 1
    return None
