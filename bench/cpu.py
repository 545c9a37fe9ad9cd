"""The one CPU meter of the benchmarks: user + system seconds of every process of the stack, by
group (api, workers, redis, postgres, and this client), children included: the live ones found
by walking each group's process tree at every reading, the exited ones through their parent's
`children_user`/`children_system` (what the kernel adds up when a parent reaps a child, e.g.
PostgreSQL's backends of closed connections). A process that exits between two readings counts
up to the last reading that saw it: read at a phase's start and end, before stopping anything."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

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


class CpuMeter:
    def __init__(self, groups: Groups) -> None:
        self._groups = groups
        # (pid, start time) -> (group, its CPU at the last reading): a reused pid is another key.
        self._seen: dict[tuple[int, float], tuple[str, float]] = {}

    def read(self) -> dict[str, float]:
        """CPU seconds so far of each group (and of `client`, this process)."""
        groups = dict(self._groups())
        for name, roots in groups.items():
            for p in _tree(roots):
                try:
                    self._seen[(p.pid, p.create_time())] = (name, _own_cpu(p))
                except psutil.Error:
                    continue
        totals = dict.fromkeys(groups, 0.0)
        for name, cpu in self._seen.values():
            totals[name] = totals.get(name, 0.0) + cpu
        me = psutil.Process().cpu_times()
        totals["client"] = float(me.user + me.system)
        return totals

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
