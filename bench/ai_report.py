"""bench/ai_quality.py's section of BENCHMARKS.md, from its measurements."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from bench.ai_corpus import (
    CONDITIONS,
    NOISE_SNR_DB,
    SENTENCES,
    VOICES,
    WORDS_PER_MINUTE,
    edit_distance,
    heard_share,
    words,
)

WER_TARGET, RTF_TARGET, SENTIMENT_TARGET = 0.25, 0.1, 0.8
# The previous engine's last figures, for when pocketsphinx is not installed to measure again.
PREVIOUS = (
    "the previous engine, pocketsphinx 5.1.1, not measured in this run; its figures from this"
    " file's earlier section (2026-11, 12 sentences, en-us, clean, each alone): word error rate"
    " 83%, real-time factor 0.39, sentiment right on 7/8 polar sentences"
)
Sentiment = Callable[[str], Any]


def wer(heard: Sequence[Any]) -> float:
    said = sum(len(words(h.said)) for h in heard)
    return sum(edit_distance(words(h.said), words(h.transcript)) for h in heard) / max(said, 1)


def rtf(heard: Sequence[Any]) -> float:
    return float(sum(h.cpu_s for h in heard) / max(sum(h.audio_s for h in heard), 1e-9))


def right(heard: Sequence[Any], polar: bool, sentiment: Sentiment) -> tuple[int, int]:
    said = [(s, t) for h in heard for s, t in h.utterances if (s.label != "neutral") == polar]
    return sum(sentiment(t).label == s.label for s, t in said), len(said)


def _share(counts: tuple[int, int]) -> str:
    return f"{counts[0]}/{counts[1]} ({counts[0] / max(counts[1], 1):.0%})"


def _in(heard: Sequence[Any], voice: str | None = None, condition: str | None = None) -> list[Any]:
    return [h for h in heard if voice in (None, h.voice) and condition in (None, h.condition)]


def _pct(heard: Sequence[Any]) -> str:
    return f"{wer(heard):.0%}" if heard else "—"


def targets(runs: Sequence[Any], call: dict[str, Any], sentiment: Sentiment) -> list[str]:
    calls, alone = runs[0].heard, runs[1].heard if len(runs) > 1 else []
    clean = wer(_in(calls, None, "clean"))
    polar_clean = right(_in(calls, None, "clean"), True, sentiment)
    polar_noisy = right(_in(calls, None, "noisy"), True, sentiment)
    call_rtf = call["cpu_s"] / call["audio_s"]

    def met(ok: bool) -> str:
        return "met" if ok else "**missed**"

    rows = [
        "| target (tiny.en as the provider runs it) | measured | |",
        "|---|---|---|",
        f"| word error rate ≤ {WER_TARGET:.0%} on the clean telephone corpus (as calls) |"
        f" {clean:.1%} | {met(clean <= WER_TARGET)} |",
    ]
    if alone:
        alone_clean = wer(_in(alone, None, "clean"))
        rows.append(
            f"| ... each sentence heard alone | {alone_clean:.1%} |"
            f" {met(alone_clean <= WER_TARGET)} |"
        )
    rows.append(
        f"| real-time factor ≤ {RTF_TARGET} per core: calls (segments up to 30 s) |"
        f" {rtf(calls):.3f} (one call through the pool: {call_rtf:.3f}) |"
        f" {met(max(rtf(calls), call_rtf) <= RTF_TARGET)} |"
    )
    if alone:
        rows.append(
            f"| ... each sentence alone (padded to Whisper's 30 s window) | {rtf(alone):.3f} |"
            f" {met(rtf(alone) <= RTF_TARGET)} |"
        )
    ok = polar_clean[0] / max(polar_clean[1], 1)
    rows.append(
        f"| sentiment right on ≥ {SENTIMENT_TARGET:.0%} of clearly polar utterances (clean) |"
        f" {_share(polar_clean)}; with noise {_share(polar_noisy)} |"
        f" {met(ok >= SENTIMENT_TARGET)} |"
    )
    return rows


def summary(runs: Sequence[Any], sentiment: Sentiment) -> list[str]:
    rows = [
        "| engine | heard as | WER clean | WER noisy | CPU s per audio s | polar right, clean |"
        " polar right, noisy | neutral right | load, CPU s | process memory |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        clean, noisy = _in(run.heard, None, "clean"), _in(run.heard, None, "noisy")
        memory = f"{run.memory_mb:.0f} MB" if run.memory_mb else "—"
        rows.append(
            f"| {run.engine.name} ({run.engine.about}) | {run.mode} | {_pct(clean)} |"
            f" {_pct(noisy)} | {rtf(run.heard):.3f} | {_share(right(clean, True, sentiment))} |"
            f" {_share(right(noisy, True, sentiment)) if noisy else '—'} |"
            f" {_share(right(run.heard, False, sentiment))} | {run.load_s:.1f} | {memory} |"
        )
    return rows


def by_voice(runs: Sequence[Any]) -> list[str]:
    cells = [(v, c) for v in VOICES for c in CONDITIONS]
    rows = [
        "| engine, heard as | " + " | ".join(f"{v}, {c}" for v, c in cells) + " |",
        "|---|" + "---|" * len(cells),
    ]
    for run in runs:
        values = " | ".join(_pct(_in(run.heard, v, c)) for v, c in cells)
        rows.append(f"| {run.engine.name}, {run.mode} | {values} |")
    return rows


def control_rows(runs: Sequence[Any], checks: Sequence[tuple[str, str, str]]) -> list[str]:
    alone = [r for r in runs if r.engine.name == "tiny.en" and r.mode == "utterances"]
    if not checks or not alone:
        return []
    clean = _in(alone[0].heard, VOICES[0], "clean")

    def share(pairs: Sequence[tuple[str, str]]) -> str:
        return f"{sum(heard_share(s, h) for s, h in pairs) / len(pairs):.0%}"

    scrambled = share([(s, x) for s, x, _ in checks])
    misread = share([(s, m) for s, _, m in checks])
    return [
        f"| tiny.en, each sentence alone ({VOICES[0]}, clean) | words of 4+ letters heard |",
        "|---|---|",
        f"| as said | {share([(h.said, h.transcript) for h in clean])} |",
        f"| the same audio, its 20 ms frames shuffled | {scrambled} |",
        f"| the same audio, μ-law read as 16-bit linear | {misread} |",
        "",
    ]


def sentences(runs: Sequence[Any], sentiment: Sentiment) -> list[str]:
    heard = _in(runs[0].heard, VOICES[0], "clean")
    if not heard:
        return []
    noisy = _in(runs[0].heard, VOICES[0], "noisy")
    with_noise = dict(noisy[0].utterances) if noisy else {}
    rows = [
        f"| said | label | tiny.en heard, in the call ({VOICES[0]}, clean) | WER |"
        " sentiment heard | heard with noise | sentiment |",
        "|---|---|---|---|---|---|---|",
    ]
    for sentence, text in heard[0].utterances:
        said = words(sentence.text)
        noise_text = with_noise.get(sentence, "")
        rows.append(
            f"| {sentence.text} | {sentence.label} | {text or '(nothing)'} |"
            f" {edit_distance(said, words(text)) / len(said):.2f} | {sentiment(text).label} |"
            f" {noise_text or '(nothing)'} | {sentiment(noise_text).label} |"
        )
    return rows


def section(
    runs: Sequence[Any],
    checks: Sequence[tuple[str, str, str]],
    call: dict[str, Any],
    wide: Any,
    machine: str,
    took_s: float,
    sentiment: Sentiment,
) -> list[str]:
    ceiling = sum(sentiment(s.text).label == s.label for s in SENTENCES if s.label != "neutral")
    polar = sum(s.label != "neutral" for s in SENTENCES)
    said = words(" ".join(s.text for s in SENTENCES))
    call_wer = edit_distance(said, words(call["transcript"])) / len(said)
    measured = any(r.engine.name == "pocketsphinx" for r in runs)
    previous = "" if measured else f" Not in the table: {PREVIOUS}."
    return [
        "## The local AI provider: quality and cost (AI_PROVIDER=local)",
        "",
        "Command: `python -m bench ai_quality --write` (part of `make bench`; this run"
        f" took {took_s / 60:.1f} min). Corpus (bench/ai_corpus.py, made at run time):"
        f" {len(SENTENCES)} sentences (8 positive, 8 negative, 8 neutral, with numbers and"
        f" names) spoken by espeak-ng at {WORDS_PER_MINUTE} words a minute in {len(VOICES)}"
        f" voices ({', '.join(VOICES)}), 8 kHz μ-law, clean and with white noise"
        f" {NOISE_SNR_DB:.0f} dB below the speech. *Calls*: per voice and condition, the"
        " sentences one after another, 0.6 s apart, as one call (about 100 s), cut and"
        " transcribed as the provider does; a segment counts for the sentence it overlaps"
        " most. *Utterances*: each sentence heard alone. Words are compared after a"
        " normalisation (lower case, no punctuation, numbers as words, common contractions"
        " expanded). Whisper runs as the provider runs it (jobs/whisper.py: CTranslate2 int8,"
        " one thread, word timestamps, Silero VAD). CPU seconds are one thread's. Machine:"
        f" {machine} (other work slows wall times, not CPU seconds).",
        "",
        *targets(runs, call, sentiment),
        "",
        *summary(runs, sentiment),
        "",
        f"VADER on the sentences themselves (the lexicon's ceiling): {ceiling}/{polar} polar"
        f" sentences right.{previous}",
        "",
        "Word error rate per voice and condition:",
        "",
        *by_voice(runs),
        "",
        *control_rows(runs, checks),
        f"The clean {VOICES[0]} call ({call['audio_s']:.0f} s) through the provider itself"
        " (LocalAI: segments, the process pool): "
        f"{call['wall_s']:.1f} s wall, {call['cpu_s']:.1f} CPU s in the pool"
        f" ({call['cpu_s'] / call['audio_s']:.3f} per second of audio), {call['segments']}"
        f" timed segments, word error rate {call_wer:.0%}.",
        "",
        "Reading: the telephone is what costs Whisper most here: the same"
        f" {VOICES[0]} sentences at 16 kHz, before the telephone's 8 kHz μ-law, each heard"
        f" alone by tiny.en: word error rate {wer([wide]):.0%}. Whisper pads what it hears to a"
        " 30 s window, so a sentence alone costs nearly what 30 s cost and has no context around"
        " it: the calls' figures are the ones to plan with. A real-time factor is per core; a"
        " worker runs as many calls at once as AI_MAX_CONCURRENCY allows, at most its cores."
        " Hard audio costs more: when a decode looks wrong, Whisper decodes it again once, at"
        " temperature 0.2 (jobs/whisper.py's DECODING; every row here decodes so). espeak-ng's"
        " voices are not people: real callers"
        " will differ, in either direction.",
        "",
        *sentences(runs, sentiment),
    ]
