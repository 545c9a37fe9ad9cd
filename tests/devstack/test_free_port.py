"""free_port: a port nothing listens on, never one it handed out a moment ago."""

from __future__ import annotations

import itertools
import random
from collections import deque

import pytest

from devstack import processes
from devstack.processes import free_port


def test_two_calls_in_a_row_never_return_the_same_port(monkeypatch: pytest.MonkeyPatch) -> None:
    # The draw that found a test's "dead" Redis and its AudioSocket on one port, forced:
    # the same free port drawn twice, then another.
    draws = itertools.chain([10_007, 10_007, 10_007], itertools.repeat(10_011))
    monkeypatch.setattr(random, "randrange", lambda low, high: next(draws))
    monkeypatch.setattr(processes, "_RECENTLY_GIVEN", deque[int](maxlen=256))
    assert [free_port(), free_port()] == [10_007, 10_011]


def test_many_ports_in_a_row_are_distinct() -> None:
    ports = [free_port() for _ in range(100)]
    assert len(set(ports)) == 100
