"""Chaos on a Redis Cluster: calls stream through the real API (call keys on a 3-master cluster,
a replica each; the queue on its own Redis) while one master is SIGKILLed. Its replica takes
over; a supervisor then starts the dead node again, and it rejoins as the new master's replica.

With REDIS_WAIT_REPLICAS=1 the promise holds: no acknowledged packet lost, none stored twice, no
call stuck, one result per call. Without it, a packet the master acknowledged but had not yet
sent to its replica dies with it: the WAIT-off run reports how many did.

`pytest -s -m "chaos or chaos_long" tests/chaos/test_cluster_chaos.py` prints the figures.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx
import pytest
from redis.cluster import RedisCluster as SyncRedisCluster

from db.keys import call_keys
from devstack.cluster import ClusterNode
from tests.chaos.harness import Stack, StackConfig, pg_engine, running_stack
from tests.chaos.test_chaos import (
    FIGURES_DIR,
    Ledger,
    drive_load,
    post_until_answered,
    supervise,
    verify,
    wait_quiescent,
)

PROBE = "cluster-probe"  # a call whose slot the killed master serves


@dataclass
class Failover:
    killed: str = ""
    failover_s: float = 0.0  # kill -> the cluster serves the slots again (its own view)
    ingestion_back_s: float = 0.0  # kill -> the first packet of the killed master's acknowledged
    rejoined_s: float = 0.0  # kill -> the restarted node is a replica again
    done: asyncio.Event = field(default_factory=asyncio.Event)


def master_of(stack: Stack, call_id: str) -> ClusterNode:
    seed = stack.cluster.masters()[0]
    with SyncRedisCluster(host="127.0.0.1", port=seed.port) as client:
        node = client.get_node_from_key(call_keys(call_id).meta)
        assert node is not None
        port = int(node.port)
    return next(n for n in stack.cluster.nodes if n.port == port)


async def kill_a_master(
    stack: Stack, client: httpx.AsyncClient, ledger: Ledger, failover: Failover, after_s: float
) -> None:
    """SIGKILL the master of the probe call while calls stream; time the failover, the first
    acknowledged packet of that master's slots, and the dead node's return as a replica."""
    url = f"/v1/call/stream/{PROBE}"
    await asyncio.sleep(after_s)
    # Just before the kill: the probe must not go quiet long enough for the idle sweep.
    first = await post_until_answered(client, ledger, url, _packet(0), set())
    assert first.status_code == 202, first.text
    ledger.acknowledge(PROBE, 0, False)
    victim = master_of(stack, PROBE)
    stack.cluster.kill(victim)
    killed_at = time.monotonic()
    failover.killed = victim.address

    async def probe() -> None:
        failed: set[int] = set()
        answer = await post_until_answered(client, ledger, url, _packet(1), failed)
        failover.ingestion_back_s = time.monotonic() - killed_at
        if failed:
            ledger.ambiguous[PROBE].add(1)
        assert answer.status_code in (200, 202), answer.text
        ledger.acknowledge(PROBE, 1, bool(answer.json()["duplicate"]))

    probing = asyncio.create_task(probe())
    failover.failover_s = await asyncio.to_thread(stack.cluster.wait_for_failover, victim)
    # A supervisor restarts the dead node (systemd, Kubernetes); it comes back as a replica.
    await asyncio.to_thread(stack.cluster.restart, victim)
    failover.rejoined_s = time.monotonic() - killed_at
    await probing
    answer = await post_until_answered(client, ledger, f"/v1/call/complete/{PROBE}", None, set())
    assert answer.status_code in (200, 202), answer.text
    ledger.explicit.add(PROBE)
    failover.done.set()


def _packet(sequence: int) -> dict[str, object]:
    return {"sequence": sequence, "timestamp": 1e9 + sequence, "data": f"probe {sequence}"}


async def cluster_chaos_run(calls: int, spacing_s: float, seed: int, wait_replicas: int) -> str:
    config = StackConfig(
        ai_failure_rate=0.1,
        lease_ttl_s=5.0,
        call_idle_timeout_s=10.0,  # longer than a failover's 503s, as in production (30 s)
        redis_cluster=True,
        shared_env={
            "REDIS_WAIT_REPLICAS": str(wait_replicas),
            "REDIS_WAIT_TIMEOUT_MS": "100",
            "SEGMENT_SECONDS": "0.1",  # segments flushed while the calls go on, as on one Redis
        },
    )
    FIGURES_DIR.mkdir(exist_ok=True)
    started = time.monotonic()
    logs = FIGURES_DIR / f"cluster-logs-{seed}-wait{wait_replicas}"
    with running_stack(config, keep_logs=logs) as stack:
        engine = pg_engine(stack)
        ledger, failover, lost = Ledger(), Failover(), list[tuple[str, int]]()
        supervisor = asyncio.create_task(supervise(stack))
        try:
            limits = httpx.Limits(max_connections=64)
            async with httpx.AsyncClient(base_url=stack.api_url, timeout=5, limits=limits) as c:
                chaos = asyncio.create_task(kill_a_master(stack, c, ledger, failover, 3.0))
                await drive_load(c, ledger, calls, spacing_s, seed)
                await chaos
            await wait_quiescent(stack, engine, set(ledger.stored))
            states, stored = await verify(
                stack, engine, ledger, lost=None if wait_replicas else lost
            )
        finally:
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
            await engine.dispose()
    lines = [
        f"REDIS_WAIT_REPLICAS            {wait_replicas}",
        f"calls                          {len(ledger.stored)}",
        f"packet requests                {ledger.requests}",
        f"packets acknowledged (any 2xx) {sum(map(len, ledger.stored.values()))}",
        f"packets stored (PostgreSQL)    {stored}",
        f"acknowledged packets lost      {len(lost)} {lost[:10]}",
        f"first answers 'duplicate'      {len(ledger.unexplained_duplicates)} "
        f"{ledger.unexplained_duplicates[:10]}",
        f"503s                           {len(ledger.answers_503)}",
        f"transport errors               {ledger.transport_errors}",
        f"master killed                  {failover.killed}",
        f"failover (cluster's view)      {failover.failover_s:.1f}s",
        f"ingestion back on its slots    {failover.ingestion_back_s:.1f}s after the kill",
        f"dead node back as a replica    {failover.rejoined_s:.1f}s after the kill",
        f"final states                   {dict(states)}",
        f"run time                       {time.monotonic() - started:.1f}s",
    ]
    text_report = "\n".join(lines)
    out = FIGURES_DIR / f"cluster-figures-{seed}-wait{wait_replicas}.txt"
    out.write_text(text_report + "\n")
    # The recovery time is a figure (target 15 s, issue #12), not an assertion: on a shared
    # 2-core machine a timed assertion would be flaky.
    print(f"\ncluster chaos run ({out}):\n{text_report}")  # noqa: T201
    return text_report


@pytest.mark.chaos
@pytest.mark.timeout(120)
async def test_a_masters_death_loses_no_acknowledged_packet_with_wait() -> None:
    await cluster_chaos_run(calls=40, spacing_s=0.1, seed=11, wait_replicas=1)


@pytest.mark.chaos_long
@pytest.mark.timeout(300)
async def test_a_masters_death_without_wait_reports_what_was_lost() -> None:
    """No promise to check about loss: the figures say what the WAIT buys."""
    await cluster_chaos_run(calls=120, spacing_s=0.05, seed=12, wait_replicas=0)
