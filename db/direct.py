"""One statement of the worker's hot path sent to asyncpg itself, past SQLAlchemy's execution.

SQLAlchemy's `conn.scalar(text(...), params)` costs a statement about 100 µs of CPU besides the
driver's own work (its compiled cache's lookup, the parameters processed one by one, an
execution context, a cursor and a result built for one value, events), the largest part of a
short call's back half (BENCHMARKS.md, issue 27). A `Direct` statement is still written once, as
SQLAlchemy text: it is compiled once for the connection's dialect (asyncpg's `$n` parameters,
the casts of typed parameters), its parameters' bind processors (JSON to text, ...) kept, and then
each execution is asyncpg's `fetchval` on the connection SQLAlchemy's pool checked out, with
asyncpg's own cache of prepared statements.

Only on an autocommit connection: SQLAlchemy's asyncpg adapter begins a transaction lazily, at
its own first statement, so a statement sent past it inside `engine.begin()` would run outside
the transaction; there, and on any connection not in autocommit, the statement goes through
SQLAlchemy as before. A connection that broke under a direct statement is invalidated, as
SQLAlchemy does for its own, so that the pool does not hand it out again, and its error is one
that says so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from asyncpg import ConnectionDoesNotExistError
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import TextClause


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    # The statement's parameters in the order of $1, $2, ..., each with its bind processor.
    params: tuple[tuple[str, Callable[[Any], Any] | None], ...]


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

    async def scalar(self, conn: AsyncConnection, params: Mapping[str, Any]) -> Any:
        fairy = await conn.get_raw_connection()
        adapted = fairy.dbapi_connection
        if conn.dialect.driver != "asyncpg" or not getattr(adapted, "autocommit", False):
            return await conn.scalar(self.statement, dict(params))
        compiled = self._for(conn.dialect)
        args = [
            params[name] if process is None else process(params[name])
            for name, process in compiled.params
        ]
        driver = fairy.driver_connection
        assert driver is not None
        try:
            return await driver.fetchval(compiled.sql, *args)
        except Exception as exc:
            if not driver.is_closed():
                raise
            # asyncpg says "connection is closed" with the InterfaceError it also refuses a
            # value with; SQLAlchemy would call it a disconnect (an outage: db/outages.py).
            await conn.invalidate()
            raise ConnectionDoesNotExistError("the connection broke under a statement") from exc
