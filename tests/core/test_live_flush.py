"""How often a live call's tail is flushed (core/builders.py's segmenting, from
Settings.live_flush_seconds): every SEGMENT_SECONDS, or every LOCAL_WINDOW_SECONDS for the local
model's live windows, the tail's bound in Redis the same either way (pure logic: no servers)."""

from __future__ import annotations

from typing import Any

import pytest

from core.builders import segmenting
from db.intake import NO_SEGMENTS
from settings import Settings


def settings_of(**values: Any) -> Settings:
    return Settings(database_url="postgresql://u@h/d", redis_url="redis://h", **values)


def test_the_local_model_flushes_a_live_call_every_local_window_with_the_same_tail_bound():
    local = settings_of(ai_provider="local", segment_seconds=30.0, local_window_seconds=15.0)
    every = segmenting(local)
    assert local.live_flush_seconds == 15.0
    assert (every.entries, every.seconds) == (750, 15.0)  # 20 ms frames a track
    assert every.max_tail == segmenting(settings_of(segment_seconds=30.0)).max_tail == 3000


def test_another_provider_flushes_every_segment_whatever_the_local_window():
    chosen = settings_of(ai_provider="mock", local_window_seconds=15.0)
    assert chosen.live_flush_seconds == chosen.segment_seconds == 30.0
    assert segmenting(chosen).entries == 1500


@pytest.mark.parametrize(
    ("segment_s", "window_s", "flush_s"), [(30, 0, 30), (10, 15, 10), (15, 15, 15)]
)
def test_a_local_window_of_0_or_no_shorter_than_a_segment_leaves_the_segments(
    segment_s: float, window_s: float, flush_s: float
):
    local = settings_of(
        ai_provider="local", segment_seconds=segment_s, local_window_seconds=window_s
    )
    assert local.live_flush_seconds == flush_s


def test_a_call_flushed_only_at_its_end_stays_so_with_the_local_model():
    local = settings_of(ai_provider="local", segment_seconds=0.0, local_window_seconds=15.0)
    assert local.live_flush_seconds == 0.0
    assert segmenting(local) == NO_SEGMENTS
