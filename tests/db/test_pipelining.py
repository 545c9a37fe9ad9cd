"""db/pipelining.py's batches on a single Redis without replication go out on one connection,
packed by hiredis and read reply by reply: each call's answer must be what redis-py's own
pipeline gives, an error reply must be its call's alone, and a connection that fails midway must
not go back to the pool with replies unread."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from db.outages import REDIS_OUTAGE
from db.pipelining import ScriptCall, run_scripts
from db.redis_client import close_redis, make_redis
from settings import Settings

ECHO = "return {KEYS[1], ARGV[1], tonumber(ARGV[2]) * 2, ARGV[3]}"
FAILS = "return redis.error_reply('ERR refused ' .. ARGV[1])"
INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


@pytest.fixture
async def single(settings: Settings) -> AsyncIterator[Redis]:
    client = make_redis(
        settings.redis_url, max_connections=4, connect_timeout_s=2.0, read_timeout_s=5.0
    )
    assert type(client) is Redis  # the path under test is a single Redis's
    yield client
    await close_redis(client)


def calls(redis: Redis, n: int) -> list[ScriptCall]:
    echo = AsyncScript(redis, ECHO)
    return [(echo, [f"call:{{c{i}}}:k"], [f"é{i}", 1.5 + i, b"\x00\xff"]) for i in range(n)]


async def as_redis_py_pipelines(redis: Redis, batch: list[ScriptCall]) -> list[Any]:
    pipe: Pipeline
    async with redis.pipeline(transaction=False) as pipe:
        for script, keys, args in batch:
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))


async def test_every_call_gets_what_redis_pys_pipeline_gives(single: Redis, empty_stores: None):
    batch = calls(single, 40)
    ours = await run_scripts(single, batch)  # loads the script first (NOSCRIPT), then again
    assert ours == await as_redis_py_pipelines(single, batch)
    assert ours[3] == [b"call:{c3}:k", "é3".encode(), 9, b"\x00\xff"]


async def test_an_error_reply_is_its_calls_answer_and_the_others_stand(
    single: Redis, empty_stores: None
):
    fails, incr = AsyncScript(single, FAILS), AsyncScript(single, INCR)
    await single.script_load(FAILS)
    await single.script_load(INCR)
    batch: list[ScriptCall] = [
        (incr, ["n"], [1]),
        (fails, ["n"], ["this one"]),
        (incr, ["n"], [2]),
    ]
    first, error, third = await run_scripts(single, batch)
    assert (first, third) == (1, 3)
    assert isinstance(error, ResponseError)
    assert "refused this one" in str(error)


async def test_a_connection_that_fails_midway_is_not_pooled_again(
    single: Redis, empty_stores: None, monkeypatch: pytest.MonkeyPatch
):
    batch = calls(single, 5)
    await run_scripts(single, batch)
    connection = await single.connection_pool.get_connection()
    parser_class = type(connection._parser)  # what db/pipelining.py reads the replies with
    await single.connection_pool.release(connection)
    read = parser_class.read_response
    reads = 0

    async def dies_on_the_third(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        if reads == 3:  # e.g. cancelled, or a reply that cannot be parsed: still connected
            raise RuntimeError("reading failed")
        return await read(self, *args, **kwargs)

    monkeypatch.setattr(parser_class, "read_response", dies_on_the_third)
    with pytest.raises(RuntimeError):
        await run_scripts(single, batch)
    monkeypatch.setattr(parser_class, "read_response", read)
    # The next batch reads its own replies, not the two the failed one left unread (closed by
    # run_scripts; redis-py's pool would also refuse a connection with data waiting, if the
    # replies were there by then).
    assert await run_scripts(single, batch) == await as_redis_py_pipelines(single, batch)


async def test_a_redis_that_stops_answering_is_an_outage_within_the_socket_timeout():
    # A server that answers redis-py's handshake, then nothing: the batch's replies never come.
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if b"EVALSHA" in data:
                continue  # silent from here
            if b"PING" in data:  # redis-py's health check, alone
                writer.write(b"+PONG\r\n")
                continue
            commands = data.count(b"\r\n*") + data.startswith(b"*")
            writer.write(b"+OK\r\n" * commands)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = make_redis(
        f"redis://127.0.0.1:{port}", max_connections=2, connect_timeout_s=1.0, read_timeout_s=0.3
    )
    assert type(client) is Redis
    try:
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await run_scripts(client, calls(client, 3))
        assert time.monotonic() - started < 2.0  # one socket timeout, not one per reply
        assert isinstance(RedisTimeoutError(), REDIS_OUTAGE)
        assert not client.connection_pool._in_use_connections  # given back, disconnected
    finally:
        await close_redis(client)
        server.close()
