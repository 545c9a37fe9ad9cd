"""Builders for requests and quick reads of what the stores hold."""

from __future__ import annotations

from typing import Any

from httpx import AsyncClient, Response
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


def packet(
    sequence: int, data: str | None = None, timestamp: float | None = None
) -> dict[str, Any]:
    return {
        "sequence": sequence,
        "data": f"chunk-{sequence}" if data is None else data,
        "timestamp": 1_700_000_000.0 + sequence * 0.02 if timestamp is None else timestamp,
    }


async def send(
    client: AsyncClient, call_id: str, sequence: int, data: str | None = None
) -> Response:
    return await client.post(f"/v1/call/stream/{call_id}", json=packet(sequence, data))


async def send_all(client: AsyncClient, call_id: str, sequences: list[int]) -> list[Response]:
    return [await send(client, call_id, s) for s in sequences]


async def complete(client: AsyncClient, call_id: str) -> None:
    """Complete a call that sent packets: the first completion answers 202."""
    assert (await client.post(f"/v1/call/complete/{call_id}")).status_code == 202


async def status(client: AsyncClient, call_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/calls/{call_id}")
    assert response.status_code == 200
    return dict(response.json())


async def scalar(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[Any]:
    async with engine.connect() as conn:
        return list((await conn.execute(text(sql), params)).all())
