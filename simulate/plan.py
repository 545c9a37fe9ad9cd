"""What a simulated call says and how the network mangles it, decided up front from one seed.

A call is a few sentences of one mood (so the sentiment it should get is known), spoken as 20 ms
frames. The network model then decides, frame by frame, what is lost, reordered and duplicated,
in exactly the shares asked (rounded to whole frames), and when each delivery is due. The first
and last frames always arrive, so the gaps the server counts are exactly the frames lost; a
reordered frame arrives after at least one later frame, so the server counts it out of order.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Literal

from simulate import speech
from simulate.speech import Label, Sentence

Transport = Literal["http", "ws", "audiosocket", "asterisk", "freeswitch", "audiohook"]
TRANSPORTS: tuple[Transport, ...] = ("http", "ws")  # what `mixed` alternates
# The PBX feeds (simulate/pbx.py's peers): two parties, in order over TCP, so no network faults;
# their call ids are UUIDs (AudioSocket's and AudioHook's are).
PBX_TRANSPORTS: tuple[Transport, ...] = ("audiosocket", "asterisk", "freeswitch", "audiohook")
FRAME_S = speech.FRAME_MS / 1000
MAX_SHARE = 0.5  # beyond this the call is noise, not a call
MAX_DISPLACEMENT = 3  # a reordered or duplicated frame arrives up to this many frames late
LEAD_IN_MS = 200  # a caller does not speak the instant the line opens
PAUSE_MS = 300  # between two sentences


@dataclass(frozen=True)
class Faults:
    """Shares of frames (0 to 0.5) lost, reordered and duplicated, and up to how late a frame is
    sent beyond its time (jitter)."""

    loss: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0
    jitter_ms: float = 0.0

    def __post_init__(self) -> None:
        for name in ("loss", "reorder", "duplicate"):
            share = getattr(self, name)
            if not 0 <= share <= MAX_SHARE:
                raise ValueError(f"{name} must be a share between 0 and {MAX_SHARE}, not {share}")
        if self.jitter_ms < 0:
            raise ValueError(f"jitter must not be negative, not {self.jitter_ms}")


@dataclass(frozen=True)
class Delivery:
    """One frame sent: its sequence (index into the call's frames), when it is due (seconds of
    audio from the call's start, before pacing) and whether it is a second copy."""

    sequence: int
    due_s: float
    copy: bool = False


@dataclass(frozen=True)
class Schedule:
    deliveries: tuple[Delivery, ...]  # in the order they are sent
    lost: frozenset[int]
    reordered: frozenset[int]
    duplicated: frozenset[int]


@dataclass(frozen=True)
class CallPlan:
    call_id: str
    transport: Transport
    mood: Label  # the sentiment the call should get
    sentences: tuple[Sentence, ...]
    frame_count: int
    schedule: Schedule
    agent_sentences: tuple[Sentence, ...] = ()  # a PBX feed's second party (the agent)

    @property
    def audio_s(self) -> float:
        return self.frame_count * FRAME_S

    @property
    def parties(self) -> int:
        return 2 if self.agent_sentences else 1

    def frames(self) -> list[bytes]:
        """The call's frames, built when it is sent: a thousand planned calls hold no audio."""
        return _padded(speech.frames(call_audio(self.sentences)), self.frame_count)

    def agent_frames(self) -> list[bytes]:
        """The agent's frames, as many as the caller's (silence after the agent is done)."""
        return _padded(speech.frames(call_audio(self.agent_sentences)), self.frame_count)


def _padded(frames: list[bytes], count: int) -> list[bytes]:
    silent = speech.silence(speech.FRAME_MS)
    return frames + [silent] * (count - len(frames))


def call_audio(sentences: tuple[Sentence, ...]) -> bytes:
    """A short silence, then the sentences with a pause between each two."""
    spoken = (speech.synthesise(sentence.text) for sentence in sentences)
    return speech.silence(LEAD_IN_MS) + speech.silence(PAUSE_MS).join(spoken)


def schedule(frame_count: int, faults: Faults, rng: random.Random) -> Schedule:
    """Which frames are lost, reordered and duplicated, and the order and times they are sent."""
    inner = list(range(1, frame_count - 1))  # the first and last frames always arrive
    lost = frozenset(rng.sample(inner, min(len(inner), round(faults.loss * frame_count))))
    reordered = _pick_reordered(frame_count, lost, round(faults.reorder * frame_count), rng)
    steady = [s for s in range(frame_count) if s not in lost and s not in reordered]
    duplicated = frozenset(
        rng.sample(steady, min(len(steady), round(faults.duplicate * frame_count)))
    )
    deliveries = [Delivery(s, s * FRAME_S) for s in range(frame_count) if s not in lost]
    deliveries = [
        # Half a frame more than whole frames late: it falls between two frames, never on a tie.
        Delivery(d.sequence, (d.sequence + rng.randint(1, MAX_DISPLACEMENT) + 0.5) * FRAME_S)
        if d.sequence in reordered
        else d
        for d in deliveries
    ]
    deliveries += [
        Delivery(s, (s + rng.randint(1, MAX_DISPLACEMENT) + 0.5) * FRAME_S, copy=True)
        for s in sorted(duplicated)
    ]
    deliveries.sort(key=lambda d: d.due_s)
    if faults.jitter_ms:
        # Jitter delays a send, it does not reorder: the order above is the network's decision.
        deliveries = [
            Delivery(d.sequence, d.due_s + rng.uniform(0, faults.jitter_ms) / 1000, d.copy)
            for d in deliveries
        ]
    return Schedule(tuple(deliveries), lost, reordered, duplicated)


def _pick_reordered(
    frame_count: int, lost: frozenset[int], wanted: int, rng: random.Random
) -> frozenset[int]:
    """Frames whose next frame arrives on time, so each one, sent late, lands after it: no two
    reordered frames side by side, none just before a lost one."""
    candidates = [
        s
        for s in range(frame_count - 1)
        if s not in lost and s + 1 not in lost and s + 1 != frame_count - 1
    ]
    rng.shuffle(candidates)
    chosen: set[int] = set()
    for sequence in candidates:
        if len(chosen) >= wanted:
            break
        if sequence - 1 not in chosen and sequence + 1 not in chosen:
            chosen.add(sequence)
    return frozenset(chosen)


def plan_calls(
    count: int,
    transport: Transport | Literal["mixed"],
    faults: Faults,
    rng: random.Random,
    run_id: str,
) -> list[CallPlan]:
    """`count` calls, each a few sentences of one mood spoken as frames, with its schedule."""
    sayable = speech.speakable()
    neutral = [sentence for sentence in sayable if sentence.label == "neutral"]
    plans = []
    for index in range(count):
        mood, sentences = _script(sayable, rng)
        frame_count = len(speech.frames(call_audio(sentences)))
        chosen: Transport = TRANSPORTS[index % 2] if transport == "mixed" else transport
        call_id, network = f"sim-{run_id}-{index:04d}", faults
        agent: tuple[Sentence, ...] = ()
        if chosen in PBX_TRANSPORTS:
            call_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"callstream-simulate:{call_id}"))
            agent = (rng.choice(neutral),)  # the agent answers: a neutral sentence
            frame_count = max(frame_count, len(speech.frames(call_audio(agent))))
            network = Faults()  # a PBX's stream is TCP: in order, nothing lost or doubled
        plans.append(
            CallPlan(
                call_id=call_id,
                transport=chosen,
                mood=mood,
                sentences=sentences,
                frame_count=frame_count,
                schedule=schedule(frame_count, network, rng),
                agent_sentences=agent,
            )
        )
    return plans


def _script(
    sayable: tuple[Sentence, ...], rng: random.Random
) -> tuple[Label, tuple[Sentence, ...]]:
    """A mood, and two or three sentences that say it: polar calls open with a neutral sentence
    (the reason for calling), then the polar ones; a neutral call is neutral throughout."""
    by_label: dict[Label, list[Sentence]] = {"positive": [], "negative": [], "neutral": []}
    for sentence in sayable:
        by_label[sentence.label].append(sentence)
    mood: Label = rng.choice(("positive", "negative", "neutral"))
    if mood == "neutral":
        return mood, tuple(rng.sample(by_label["neutral"], min(2, len(by_label["neutral"]))))
    polar = rng.sample(by_label[mood], min(2, len(by_label[mood])))
    return mood, (rng.choice(by_label["neutral"]), *polar)
