"""REDIS_WAIT_REPLICAS: a write is answered only once the replicas of the node holding the call
have it (WAIT), on a single Redis with a replica and on a real 3x1 cluster; a lost replica turns
the answer into NotReplicated, and the client's retry stores the packet once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.cluster import RedisCluster as SyncRedisCluster

from db.intake import CallIntake, Completion
from db.keys import call_keys
from db.packets import NewPacket, Outcome
from db.pipelining import NotReplicated, Replication
from db.redis_client import RedisClient, close_redis, make_redis
from devstack.cluster import ClusterNode, EmbeddedRedisCluster
from devstack.servers import EmbeddedRedis
from tests.conftest import FEED
from tests.replicas import master_and_replica, wait_for_online_replica

ONE_REPLICA = Replication(replicas=1, timeout_ms=100)


@dataclass
class Topology:
    """A master (or masters) with one replica each, and how to take a call's replica away."""

    url: str
    single: tuple[EmbeddedRedis, EmbeddedRedis] | None = None  # master, replica
    cluster: EmbeddedRedisCluster | None = None

    def master_port_of(self, call_id: str) -> int:
        if self.single is not None:
            return self.single[0].port
        assert self.cluster is not None
        seed = self.cluster.masters()[0]
        with SyncRedisCluster(host="127.0.0.1", port=seed.port) as client:
            node = client.get_node_from_key(call_keys(call_id).meta)
            assert node is not None
            return int(node.port)

    def kill_replica_of(self, call_id: str) -> EmbeddedRedis:
        if self.single is not None:
            self.single[1].kill()
            return self.single[1]
        assert self.cluster is not None
        port = self.master_port_of(call_id)
        master = next(m for m in self.cluster.masters() if m.port == port)
        (replica,) = self.cluster.replica_of(master)
        self.cluster.kill(replica)
        return replica

    def restart(self, replica: EmbeddedRedis, master_port: int) -> None:
        if self.cluster is not None:
            self.cluster.restart(cast(ClusterNode, replica))
        else:
            replica.start()
        wait_for_online_replica(master_port)


@pytest.fixture(scope="module", params=["single", "cluster"])
def topology(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Topology]:
    data = Path(tmp_path_factory.mktemp(f"wait-{request.param}"))
    if request.param == "cluster":
        cluster = EmbeddedRedisCluster(data)
        try:
            yield Topology(cluster.start().url, cluster=cluster)
        finally:
            cluster.stop()
        return
    with master_and_replica(data) as (master, replica):
        yield Topology(master.url, single=(master, replica))


@pytest.fixture
async def redis(topology: Topology) -> AsyncIterator[RedisClient]:
    client = make_redis(topology.url, max_connections=16, connect_timeout_s=2, read_timeout_s=5)
    await client.flushall()  # every master, on a cluster; replicas follow
    yield client
    await close_redis(client)


def _packet(sequence: int) -> NewPacket:
    return NewPacket(sequence, 1e9 + sequence, f"p{sequence}")


@pytest.mark.parametrize("pipelined", [True, False])
async def test_packets_and_completion_are_acknowledged_when_the_replicas_confirm(
    redis: RedisClient, pipelined: bool
) -> None:
    intake = CallIntake(redis, feed=FEED, pipelined=pipelined, replication=ONE_REPLICA)
    calls = [f"healthy-{i}" for i in range(12)]  # spread over every master of a cluster
    results = await asyncio.gather(*(intake.append(c, [_packet(0)]) for c in calls))
    assert all(r[0].outcome is Outcome.IN_ORDER for r in results)
    assert await intake.complete(calls[0], "explicit") is Completion.COMPLETED


async def test_an_acknowledged_packet_is_already_on_the_replica(
    redis: RedisClient, topology: Topology
) -> None:
    """WAIT follows the script on the connection that sent it, so it vouches for this write,
    not an older one of another pooled connection."""
    intake = CallIntake(redis, feed=FEED, pipelined=True, replication=ONE_REPLICA)
    for sequence in range(20):
        await intake.append("on-replica", [_packet(sequence)])
        port = _replica_port(topology, "on-replica")
        with SyncRedis(port=port, single_connection_client=True) as replica:
            if topology.cluster is not None:
                replica.execute_command("READONLY")  # a cluster replica serves reads only so
            stored = replica.xlen(call_keys("on-replica").packets)
        assert stored == sequence + 1, f"sequence {sequence} acknowledged, not on the replica"


def _replica_port(topology: Topology, call_id: str) -> int:
    if topology.single is not None:
        return topology.single[1].port
    assert topology.cluster is not None
    port = topology.master_port_of(call_id)
    master = next(m for m in topology.cluster.masters() if m.port == port)
    (replica,) = topology.cluster.replica_of(master)
    return replica.port


@pytest.mark.parametrize("pipelined", [True, False])
async def test_without_its_replica_a_packet_is_refused_and_its_retry_is_stored_once(
    redis: RedisClient, topology: Topology, pipelined: bool
) -> None:
    intake = CallIntake(redis, feed=FEED, pipelined=pipelined, replication=ONE_REPLICA)
    call_id = f"lonely-{pipelined}"
    await intake.append(call_id, [_packet(0)])
    master_port = topology.master_port_of(call_id)
    replica = topology.kill_replica_of(call_id)
    try:
        with pytest.raises(NotReplicated) as refused:
            await intake.append(call_id, [_packet(1)])
        assert (refused.value.confirmed, refused.value.wanted) == (0, 1)
    finally:
        await asyncio.to_thread(topology.restart, replica, master_port)

    (retry,) = await intake.append(call_id, [_packet(1)])
    assert retry.outcome is Outcome.DUPLICATE  # the refused attempt reached the master
    assert await cast(Redis, redis).xlen(call_keys(call_id).packets) == 2


async def test_a_lost_replica_refuses_only_the_calls_of_its_master(
    redis: RedisClient, topology: Topology
) -> None:
    """One pipeline, calls on every master: only those whose master lost its replica wait in
    vain; the others are acknowledged in the same batch."""
    if topology.cluster is None:
        pytest.skip("a single Redis has one master")
    intake = CallIntake(redis, feed=FEED, pipelined=True, replication=ONE_REPLICA)
    calls = [f"spread-{i}" for i in range(24)]
    victim = calls[0]
    victim_port = topology.master_port_of(victim)
    replica = topology.kill_replica_of(victim)
    try:
        outcomes = await asyncio.gather(
            *(intake.append(c, [_packet(0)]) for c in calls), return_exceptions=True
        )
    finally:
        await asyncio.to_thread(topology.restart, replica, victim_port)
    for call_id, outcome in zip(calls, outcomes, strict=True):
        same_master = topology.master_port_of(call_id) == victim_port
        assert isinstance(outcome, NotReplicated) == same_master, (call_id, outcome)
    assert any(not isinstance(o, NotReplicated) for o in outcomes)


async def test_without_its_replica_a_completion_is_refused_and_its_retry_finds_it_done(
    redis: RedisClient, topology: Topology
) -> None:
    intake = CallIntake(redis, feed=FEED, replication=ONE_REPLICA)
    await intake.append("ending", [_packet(0)])
    master_port = topology.master_port_of("ending")
    replica = topology.kill_replica_of("ending")
    try:
        with pytest.raises(NotReplicated):
            await intake.complete("ending", "explicit")
    finally:
        await asyncio.to_thread(topology.restart, replica, master_port)
    assert await intake.complete("ending", "explicit") is Completion.ALREADY
