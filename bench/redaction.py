"""Personal data caught before storage: `python -m bench redaction` (issue 26).

On the corpus of bench/pii_corpus.py (cards, phones, e-mails, US SSNs, security codes and expiry
dates planted as digits, as spoken words and as Whisper writes numbers read out; and sentences
without any), REDACT_PII's recogniser (core/redaction.py) as the transcription path runs it:
- with the mock (a call of text packets: the text is the transcript): the share of planted
  entities redacted, by entity, and the share of the clean sentences' words redacted;
- with the local model: sentences spoken by espeak-ng, transcribed by the bundled Whisper, then
  redacted, counting only the entities Whisper heard (its own mistakes are not the recogniser's).
Targets: at least 95% of card numbers, phones and e-mails; at most 2% of other words.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from typing import Any

from bench.pii_corpus import CLEAN, digits_left, planted
from bench.suite import Options, Outcome, command
from core.audio import TELEPHONY, decode
from core.redaction import Entity, redact

HEADING = "## PII redaction"
TARGETS = {Entity.CARD_NUMBER: 0.95, Entity.PHONE_NUMBER: 0.95, Entity.EMAIL: 0.95}
FALSE_TARGET = 0.02
SPOKEN_PER_ENTITY = 16  # the local model's share: sentences per entity (full run)
QUICK_SPOKEN = 1


# An address as the local model writes one it heard: its domain misheard ("mycountymail.com",
# "familyandoutlook.com"), but still an address a reader of the transcript would recognise.
ADDRESS = re.compile(r"[a-z0-9]\s*(\.|\bdot\b)\s*(com|org|net)\b")


def still_says(text: str, entity: Entity, secret: str) -> bool:
    """Whether `text` still holds the planted value (its digits, written or spoken; an e-mail's
    domain, or anything written as an address)."""
    if entity is Entity.EMAIL:
        return secret in text.lower() or ADDRESS.search(text.lower()) is not None
    return secret in digits_left(text)


def share(caught: Counter[str], total: Counter[str]) -> dict[str, float]:
    return {k: round(caught[k] / total[k], 3) for k in total}


def text_figures(corpus: list[tuple[str, Entity, str]]) -> dict[str, Any]:
    caught, total = Counter[str](), Counter[str]()
    t0 = time.process_time()
    for sentence, entity, secret in corpus:
        total[entity.value] += 1
        caught[entity.value] += not still_says(redact(sentence), entity, secret)
    cpu_ms = (time.process_time() - t0) * 1000 / max(len(corpus), 1)
    words = sum(len(s.split()) for s in CLEAN)
    lost = sum(len(re.findall(r"\[[A-Z_]+\]", redact(s))) for s in CLEAN)
    return {
        "planted": sum(total.values()),
        "redacted": share(caught, total),
        "overall": round(sum(caught.values()) / max(sum(total.values()), 1), 3),
        "false_share": round(lost / max(words, 1), 4),
        "cpu_ms_per_sentence": round(cpu_ms, 3),
    }


def spoken_figures(corpus: list[tuple[str, Entity, str]], per_entity: int) -> dict[str, Any]:
    """Each chosen sentence spoken, heard by Whisper, redacted."""
    from jobs import whisper  # the bundled model: loaded in this process
    from simulate import speech

    whisper.model_folder()  # raises when the model is missing: the suite says so
    rng = random.Random(11)
    chosen = []
    for entity in TARGETS:
        mine = [c for c in corpus if c[1] is entity]
        chosen += rng.sample(mine, min(per_entity, len(mine)))
    heard, caught, total = Counter[str](), Counter[str](), Counter[str]()
    t0 = time.process_time()
    audio_s = 0.0
    for sentence, entity, secret in chosen:
        total[entity.value] += 1
        samples = decode(speech.synthesise(sentence), TELEPHONY)
        audio_s += len(samples) / TELEPHONY.rate
        said = " ".join(s.text for s in whisper.transcribe_pcm(samples, TELEPHONY.rate))
        if not still_says(said, entity, secret):
            continue  # Whisper did not hear it as said: nothing to redact of it
        heard[entity.value] += 1
        caught[entity.value] += not still_says(redact(said), entity, secret)
    return {
        "spoken": sum(total.values()),
        "heard": dict(heard),
        "redacted_of_heard": share(caught, heard),
        "cpu_s_per_audio_minute": round((time.process_time() - t0) / max(audio_s / 60, 1e-9), 2),
    }


def _spoken_cell(figures: dict[str, Any], entity: str) -> str:
    spoken = figures.get("spoken")
    if not spoken:
        return "not measured"
    heard = spoken["heard"].get(entity, 0)
    if not heard:
        return "none heard" if entity in {e.value for e in TARGETS} else "not spoken"
    return f"{spoken['redacted_of_heard'][entity]:.1%} of {heard} heard"


def render(figures: dict[str, Any], name: str) -> list[str]:
    text = figures["text"]
    rows = [f"| {entity} | {text['redacted'][entity]:.1%} | {_spoken_cell(figures, entity)} |"
            for entity in text["redacted"]]  # fmt: skip
    lines = [
        HEADING,
        "",
        f"`{command(name)}`: {text['planted']} planted entities (every form: digits, spoken "
        'words, Whisper\'s "41, 1, 1, ...", phones said as numbers, e-mails without their "at") '
        "and clean contact-centre sentences "
        "(bench/pii_corpus.py), through REDACT_PII's recogniser as the transcription path runs "
        "it. Targets: 95% of card numbers, phones and e-mails; at most 2% of other words.",
        "",
        "| entity | redacted (mock: the text as said) | redacted (local model: spoken, heard) |",
        "|---|---|---|",
        *rows,
        "",
        f"Overall {text['overall']:.1%}; words of the clean sentences redacted: "
        f"{text['false_share']:.2%}; {text['cpu_ms_per_sentence']} ms of CPU a sentence.",
    ]
    if figures.get("spoken"):
        lines.append(
            f"Local model: {figures['spoken']['spoken']} sentences spoken by espeak-ng, "
            f"{figures['spoken']['cpu_s_per_audio_minute']} s of CPU per minute of audio "
            "(synthesis and Whisper included)."
        )
    elif figures.get("spoken_skipped"):
        lines.append(f"Local model: not measured ({figures['spoken_skipped']}).")
    return lines


def run(options: Options) -> Outcome:
    corpus = planted(random.Random(7))
    figures: dict[str, Any] = {"text": text_figures(corpus)}
    try:
        figures["spoken"] = spoken_figures(
            corpus, QUICK_SPOKEN if options.quick else SPOKEN_PER_ENTITY
        )
    except (ValueError, ImportError, OSError) as exc:  # no model, no espeak-ng: said, not hidden
        figures["spoken_skipped"] = f"{type(exc).__name__}: {exc}"
    problems = [
        f"{entity.value}: {figures['text']['redacted'][entity.value]:.1%} redacted "
        f"(target {target:.0%})"
        for entity, target in TARGETS.items()
        if figures["text"]["redacted"][entity.value] < target
    ]
    if figures["text"]["false_share"] > FALSE_TARGET:
        problems.append(f"{figures['text']['false_share']:.2%} of clean words redacted")
    return Outcome(render(figures, "redaction"), figures, problems)
