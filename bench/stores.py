"""The one store reset of the benchmarks: every Redis of the stack emptied, and every table the
migrations created truncated, read from PostgreSQL's catalog at reset time (not a list kept
here), so a migration that adds, renames or drops a table needs no change in bench/."""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg
from redis.asyncio import Redis, RedisCluster

# Alembic's own bookkeeping: emptying it would make the database look unmigrated.
ALEMBIC_TABLE = "alembic_version"


async def migrated_tables(conn: asyncpg.Connection) -> list[str]:
    """Every table of the database's own schemas but alembic's, quoted for SQL."""
    rows = await conn.fetch(
        "SELECT format('%I.%I', schemaname, tablename) AS name FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') AND tablename <> $1 "
        "ORDER BY 1",
        ALEMBIC_TABLE,
    )
    return [str(r["name"]) for r in rows]


async def truncate_all(pg_dsn: str) -> list[str]:
    """TRUNCATE every migrated table in one statement (foreign keys allow no other order);
    returns the tables emptied."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        tables = await migrated_tables(conn)
        if tables:
            await conn.execute("SET lock_timeout = '10s'")  # a stuck worker fails the run
            await conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
        return tables
    finally:
        await conn.close()


async def flush_redis(urls: Iterable[str]) -> None:
    """FLUSHALL every Redis named (a `redis+cluster://` URL: every master)."""
    for url in urls:
        if url.startswith("redis+cluster://"):
            host, _, port = url.removeprefix("redis+cluster://").split(",")[0].partition(":")
            cluster = RedisCluster(host=host, port=int(port))
            try:
                await cluster.flushall(target_nodes=RedisCluster.PRIMARIES)
            finally:
                await cluster.aclose()
        else:
            async with Redis.from_url(url) as redis:
                await redis.flushall()


async def reset_stores(pg_dsn: str, redis_urls: Iterable[str]) -> None:
    """Empty stores between phases: nothing of a previous phase is counted in the next."""
    await flush_redis(redis_urls)
    await truncate_all(pg_dsn)
