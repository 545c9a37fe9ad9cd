"""Where a worker's time goes, per stage of a call (flush, AI, finish): summed in the process
and logged when it stops, so `make bench` (and an operator) can see the share of each."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class StageClock:
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: int = 0  # calls brought to a terminal state

    @contextlib.contextmanager
    def timing(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] += time.perf_counter() - started

    def summary(self) -> str:
        spent = ", ".join(f"{stage} {s:.2f}s" for stage, s in sorted(self.seconds.items()))
        return f"{self.calls} calls finished; wall time by stage (summed over calls): {spent}"
