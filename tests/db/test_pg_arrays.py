"""db/pg_arrays.py against the real PostgreSQL: an integer array's text form, cast as the segment
insert casts it, is the array itself, whatever its values' signs and widths."""

from __future__ import annotations

import random

import numpy as np
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from db.pg_arrays import ints_text
from tests.factories import scalar

EDGES = [
    [],
    [0],
    [7],
    [-1],
    [0, 0],
    [9, 10, 99, 100, 0],  # widths that differ: leading zeros
    [2**53 - 1, 2**53, 2**53 + 1],  # past a float's integers
    [-(2**63), -1, 0, 2**63 - 1],  # the whole int64 range
    [5, -3, -1000, 12],
]


async def as_array(engine: AsyncEngine, values: object, type_: str = "bigint[]") -> list[int]:
    return list(await scalar(engine, f"SELECT CAST(CAST(:text AS text) AS {type_})", text=values))


@pytest.mark.parametrize("values", EDGES, ids=str)
async def test_ints_read_back_as_the_array_they_were(engine: AsyncEngine, values: list[int]):
    assert await as_array(engine, ints_text(values)) == values


async def test_random_ints_of_every_magnitude_read_back_as_they_were(engine: AsyncEngine):
    rng = random.Random(27)
    values = [
        rng.randrange(-(10 ** rng.randrange(19)), 10 ** rng.randrange(19)) for _ in range(3000)
    ]
    assert await as_array(engine, ints_text(values)) == values


async def test_a_numpy_array_reads_back_as_its_list_does(engine: AsyncEngine):
    values = np.array([3, 160, 160, 4096], dtype=np.int64)
    assert ints_text(values) == ints_text(values.tolist())
    assert await as_array(engine, ints_text(values), "int[]") == values.tolist()
