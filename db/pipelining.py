"""Send the Lua scripts of concurrent requests to Redis in one pipeline per event-loop tick.

Under load many ingestion requests are ready in the same loop iteration. Each still costs exactly
one script call (atomic on its own), but instead of one redis-py round trip each (pool checkout,
command packing, a socket write and a read), the calls that gather within one tick share a single
write and read. A request waits at most one tick longer; it never waits for a timer.

With a Replication, the batch ends with WAIT on each node that took scripts, in the same round
trip: a call is answered only once its node's replicas confirmed it (else NotReplicated).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hiredis import pack_command
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException
from redis.exceptions import TimeoutError as RedisTimeoutError

from db.redis_client import RedisClient, RedisPipeline, execute


@dataclass(frozen=True, slots=True)
class Replication:
    """Writes count as done only once `replicas` replicas of the node that took them have them
    (WAIT), or not at all after `timeout_ms`: Redis replicates asynchronously, so a write only its
    master holds dies with the master when the replica is promoted."""

    replicas: int
    timeout_ms: int


class NotReplicated(Exception):
    """The script ran on the master (its writes may be there), but fewer replicas than wanted
    confirmed them in time. Running the same script again is safe for the ingest and complete
    scripts: a stored packet is a duplicate, a completed call is already completed."""

    def __init__(self, node: str, confirmed: int, wanted: int) -> None:
        super().__init__(f"{confirmed} of {wanted} replicas of {node} confirmed the write")
        self.node = node
        self.confirmed = confirmed
        self.wanted = wanted


@dataclass(frozen=True, slots=True)
class _Call:
    script: AsyncScript
    keys: Sequence[str]
    args: Sequence[Any]
    result: asyncio.Future[Any]


class ScriptPipeline:
    def __init__(
        self, redis: RedisClient, max_batch: int = 512, replication: Replication | None = None
    ) -> None:
        self.redis = redis
        self.max_batch = max_batch
        self.replication = replication
        self._pending: list[_Call] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        loop = asyncio.get_running_loop()
        call = _Call(script, keys, args, loop.create_future())
        self._pending.append(call)
        if len(self._pending) == 1:
            # call_soon runs after the callbacks already queued for this tick, so the requests
            # that are ready now join this batch.
            loop.call_soon(self._flush)
        elif len(self._pending) >= self.max_batch:
            self._flush()
        return await call.result

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        # Its own task: a caller that is cancelled must not cancel a command midway.
        task = asyncio.create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            results = await run_scripts(
                self.redis,
                [(call.script, call.keys, call.args) for call in batch],
                self.replication,
            )
        except Exception as exc:
            for call in batch:
                _settle(call, exc)
            return
        for call, result in zip(batch, results, strict=True):
            _settle(call, result)


ScriptCall = tuple[AsyncScript, Sequence[str], Sequence[Any]]


async def run_scripts(
    redis: RedisClient, calls: Sequence[ScriptCall], replication: Replication | None = None
) -> list[Any]:
    """Run script calls in one pipeline (one round trip per node on a cluster); each result is
    its answer or the exception it raised: NotReplicated when `replication` asks for replicas
    that did not confirm. A script the node does not know (it restarted, or a replica took
    over) is loaded and that call run again, in a pipeline of its own."""
    results = await _run_once(redis, calls, replication)
    unknown = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
    if unknown:
        for script in {calls[i][0].sha: calls[i][0] for i in unknown}.values():
            await redis.script_load(script.script)  # on every master, on a cluster
        again = await _run_once(redis, [calls[i] for i in unknown], replication)
        for i, result in zip(unknown, again, strict=True):
            results[i] = result
    return results


async def _run_once(
    redis: RedisClient, calls: Sequence[ScriptCall], replication: Replication | None
) -> list[Any]:
    """The scripts, then WAIT on the same connection: WAIT counts the replicas that have this
    connection's own last write, so it must follow the scripts on the connection that sent them
    (a WAIT on another pooled connection would vouch for that connection's older writes). On a
    cluster, a WAIT per node that takes scripts, pinned to it; redis-py sends each node's share
    of the pipeline on one connection, in order, so it is still one round trip per node."""
    if replication is None and type(redis) is Redis:
        return await _run_on_one_connection(redis, calls)
    nodes = await _nodes_of(redis, calls) if replication and isinstance(redis, RedisCluster) else []
    async with redis.pipeline(transaction=False) as pipe:
        for script, keys, args in calls:
            # execute_command: redis-py's cluster pipeline refuses its evalsha() method (5.x),
            # yet routes an EVALSHA by its keys like any command.
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        waits = _add_waits(pipe, nodes, replication) if replication else {}
        try:
            results = await execute(pipe, raise_on_error=False)
        except RedisClusterException as exc:
            if replication is None or type(exc) is not RedisClusterException:
                raise
            # The pipeline was sent again to a new slot map (a node died): redis-py then drops
            # the WAITs' pinned nodes and refuses them. Nothing of this batch is confirmed.
            changed = NotReplicated("the cluster (its slot map changed)", 0, replication.replicas)
            return [changed] * len(calls)
    if replication is None:
        return results
    return _confirmed(redis, calls, nodes, results, waits, replication)


async def _run_on_one_connection(redis: Redis, calls: Sequence[ScriptCall]) -> list[Any]:
    """The scripts on one pooled connection of a single Redis, without replication (the API's
    batches, 10 a second per process): what redis-py's pipeline sends and reads, without its
    per-command work. Its packing encodes every argument in Python (an ingest call has ~20);
    hiredis packs them in C. Its reading wraps each reply in the pipeline's own parsing; here
    each is read as it comes. A reply that is an error is that call's answer (NOSCRIPT, a script
    that raised), the others stand; a connection that fails midway is closed, not pooled again
    with replies unread, and the failure is every call's (an outage, as from the pipeline)."""
    pool = redis.connection_pool
    connection = await pool.get_connection()
    try:
        await connection.send_packed_command(
            b"".join(
                pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
                for script, keys, args in calls
            )
        )
        return await _replies(connection, len(calls))
    except BaseException:
        await connection.disconnect(nowait=True)
        raise
    finally:
        await pool.release(connection)


async def _replies(connection: AbstractConnection, count: int) -> list[Any]:
    """`count` replies, within one socket timeout for them all. redis-py's `read_response` arms
    and cancels a timeout around every reply (asyncio.timeout: a timer, the current task, a
    reschedule): 6% of a single packet's API CPU. Its parser is read here instead, and its
    errors are raised as `read_response` raises them (an outage's, db/outages.py); a reply that
    is an error comes as a value from the parser, as it does to `read_response`."""
    parser: Any = connection._parser  # what read_response reads; redis-py pinned in the lock
    try:
        async with asyncio.timeout(connection.socket_timeout):
            replies = [await parser.read_response(disable_decoding=False) for _ in range(count)]
    except TimeoutError:
        raise RedisTimeoutError(f"Timeout reading from {connection._host_error()}") from None
    except OSError as error:
        where = connection._host_error()
        raise RedisConnectionError(f"Error while reading from {where}: {error}") from None
    if connection.health_check_interval:  # read_response's bookkeeping: no PING is due yet
        connection.next_health_check = (
            asyncio.get_running_loop().time() + connection.health_check_interval
        )
    return replies


async def _nodes_of(redis: RedisCluster, calls: Sequence[ScriptCall]) -> list[ClusterNode]:
    await redis.initialize()  # a no-op once the slot map is known
    nodes = []
    for _, keys, _ in calls:
        node = redis.get_node_from_key(keys[0])
        if node is None:
            raise RedisClusterException(f"no node serves the slot of {keys[0]!r}")
        nodes.append(node)
    return nodes


def _add_waits(
    pipe: RedisPipeline, nodes: list[ClusterNode], replication: Replication
) -> dict[str, int]:
    """WAIT commands after the scripts: node name -> its WAIT's index among the results ("" for
    a single Redis)."""
    first = len(pipe)
    wait = ("WAIT", replication.replicas, replication.timeout_ms)
    if not nodes:
        pipe.execute_command(*wait)
        return {"": first}
    by_name = {node.name: node for node in nodes}
    for node in by_name.values():
        pipe.execute_command(*wait, target_nodes=node)
    return {name: first + i for i, name in enumerate(by_name)}


def _confirmed(
    redis: RedisClient,
    calls: Sequence[ScriptCall],
    nodes: list[ClusterNode],
    results: list[Any],
    waits: dict[str, int],
    replication: Replication,
) -> list[Any]:
    """Each call's answer stands only if the WAIT of the node that ran it confirmed enough
    replicas; a call whose slot moved meanwhile (redis-py followed a MOVED and ran it on another
    connection) is confirmed by no WAIT of ours."""
    answers = []
    for i, (_, keys, _) in enumerate(calls):
        result = results[i]
        if isinstance(result, BaseException):
            answers.append(result)
            continue
        name = nodes[i].name if nodes else ""
        moved = bool(nodes) and _node_name(redis, keys[0]) != name
        confirmed = results[waits[name]]
        if moved or not isinstance(confirmed, int) or confirmed < replication.replicas:
            got = confirmed if isinstance(confirmed, int) and not moved else 0
            answers.append(NotReplicated(name or "Redis", got, replication.replicas))
        else:
            answers.append(result)
    return answers


def _node_name(redis: RedisClient, key: str) -> str | None:
    node = redis.get_node_from_key(key) if isinstance(redis, RedisCluster) else None
    return None if node is None else node.name


def _settle(call: _Call, outcome: Any) -> None:
    if call.result.done():  # the caller went away
        return
    if isinstance(outcome, BaseException):
        call.result.set_exception(outcome)
    else:
        call.result.set_result(outcome)
