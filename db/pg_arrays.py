"""Integers for a PostgreSQL array parameter as the array's text form ('{1,2,3}'), written by a few
numpy operations whatever their count, for a statement that casts it (CAST(CAST(:p AS text) AS
bigint[])).

asyncpg encodes a list as a binary array a value at a time, and first asks isinstance(x,
Iterable) and Sized of every value (ABCMeta.__instancecheck__, a Python call): a fifth of a live
segment's flush went there, its four per-packet arrays (BENCHMARKS.md, issue 27). Its two
integer arrays go as text: each value written into a row of a byte matrix, its digits by
numpy's division, and the matrix sent as it is (str() mapped and joined cost as much again).
PostgreSQL reads such text at about the cost of the binary array (int8in is cheap).

Floats stay binary lists: PostgreSQL's float8in (strtod) reads a value of text ten times as
dearly as float8recv reads one in binary (a 1,500-value array: 226 against 23 µs of the
backend's CPU, hexadecimal or shortest decimal alike), so text would move their cost from the
workers to the database, which does not scale out.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

_POWERS_10 = 10 ** np.arange(18, -1, -1, dtype=np.uint64)  # 10^18 .. 1: |int64| in 19 digits


def _int64s(values: Sequence[int] | npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    if isinstance(values, np.ndarray):
        return values.astype(np.int64, copy=False)
    # array() reads a list's ints in C, several times as fast as numpy's asarray, which
    # first discovers the list's type and shape.
    return np.frombuffer(array("q", values), dtype=np.int64)


def ints_text(values: Sequence[int] | npt.NDArray[np.int64]) -> str:
    """int64 values as an array's text form. Each value's row: a comma (the first one's a
    brace), its sign if any value is negative (a space for the others), and as many digits as
    the largest value has, with leading zeros (which int8in reads as such, as array_in reads
    the spaces around a value): one width for all, so the matrix is the text."""
    ints = _int64s(values)
    if not len(ints):
        return "{}"
    magnitude = np.abs(ints).view(np.uint64)  # -2^63's wraps to itself: 2^63 as unsigned
    powers = _POWERS_10[-len(str(int(magnitude.max()))) :]
    signed = int(ints.min() < 0)
    rows = np.empty((len(ints), 1 + signed + len(powers)), dtype=np.uint8)
    rows[:, 0] = ord(",")
    if signed:
        rows[:, 1] = np.where(ints < 0, ord("-"), ord(" "))
    rows[:, 1 + signed :] = magnitude[:, None] // powers % np.uint64(10) + np.uint64(ord("0"))
    rows[0, 0] = ord("{")
    return rows.tobytes().decode("ascii") + "}"
