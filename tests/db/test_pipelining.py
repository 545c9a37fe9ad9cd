"""db/pipelining.py's batches on a single Redis without replication go out on one connection,
packed by hiredis and read reply by reply: each call's answer must be what redis-py's own
pipeline gives, an error reply must be its call's alone, and a connection that fails midway must
not go back to the pool with replies unread."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

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
    connection_class = single.connection_pool.connection_class
    read = connection_class.read_response
    reads = 0

    async def dies_on_the_third(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        if reads == 3:  # e.g. cancelled, or a reply that cannot be parsed: still connected
            raise RuntimeError("reading failed")
        return await read(self, *args, **kwargs)

    monkeypatch.setattr(connection_class, "read_response", dies_on_the_third)
    with pytest.raises(RuntimeError):
        await run_scripts(single, batch)
    monkeypatch.setattr(connection_class, "read_response", read)
    # The next batch reads its own replies, not the two the failed one left unread (closed by
    # run_scripts; redis-py's pool would also refuse a connection with data waiting, if the
    # replies were there by then).
    assert await run_scripts(single, batch) == await as_redis_py_pipelines(single, batch)
