"""The network fault model: exact shares, deterministic with a seed, and what the server will
count (each lost frame a gap, each late frame out of order, each copy a duplicate)."""

from __future__ import annotations

import random
import shutil

import pytest

from simulate import speech
from simulate.plan import FRAME_S, MAX_DISPLACEMENT, Faults, Schedule, plan_calls, schedule

FAULTS = Faults(loss=0.02, reorder=0.03, duplicate=0.01)


def arrival_counts(planned: Schedule) -> tuple[int, int, int]:
    """What a receiver that dedups and tracks the highest sequence counts: (new packets,
    duplicates, out of order), the way the server does."""
    seen: set[int] = set()
    highest, duplicates, late = -1, 0, 0
    for delivery in planned.deliveries:
        if delivery.sequence in seen:
            duplicates += 1
            continue
        seen.add(delivery.sequence)
        late += delivery.sequence < highest
        highest = max(highest, delivery.sequence)
    return len(seen), duplicates, late


def test_the_shares_asked_are_the_shares_sent_to_the_frame():
    planned = schedule(1000, FAULTS, random.Random(1))
    assert (len(planned.lost), len(planned.reordered), len(planned.duplicated)) == (20, 30, 10)
    assert arrival_counts(planned) == (980, 10, 30)


@pytest.mark.parametrize("seed", range(20))
def test_the_server_will_count_exactly_the_faults_planned(seed: int):
    rng = random.Random(seed)
    frames = rng.randint(50, 600)
    faults = Faults(loss=rng.uniform(0, 0.1), reorder=rng.uniform(0, 0.1), duplicate=0.05)
    planned = schedule(frames, faults, rng)
    received, duplicates, late = arrival_counts(planned)
    assert received == frames - len(planned.lost)
    assert duplicates == len(planned.duplicated)
    assert late == len(planned.reordered)
    # The first and last frames arrive, so the gaps between them are exactly the losses.
    assert {0, frames - 1}.isdisjoint(planned.lost)


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another():
    assert schedule(500, FAULTS, random.Random(7)) == schedule(500, FAULTS, random.Random(7))
    assert schedule(500, FAULTS, random.Random(7)) != schedule(500, FAULTS, random.Random(8))


def test_no_faults_sends_every_frame_once_in_order_on_time():
    planned = schedule(100, Faults(), random.Random(1))
    assert [(d.sequence, d.due_s, d.copy) for d in planned.deliveries] == [
        (s, s * FRAME_S, False) for s in range(100)
    ]


def test_late_frames_and_copies_are_at_most_a_few_frames_late():
    planned = schedule(1000, Faults(reorder=0.05, duplicate=0.05), random.Random(3))
    for delivery in planned.deliveries:
        late_by = delivery.due_s - delivery.sequence * FRAME_S
        if delivery.copy or delivery.sequence in planned.reordered:
            assert FRAME_S < late_by <= (MAX_DISPLACEMENT + 0.5) * FRAME_S + 1e-9
        else:
            assert late_by == 0


def test_jitter_delays_frames_but_never_reorders_them():
    calm = schedule(500, FAULTS, random.Random(5))
    jittery = schedule(500, Faults(0.02, 0.03, 0.01, jitter_ms=40), random.Random(5))
    assert [d.sequence for d in jittery.deliveries] == [d.sequence for d in calm.deliveries]
    delays = [j.due_s - c.due_s for j, c in zip(jittery.deliveries, calm.deliveries, strict=True)]
    assert all(0 <= delay <= 0.040 for delay in delays)
    assert max(delays) > 0.030  # the jitter asked for, not a token of it


@pytest.mark.parametrize(
    "faults", [{"loss": -0.1}, {"reorder": 0.6}, {"duplicate": 1.0}, {"jitter_ms": -1}]
)
def test_shares_outside_0_to_half_and_negative_jitter_are_refused(faults):
    with pytest.raises(ValueError, match="must"):
        Faults(**faults)


def test_a_call_says_sentences_of_one_mood_as_20_ms_frames():
    plans = plan_calls(6, "mixed", FAULTS, random.Random(2), run_id="abc")
    assert [p.call_id for p in plans] == [f"sim-abc-{i:04d}" for i in range(6)]
    assert [p.transport for p in plans] == ["http", "ws"] * 3
    for plan in plans:
        assert {len(frame) for frame in plan.frames()} == {160}
        assert len(plan.frames()) == plan.frame_count
        assert 2 <= len(plan.sentences) <= 3
        polar = {s.label for s in plan.sentences} - {"neutral"}
        assert polar == ({plan.mood} if plan.mood != "neutral" else set())
        assert plan.frame_count == len(plan.schedule.lost) + len(
            {d.sequence for d in plan.schedule.deliveries}
        )
        assert all(s in speech.speakable() for s in plan.sentences)


def test_without_espeak_calls_are_made_of_the_shipped_recordings(monkeypatch):
    real = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "espeak-ng" else real(name))
    speech.synthesise.cache_clear()  # nothing synthesised before may leak in
    try:
        plans = plan_calls(9, "http", FAULTS, random.Random(4), run_id="rec")
        assert {p.mood for p in plans} == {"positive", "negative", "neutral"}
        for plan in plans:
            assert set(plan.sentences) <= set(speech.SHIPPED)
            assert len(plan.frames()) == plan.frame_count
    finally:
        speech.synthesise.cache_clear()
