"""The local Redis Cluster (devstack/cluster.py) is a real one: every slot served, keys spread
over the masters, scripts confined to one slot, and a dead master's replica takes over."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio.cluster import ClusterNode as Seed
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, ResponseError

from devstack.cluster import ClusterNode, EmbeddedRedisCluster
from tests.conftest import connect_to_cluster

NODE_TIMEOUT_MS = 1000
# Failure detection takes the node timeout; the vote, gossip and the masters' 2 s rejoin delay
# a few seconds more; the rest is slack for a busy 2-core machine.
FAILOVER_BOUND_S = NODE_TIMEOUT_MS / 1000 + 15

# Both keys carry the tag {call:1}, so they share its slot; "a" and "b" do not.
TWO_KEYS_SCRIPT = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedisCluster]:
    cluster = EmbeddedRedisCluster(
        tmp_path_factory.mktemp("cluster"), node_timeout_ms=NODE_TIMEOUT_MS
    )
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def connect(cluster: EmbeddedRedisCluster) -> RedisCluster:
    seeds = [Seed("127.0.0.1", node.port) for node in cluster.nodes if node.is_running()]
    client: RedisCluster = RedisCluster(startup_nodes=seeds, decode_responses=True)
    return client


@pytest.fixture
async def client(cluster: EmbeddedRedisCluster) -> AsyncIterator[RedisCluster]:
    client = connect(cluster)
    await client.initialize()  # the slot map, for owner()
    yield client
    await client.aclose()


def owner(cluster: EmbeddedRedisCluster, client: RedisCluster, key: str) -> ClusterNode:
    seed = client.get_node_from_key(key)
    assert seed is not None
    return next(node for node in cluster.nodes if node.port == seed.port)


def test_every_slot_is_served_by_a_master_with_a_replica_in_sync(cluster: EmbeddedRedisCluster):
    masters = cluster.masters()

    assert len(masters) == 3
    assert cluster.url == "redis+cluster://" + ",".join(m.address for m in masters)
    for node in cluster.nodes:
        info = node.ask("CLUSTER INFO")
        assert (info["cluster_state"], info["cluster_slots_ok"]) == ("ok", "16384")
    for master in masters:
        (replica,) = cluster.replica_of(master)
        assert replica.ask("INFO", "replication")["master_link_status"] == "up"


async def test_keys_written_through_the_cluster_client_are_read_back_from_every_master(
    cluster: EmbeddedRedisCluster, client: RedisCluster
):
    keys = [f"call:{i}" for i in range(60)]
    for key in keys:
        await client.set(key, key.upper())

    assert [await client.get(key) for key in keys] == [key.upper() for key in keys]
    assert {owner(cluster, client, key).port for key in keys} == {m.port for m in cluster.masters()}


async def evalsha(client: RedisCluster, sha: str, *keys: str) -> Any:
    # The cluster client routes EVALSHA by its keys (and refuses keys of several slots).
    return await client.execute_command("EVALSHA", sha, len(keys), *keys, "LIVE")


async def test_a_script_runs_over_keys_of_one_hash_tag(client: RedisCluster):
    sha = await client.execute_command("SCRIPT LOAD", TWO_KEYS_SCRIPT)  # on every master

    assert await evalsha(client, sha, "{call:1}:state", "{call:1}:count") == 1
    assert await evalsha(client, sha, "{call:1}:state", "{call:1}:count") == 2
    assert await client.get("{call:1}:state") == "LIVE"


async def test_a_script_over_two_slots_is_refused_with_crossslot(
    cluster: EmbeddedRedisCluster, client: RedisCluster
):
    node = owner(cluster, client, "a")
    sha = node.ask("SCRIPT LOAD", TWO_KEYS_SCRIPT)

    # The server refuses it...
    with pytest.raises(ResponseError, match="CROSSSLOT"):
        node.ask("EVALSHA", sha, 2, "a", "b", "LIVE")
    # ...and redis-py's cluster client does not even send it.
    with pytest.raises(RedisClusterException, match="same key slot"):
        await evalsha(client, sha, "a", "b")


async def test_a_killed_master_is_replaced_by_its_replica_with_its_replicated_writes(
    cluster: EmbeddedRedisCluster, client: RedisCluster
):
    master = owner(cluster, client, "{call:7}:state")
    (replica,) = cluster.replica_of(master)
    with redis.Redis(port=master.port) as direct:
        direct.set("{call:7}:state", "LIVE")
        assert direct.wait(1, 5000) == 1  # acknowledged by the replica before the kill

    cluster.kill(master)
    cluster.wait_for_failover(master, timeout_s=FAILOVER_BOUND_S)

    assert replica in cluster.masters()
    assert master not in cluster.masters()
    after = connect(cluster)
    try:
        assert await after.get("{call:7}:state") == "LIVE"
        await after.set("{call:7}:state", "COMPLETED")
        assert await after.get("{call:7}:state") == "COMPLETED"
    finally:
        await after.aclose()
    # Back from the dead, the old master serves no slots: it follows the one that replaced it.
    cluster.restart(master)
    assert cluster.replica_of(replica) == [master]
    assert master not in cluster.masters()


def test_a_cluster_reopened_from_its_data_dir_keeps_its_data_and_its_shape(tmp_path: Path):
    first = EmbeddedRedisCluster(tmp_path, node_timeout_ms=NODE_TIMEOUT_MS)
    try:
        with redis.RedisCluster(host="127.0.0.1", port=first.start().masters()[0].port) as direct:
            direct.set("kept", "yes")
    finally:
        first.stop()

    reopened = EmbeddedRedisCluster(tmp_path, node_timeout_ms=NODE_TIMEOUT_MS)  # new ports
    try:
        masters = reopened.start().masters()
        assert [len(reopened.replica_of(m)) for m in masters] == [1, 1, 1]
        with redis.RedisCluster(host="127.0.0.1", port=masters[0].port) as direct:
            assert direct.get("kept") == b"yes"
    finally:
        reopened.stop()


def test_a_cluster_not_ready_in_time_names_a_node_and_leaves_no_process(tmp_path: Path):
    cluster = EmbeddedRedisCluster(tmp_path, masters=3, replicas_per_master=0)

    # A master reports cluster_state:ok 2 s after it starts at the earliest.
    with pytest.raises(TimeoutError, match=r"Redis Cluster: .*: 127\.0\.0\.1:\d+ "):
        cluster.start(timeout_s=0.5)
    assert not any(node.is_running() for node in cluster.nodes)


@pytest.mark.parametrize("run", [1, 2])
def test_the_shared_cluster_starts_each_test_empty(redis_cluster_url: str, run: int):
    with connect_to_cluster(redis_cluster_url) as client:
        masters = redis.RedisCluster.PRIMARIES
        assert client.dbsize(target_nodes=masters) == 0  # summed over the masters
        client.mset_nonatomic({f"call:{i}": run for i in range(30)})
        assert client.dbsize(target_nodes=masters) == 30
