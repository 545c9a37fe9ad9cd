"""The Redis connection pool, built one way for the API and the worker."""

from __future__ import annotations

from redis.asyncio import ConnectionPool


def make_redis_pool(
    url: str, *, max_connections: int, connect_timeout_s: float, read_timeout_s: float
) -> ConnectionPool:
    # Short timeouts: when Redis is gone, callers must answer or retry within seconds, not hang.
    return ConnectionPool.from_url(
        url,
        max_connections=max_connections,
        socket_timeout=read_timeout_s,
        socket_connect_timeout=connect_timeout_s,
        health_check_interval=30,
    )
