"""One statement of the worker's hot path sent to asyncpg itself, past SQLAlchemy's execution.

SQLAlchemy's `conn.scalar(text(...), params)` costs a statement about twice the CPU of the
driver's own work (its compiled cache's lookup, the parameters processed one by one, an
execution context, a cursor and a result built for one value, events): the largest part of a
short call's back half (BENCHMARKS.md, issue 27). A `Direct` statement is still written once, as
SQLAlchemy text: it is compiled once for asyncpg's dialect (its `$n` parameters, the casts of
typed parameters), its parameters' bind processors (JSON to text, ...) kept, and each execution
is asyncpg's `fetchval`, with asyncpg's own cache of prepared statements.

It runs `on` either
- an engine: a connection checked out of the engine's pool for this one statement, bare (no
  SQLAlchemy Connection around it: no execution options, no isolation level set and reset),
  and given back at once; asyncpg outside a transaction commits each statement by itself. The
  checkout and return cost half of what `engine.connect()` costs (measured: 150 against 280 µs
  a statement with its checkout, on a loaded machine); or
- a connection the caller holds: in autocommit, the statement goes to its driver connection;
  in a transaction, through SQLAlchemy as before (its asyncpg adapter begins the transaction
  lazily, at its own first statement, so a statement sent past it would run outside).

A connection that broke under a direct statement is invalidated, as SQLAlchemy does for its own,
so that the pool does not hand it out again, and its error says so; a connection whose statement
was cancelled (a job's timeout, a shutdown) is closed rather than given back mid-protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from asyncpg import Connection, ConnectionDoesNotExistError
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.util import greenlet_spawn

# Where a statement runs: the pool, for this statement alone, or a connection the caller holds.
Executor = AsyncEngine | AsyncConnection


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    # The statement's parameters in the order of $1, $2, ..., each with its bind processor.
    params: tuple[tuple[str, Callable[[Any], Any] | None], ...]

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        return [
            params[name] if process is None else process(params[name])
            for name, process in self.params
        ]


class Direct:
    """A text statement whose first column of its first row is its result (`scalar`)."""

    def __init__(self, statement: TextClause) -> None:
        self.statement = statement
        self._compiled: _Compiled | None = None  # for asyncpg's dialect, at the first use

    def _for(self, dialect: Dialect) -> _Compiled:
        if self._compiled is None:
            done = self.statement.compile(dialect=dialect)
            params = tuple(
                (name, done.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
                for name in done.positiontup or ()
            )
            self._compiled = _Compiled(str(done), params)
        return self._compiled

    async def scalar(self, on: Executor, params: Mapping[str, Any]) -> Any:
        if on.dialect.driver != "asyncpg":
            return await self._through_sqlalchemy(on, params)
        if isinstance(on, AsyncEngine):
            return await self._on_pool(on, params)
        fairy = await on.get_raw_connection()
        if not getattr(fairy.dbapi_connection, "autocommit", False):
            return await on.scalar(self.statement, dict(params))
        driver = fairy.driver_connection
        assert isinstance(driver, Connection)
        compiled = self._for(on.dialect)
        try:
            return await driver.fetchval(compiled.sql, *compiled.args(params))
        except Exception as exc:
            if not driver.is_closed():
                raise
            await on.invalidate()
            raise _broke(exc) from exc

    async def _on_pool(self, engine: AsyncEngine, params: Mapping[str, Any]) -> Any:
        compiled = self._for(engine.dialect)
        args = compiled.args(params)
        fairy = await engine.raw_connection()
        driver = fairy.driver_connection
        assert isinstance(driver, Connection)
        try:
            value = await driver.fetchval(compiled.sql, *args)
        except BaseException as exc:
            # Closed, not given back: broken, or cancelled midway through its protocol.
            broken = driver.is_closed() or not isinstance(exc, Exception)
            if broken:
                await greenlet_spawn(fairy.invalidate)
            else:
                await greenlet_spawn(fairy.close)
            if driver.is_closed() and isinstance(exc, Exception):
                raise _broke(exc) from exc
            raise
        await greenlet_spawn(fairy.close)  # back to the pool (which may close it: overflow)
        return value

    async def _through_sqlalchemy(self, on: Executor, params: Mapping[str, Any]) -> Any:
        if isinstance(on, AsyncEngine):
            async with on.connect() as conn:
                return await conn.scalar(self.statement, dict(params))
        return await on.scalar(self.statement, dict(params))


def _broke(exc: Exception) -> ConnectionDoesNotExistError:
    # asyncpg says "connection is closed" with the InterfaceError it also refuses a value with;
    # SQLAlchemy would call it a disconnect: an outage (db/outages.py), not a refusal.
    return ConnectionDoesNotExistError(f"the connection broke under a statement ({type(exc)})")
