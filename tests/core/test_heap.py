"""A process's heap after start-up (core/heap.py), in a process of its own: the test run's
collector is left as it is."""

from __future__ import annotations

import subprocess
import sys

from core.heap import YOUNG_OBJECTS

PROBE = """
import gc
from core.heap import settle_heap
default = gc.get_threshold()
class Cycle: pass
settle_heap()
frozen = gc.get_freeze_count()
a, b = Cycle(), Cycle(); a.other, b.other = b, a  # garbage only the collector finds
del a, b
print(frozen, *gc.get_threshold(), *default[1:], gc.collect())
"""


def test_start_up_objects_are_frozen_and_cycles_still_collected():
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout.split()
    frozen, young, middle, old, default_middle, default_old, collected = map(int, out)

    assert frozen > 1000
    assert (young, middle, old) == (YOUNG_OBJECTS, default_middle, default_old)
    assert collected >= 2
