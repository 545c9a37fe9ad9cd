"""The Redis clients, built one way for the API and the worker: a pool for a single Redis, or a
cluster client when the URL names a Redis Cluster (redis+cluster://host:port[,host:port...])."""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

# A single Redis or a Redis Cluster: the call keys may live on either (REDIS_URL).
RedisClient = Redis | RedisCluster
RedisPipeline = Pipeline | ClusterPipeline

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS
CLUSTER_MIN_CONNECTIONS = 1024  # per node and process


def text_of(value: bytes | str | int) -> str:
    """A key, member or stream id as Redis answered it (bytes: the clients do not decode)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def is_cluster(redis: RedisClient) -> bool:
    return _cluster_type(type(redis))


@functools.cache
def _cluster_type(kind: type) -> bool:
    # Asked per ingested batch (db/events.py feed_key); isinstance against RedisCluster walks
    # typing's Protocol machinery (its bases include Protocols) each time.
    return issubclass(kind, RedisCluster)


async def execute(pipe: RedisPipeline, *, raise_on_error: bool = True) -> list[Any]:
    """Send a pipeline. When a node dies, redis-py 5.3's cluster pipeline that meets it closes
    every connection of the client and retries; a concurrent pipeline then writes to a closed
    transport or reads a default node that is gone (redis/redis-py#3835, #3458): an outage like
    any other, so it is raised as one (answered 503, retried by the client or the worker)."""
    try:
        return list(await pipe.execute(raise_on_error=raise_on_error))
    except (AttributeError, RuntimeError) as exc:
        if not isinstance(pipe, ClusterPipeline):
            raise
        raise RedisConnectionError(f"the cluster changed during a pipeline: {exc!r}") from exc


def unparsed(client: RedisClient, command: str) -> RedisClient:
    """A client on `client`'s own connections whose replies to `command` come as Redis sent
    them, not parsed by redis-py (an XRANGE entry: its id and its fields as one flat list, no
    dict); `client` itself for a cluster, whose nodes share its parsers, so its replies are
    parsed as ever. A caller takes both shapes."""
    if not isinstance(client, Redis):
        return client
    raw = Redis(connection_pool=client.connection_pool)  # never closes the pool it shares
    raw.set_response_callback(command, _as_sent)
    return raw


def _as_sent(response: Any, **_: Any) -> Any:
    return response


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


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


def make_redis(
    url: str, *, max_connections: int, connect_timeout_s: float, read_timeout_s: float
) -> RedisClient:
    """A client for the call keys: a Redis on a pool of its own, or a cluster client that keeps
    a pool per node (`max_connections` each) and follows the slot map through failovers."""
    if not is_cluster_url(url):
        pool = make_redis_pool(
            url,
            max_connections=max_connections,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
        )
        return Redis(connection_pool=pool)
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    nodes = [_node(host) for host in hosts.split(",") if host.strip()]
    if not nodes:
        raise ValueError(f"a Redis Cluster URL names no node: {url!r}")
    cluster: RedisCluster = RedisCluster(
        startup_nodes=nodes,
        username=unquote(username) or None,
        password=unquote(password) or None,
        ssl=CLUSTER_SCHEMES[parts.scheme],
        # redis-py's cluster client refuses a command past its per-node cap (it does not wait
        # for a free connection as the single pool does): a cap well above the concurrency we
        # run at, far below the 10,000 clients a node accepts.
        max_connections=max(max_connections, CLUSTER_MIN_CONNECTIONS),
        socket_timeout=read_timeout_s,
        socket_connect_timeout=connect_timeout_s,
        # A master's death: its replica is promoted within the cluster's node timeout; a few
        # retries of a command that met the dead node see the new slot map.
        cluster_error_retry_attempts=5,
    )
    return cluster


def _node(host_port: str) -> ClusterNode:
    host, _, port = host_port.strip().rpartition(":")
    if not host:
        host, port = port, "6379"
    return ClusterNode(host.strip("[]"), int(port))


def queue_pool(
    calls: RedisClient, queue_url: str, calls_url: str, *, max_connections: int, timeout_s: float
) -> ConnectionPool:
    """The pool of arq's queue: the call keys' own when both are the same single Redis (one set
    of connections), else one of its own on QUEUE_REDIS_URL."""
    if isinstance(calls, Redis) and queue_url == calls_url:
        return calls.connection_pool
    return make_redis_pool(
        queue_url,
        max_connections=max_connections,
        connect_timeout_s=timeout_s,
        read_timeout_s=timeout_s,
    )


async def close_redis(client: RedisClient, *more_pools: object) -> None:
    """Close the client's connections, and those of `more_pools` that are not its own."""
    if isinstance(client, RedisCluster):
        await client.aclose()
    for pool in (client.connection_pool, *more_pools) if isinstance(client, Redis) else more_pools:
        if isinstance(pool, ConnectionPool):
            await pool.aclose()
