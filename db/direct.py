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

On the pool, statements of one kind sent while one of theirs is on its way wait for it and then
go together (group commit): one checkout, one round trip of asyncpg's `fetchmany` (its Binds
and Executes then one Sync: one implicit transaction, one commit), each its own parameters and
its own answer. A worker draining a burst of short calls runs dozens of jobs at one step at once;
a statement alone cost about 125 µs of the worker's CPU and 175 µs of PostgreSQL's, one of ten
together about 15 and 30 (BENCHMARKS.md, issue 27). A statement with nothing on its way goes at
once, alone, as before. Every statement of this kind returns exactly one row (their `SELECT
count(*)`): fetchmany's rows are the answers in order. If a batch fails short of the connection
breaking (a value PostgreSQL refuses, a deadlock), nothing of it was committed, and each of its
statements is sent again alone, so that it gets its own answer or error.

A connection that broke under a direct statement is invalidated, as SQLAlchemy does for its own,
so that the pool does not hand it out again, and its error says so; a connection whose statement
was cancelled (a job's timeout, a shutdown) is closed rather than given back mid-protocol. A
batch goes on while any of its callers waits for it, and is cancelled so once none does.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from asyncpg import Connection, ConnectionDoesNotExistError
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.util import greenlet_spawn

# Where a statement runs: the pool, for this statement alone, or a connection the caller holds.
Executor = AsyncEngine | AsyncConnection

BATCH_MAX = 64  # statements of one kind sent together at most


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


@dataclass(eq=False, slots=True)
class _Pending:
    """A statement on the pool: its parameters, and its caller's answer."""

    args: list[Any]
    answer: asyncio.Future[Any]


@dataclass(eq=False)
class _Lane:
    """One statement's traffic to one pool in one event loop: what waits, and the batch on its
    way (one at a time)."""

    loop: asyncio.AbstractEventLoop
    waiting: list[_Pending] = field(default_factory=list)
    sending: list[_Pending] = field(default_factory=list)
    sender: asyncio.Task[None] | None = None


class Direct:
    """A text statement whose first column of its first row is its result (`scalar`)."""

    def __init__(self, statement: TextClause) -> None:
        self.statement = statement
        self._compiled: _Compiled | None = None  # for asyncpg's dialect, at the first use
        self._lanes: weakref.WeakKeyDictionary[AsyncEngine, _Lane] = weakref.WeakKeyDictionary()

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
        loop = asyncio.get_running_loop()
        lane = self._lanes.get(engine)
        if lane is None or lane.loop is not loop:
            lane = self._lanes[engine] = _Lane(loop)
        pending = _Pending(compiled.args(params), loop.create_future())
        lane.waiting.append(pending)
        if lane.sender is None:
            lane.sender = loop.create_task(self._send(engine, lane, compiled.sql))
        try:
            return await pending.answer
        except asyncio.CancelledError:
            # Nobody waits for the batch on its way any more: stop it, as a statement alone was.
            on_its_way = lane.sending
            if lane.sender is not None and on_its_way and all(p.answer.done() for p in on_its_way):
                lane.sender.cancel()
            raise

    async def _send(self, engine: AsyncEngine, lane: _Lane, sql: str) -> None:
        """Send what waits, a batch at a time, until nothing does."""
        try:
            while lane.waiting:
                taken, lane.waiting = lane.waiting[:BATCH_MAX], lane.waiting[BATCH_MAX:]
                lane.sending = [p for p in taken if not p.answer.done()]
                try:
                    if lane.sending:
                        await _run(engine, sql, lane.sending)
                except Exception as exc:  # giving the connection back failed: still an answer
                    _fail(lane.sending, exc)
                lane.sending = []
        except BaseException:  # cancelled (nobody waits for the batch, or the loop is closing)
            for pending in lane.sending:
                pending.answer.cancel()
            raise
        finally:
            lane.sender, lane.sending = None, []
            if not lane.loop.is_closed() and any(not p.answer.done() for p in lane.waiting):
                lane.sender = lane.loop.create_task(self._send(engine, lane, sql))

    async def _through_sqlalchemy(self, on: Executor, params: Mapping[str, Any]) -> Any:
        if isinstance(on, AsyncEngine):
            async with on.connect() as conn:
                return await conn.scalar(self.statement, dict(params))
        return await on.scalar(self.statement, dict(params))


async def _run(engine: AsyncEngine, sql: str, batch: list[_Pending]) -> None:
    """`batch` on one connection of the pool, each statement's answer (or error) to its caller."""
    try:
        fairy = await engine.raw_connection()
    except Exception as exc:
        _fail(batch, exc)
        return
    driver = fairy.driver_connection
    assert isinstance(driver, Connection)
    try:
        if len(batch) == 1:
            values = [await driver.fetchval(sql, *batch[0].args)]
        else:
            values = [row[0] for row in await driver.fetchmany(sql, [p.args for p in batch])]
    except BaseException as exc:
        # Closed, not given back: broken, or cancelled midway through its protocol.
        broken = driver.is_closed() or not isinstance(exc, Exception)
        await greenlet_spawn(fairy.invalidate if broken else fairy.close)
        if not isinstance(exc, Exception):
            for pending in batch:
                pending.answer.cancel()
            raise
        await _failed(engine, sql, batch, exc, broke=driver.is_closed())
        return
    await greenlet_spawn(fairy.close)  # back to the pool (which may close it: overflow)
    if len(values) != len(batch):  # a statement of this kind must answer with one row
        _fail(batch, RuntimeError(f"{len(batch)} statements answered {len(values)} rows: {sql}"))
        return
    for pending, value in zip(batch, values, strict=True):
        if not pending.answer.done():
            pending.answer.set_result(value)


async def _failed(
    engine: AsyncEngine, sql: str, batch: list[_Pending], exc: Exception, *, broke: bool
) -> None:
    """Answer a batch that failed: an outage for all if its connection broke; otherwise nothing
    of it was committed, and each is sent again alone, for its own answer or error."""
    if broke or len(batch) == 1:
        _fail(batch, exc, broke=broke)
        return
    for pending in batch:
        if not pending.answer.done():
            await _run(engine, sql, [pending])


def _fail(batch: list[_Pending], exc: Exception, *, broke: bool = False) -> None:
    for pending in batch:
        if pending.answer.done():
            continue
        error: Exception = exc
        if broke:
            error = _broke(exc)
            error.__cause__ = exc
        pending.answer.set_exception(error)


def _broke(exc: Exception) -> ConnectionDoesNotExistError:
    # asyncpg says "connection is closed" with the InterfaceError it also refuses a value with;
    # SQLAlchemy would call it a disconnect: an outage (db/outages.py), not a refusal.
    return ConnectionDoesNotExistError(f"the connection broke under a statement ({type(exc)})")
