"""The one CPU meter of the benchmarks: user + system seconds of every process of the stack, by
group (api, workers, redis, postgres, and this client), children included: the live ones found
by walking each group's process tree at every reading, the exited ones through their parent's
`children_user`/`children_system` (what the kernel adds up when a parent reaps a child, e.g.
PostgreSQL's backends of closed connections). A child seen alive and then reaped is counted once:
from then on through its parent (or an ancestor) only. A process whose parent is not measured (a
group's root) counts up to the last reading that saw it: read at a phase's start and end, before
stopping anything. `Usage` reads one process closer (user and kernel apart, and the time it
waited for a core), for the fan-out suite's single API process.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import psutil

Groups = Callable[[], Mapping[str, Sequence[int]]]  # group -> its root pids, asked at each read


def _own_cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


def _tree(roots: Sequence[int]) -> list[psutil.Process]:
    out: list[psutil.Process] = []
    for pid in roots:
        try:
            root = psutil.Process(pid)
            out += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return out


Key = tuple[int, float]  # (pid, start time): a reused pid is another process


@dataclass(frozen=True)
class _Seen:
    group: str
    cpu: float  # at the last reading that saw it
    parent: Key | None


class CpuMeter:
    def __init__(self, groups: Groups) -> None:
        self._groups = groups
        self._seen: dict[Key, _Seen] = {}

    def read(self) -> dict[str, float]:
        """CPU seconds so far of each group (and of `client`, this process)."""
        groups = dict(self._groups())
        alive: set[Key] = set()
        for name, roots in groups.items():
            for p in _tree(roots):
                try:
                    key = (p.pid, p.create_time())
                    parent = p.parent()
                    parent_key = (parent.pid, parent.create_time()) if parent else None
                    self._seen[key] = _Seen(name, _own_cpu(p), parent_key)
                except psutil.Error:
                    continue
                alive.add(key)
        for key in [k for k in self._seen if k not in alive and self._counted_above(k, alive)]:
            del self._seen[key]
        totals = dict.fromkeys(groups, 0.0)
        for seen in self._seen.values():
            totals[seen.group] = totals.get(seen.group, 0.0) + seen.cpu
        me = psutil.Process().cpu_times()
        totals["client"] = float(me.user + me.system)
        return totals

    def _counted_above(self, key: Key, alive: set[Key]) -> bool:
        """Whether an exited process's CPU is now in a live measured ancestor's children_*:
        gone from /proc means reaped (a zombie still shows), so its parent added it up."""
        parent = self._seen[key].parent
        while parent is not None and parent in self._seen:
            if parent in alive:
                return True
            parent = self._seen[parent].parent
        return False

    @staticmethod
    def spent(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
        """CPU seconds of each group between two readings."""
        return {name: after[name] - before.get(name, 0.0) for name in after}


def rss_bytes(roots: Sequence[int]) -> int:
    """Resident memory of the processes and their live children."""
    total = 0
    for p in _tree(roots):
        try:
            total += int(p.memory_info().rss)
        except psutil.Error:
            continue
    return total


@dataclass(frozen=True)
class Usage:
    """A process's CPU seconds so far (user, system), and the seconds it was ready to run but
    waited for a CPU (/proc/PID/schedstat): a server that falls behind while it waits is short
    of cores (others' processes), not of speed."""

    user: float
    system: float
    waited: float

    @classmethod
    def of(cls, pid: int) -> Usage:
        times = psutil.Process(pid).cpu_times()
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                waited = int(f.read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            waited = float("nan")
        return cls(float(times.user), float(times.system), waited)

    @property
    def cpu(self) -> float:
        return self.user + self.system

    def __sub__(self, before: Usage) -> Usage:
        return Usage(
            self.user - before.user, self.system - before.system, self.waited - before.waited
        )
