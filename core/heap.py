"""A process's heap and Python's cyclic collector, for the worker and the API alike: what
start-up built is kept out of the collector's walks, and young objects are walked less often.

The API: each media frame makes a few short-lived objects (its JSON's dicts, a packet), and with
the default first threshold the collector walked them, and every so often the ~200,000 objects
start-up built (FastAPI's routes, pydantic's schemas, the pools): 10.6% of the API's busy samples
at 150 live calls (py-spy, BENCHMARKS.md, Real-time capacity).

The worker:
A live segment's flush makes ~40,000 objects (hiredis' reply, a packet an entry) that live as
long as the flush: with the default first threshold (700) each is walked a few times before it
dies, and those promoted to the oldest generation bring on full collections that walk the
~190,000 objects start-up built (modules, the ORM's tables, the pools), which never die. Frozen
and with a first threshold of YOUNG_OBJECTS, a live segment's flush costs 132 million
instructions where it cost 146 (valgrind --tool=callgrind, BENCHMARKS.md)."""

from __future__ import annotations

import gc

YOUNG_OBJECTS = 10_000  # allocations (less deallocations) between two young collections


def settle_heap() -> None:
    """Once start-up is done: its objects frozen (never walked again), young ones walked less
    often. Cycles are still collected: the older generations keep their thresholds."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_OBJECTS, middle, old)
