"""A real Redis Cluster on loopback, from the same embedded redis-server as devstack/servers.py,
for the tests, the benchmarks, the chaos suite and (optionally) `make run`.

There is no redis-cli here, so the cluster is built with its own commands: slots spread evenly
over the masters (CLUSTER ADDSLOTSRANGE), every node introduced to every other (CLUSTER MEET),
replicas attached (CLUSTER REPLICATE); then we wait until every live node says cluster_state:ok,
all of them agree on who serves which slots, and every replica is in sync. Roles change (a
replica is promoted when its master dies), so who is master is always asked of the cluster.

Opening a data dir that already holds a cluster (every node's nodes.conf) keeps its data and
roles: the MEETs then only tell the nodes each other's new ports.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS

from devstack.processes import free_port, stop_all
from devstack.servers import EmbeddedRedis

HOST = "127.0.0.1"


@dataclass
class ClusterNode(EmbeddedRedis):
    """One node: an EmbeddedRedis (AOF on) in cluster mode. Its bus gets a free port of its own:
    the default, port + 10000, may be taken or past 65535."""

    bus_port: int = field(default_factory=free_port)
    node_timeout_ms: int = 2000

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",  # in --dir
            "--cluster-port", str(self.bus_port),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # A replica's full sync starts at once: the default waits 5 s for more replicas to
            # share the transfer, which would double the time a new or restarted replica takes.
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ask(self, *command: Any) -> Any:
        """One command to this node alone; short timeouts, so a dead node fails fast."""
        with redis.Redis(
            host=HOST,
            port=self.port,
            socket_timeout=2,
            socket_connect_timeout=1,
            decode_responses=True,
        ) as client:
            return client.execute_command(*command)


class EmbeddedRedisCluster:
    """`masters` masters with `replicas_per_master` replicas each, on free loopback ports, each
    node's data in `data_dir/node-<i>`. Kill nodes through kill(), so that the waits know which
    nodes are meant to be down and how long ago."""

    def __init__(
        self,
        data_dir: Path,
        masters: int = 3,
        replicas_per_master: int = 1,
        node_timeout_ms: int = 2000,
    ) -> None:
        count = masters * (1 + replicas_per_master)
        ports = [free_port() for _ in range(2 * count)]  # distinct: free_port says so
        self.data_dir = data_dir
        self.shape = (masters, replicas_per_master)
        self.nodes = [
            ClusterNode(data_dir / f"node-{i}", port=ports[2 * i], bus_port=ports[2 * i + 1],
                        node_timeout_ms=node_timeout_ms)
            for i in range(count)
        ]  # fmt: skip
        self._down: dict[int, float] = {}  # port -> when we killed it
        self._url: str | None = None

    @property
    def url(self) -> str:
        """redis+cluster:// with the masters as they were when start() returned: seeds from
        which a client discovers the cluster, whoever is master now."""
        if self._url is None:
            raise RuntimeError("the cluster is not started")
        return self._url

    def start(self, timeout_s: float = 30) -> EmbeddedRedisCluster:
        self._down.clear()
        try:
            for node in self.nodes:
                node.start()
            # No slot anywhere: an empty data dir, not a cluster an earlier run left there.
            fresh = all(
                int(node.ask("CLUSTER INFO")["cluster_slots_assigned"]) == 0 for node in self.nodes
            )
            if fresh:
                self._assign_slots()
            self._meet_all()
            self._wait_until("every node knows every other", self._strangers, timeout_s)
            if fresh:
                self._attach_replicas()
            self._wait_until("the cluster is ready", self._unsettled, timeout_s)
        except BaseException:
            self.stop()
            raise
        self._url = "redis+cluster://" + ",".join(node.address for node in self.masters())
        return self

    def stop(self) -> None:
        stop_all([node.stop for node in self.nodes])

    def masters(self) -> list[ClusterNode]:
        """The nodes serving slots, as a live node sees them now, in slot order."""
        view = self._view()
        owners = sorted(
            (int(entry["slots"][0][0]), address)
            for address, entry in view.items()
            if _is_master(entry)
        )
        return [self._node(address) for _, address in owners]

    def replica_of(self, master: ClusterNode) -> list[ClusterNode]:
        """`master`'s replicas that are not marked failed, as a live node sees them now."""
        view = self._view()
        master_id = view[master.address]["node_id"]
        return [
            self._node(address)
            for address, entry in view.items()
            if entry["master_id"] == master_id and "fail" not in _flags(entry)
        ]

    def kill(self, node: ClusterNode) -> None:
        node.kill()
        self._down[node.port] = time.monotonic()

    def restart(self, node: ClusterNode, timeout_s: float = 30) -> None:
        """Start a stopped or killed node again (same port, its AOF and nodes.conf) and wait
        until it has rejoined: a master that was replaced comes back as a replica."""
        node.start()
        self._down.pop(node.port, None)
        self._wait_until(f"{node.address} has rejoined", self._unsettled, timeout_s)

    def wait_for_failover(self, dead_master: ClusterNode, timeout_s: float = 30) -> float:
        """Seconds from the kill of `dead_master` (or from this call, if we did not kill it)
        until another node serves its slots and the cluster is settled again."""
        since = self._down.get(dead_master.port, time.monotonic())
        self._wait_until(
            f"a replica replaced {dead_master.address}",
            lambda: self._unsettled(gone=dead_master),
            timeout_s,
        )
        return time.monotonic() - since

    # Building

    def _assign_slots(self) -> None:
        masters = self.nodes[: self.shape[0]]
        for i, master in enumerate(masters):
            first = i * REDIS_CLUSTER_HASH_SLOTS // len(masters)
            last = (i + 1) * REDIS_CLUSTER_HASH_SLOTS // len(masters) - 1
            master.ask("CLUSTER ADDSLOTSRANGE", first, last)

    def _meet_all(self) -> None:
        # Every pair, not a star: each MEET also updates both sides' address of the other,
        # which a data dir from an earlier run (other ports) needs.
        for i, node in enumerate(self.nodes):
            for other in self.nodes[i + 1 :]:
                node.ask("CLUSTER MEET", HOST, other.port, other.bus_port)

    def _attach_replicas(self) -> None:
        masters, replicas = self.nodes[: self.shape[0]], self.nodes[self.shape[0] :]
        for i, replica in enumerate(replicas):
            replica.ask("CLUSTER REPLICATE", masters[i % len(masters)].ask("CLUSTER MYID"))

    # Asking

    def _live(self) -> list[ClusterNode]:
        return [node for node in self.nodes if node.port not in self._down]

    def _node(self, address: str) -> ClusterNode:
        return next(node for node in self.nodes if node.address == address)

    def _view(self) -> dict[str, dict[str, Any]]:
        """CLUSTER NODES from the first live node that answers."""
        errors = []
        for node in self._live():
            try:
                view: dict[str, dict[str, Any]] = node.ask("CLUSTER NODES")
                return view
            except redis.RedisError as exc:
                errors.append(f"{node.address}: {exc}")
        raise RuntimeError(f"no node of the cluster answers: {'; '.join(errors)}")

    def _strangers(self) -> str | None:
        for node in self._live():
            view = node.ask("CLUSTER NODES")
            known = [a for a, e in view.items() if not {"handshake", "noaddr"} & _flags(e)]
            if len(known) < len(self.nodes):
                return f"{node.address} knows {len(known)} of {len(self.nodes)} nodes"
        return None

    def _unsettled(self, gone: ClusterNode | None = None) -> str | None:
        """Why the cluster is not settled yet, naming a node; None once every live node is up,
        says cluster_state:ok, shares the others' slot map and has a role in it, every live
        replica is in sync with its master, and `gone` serves no slot in that map."""
        try:
            maps = {node.address: _settled_map(node) for node in self._live()}
        except _NotYet as exc:
            return str(exc)
        if not maps:
            return "no node is meant to be up"
        first, first_map = next(iter(maps.items()))
        for address, slot_map in maps.items():
            if slot_map != first_map:
                return f"{address} and {first} see different slot maps"
        if gone is not None and gone.address in {master for _, master, _ in first_map}:
            return f"{first} still sees {gone.address} serving slots"
        with_role = {
            address for *_, master, replicas in first_map for address in (master, *replicas)
        }
        for address in maps.keys() - with_role:
            return f"{address} is neither a master with slots nor a replica of one"
        return None

    def _wait_until(self, goal: str, problem: Callable[[], str | None], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while (reason := problem()) is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"Redis Cluster: not done after {timeout_s}s: {goal}: {reason}")
            time.sleep(0.05)


class _NotYet(Exception):
    pass


def _settled_map(node: ClusterNode) -> frozenset[tuple[Any, ...]]:
    """`node`'s slot map, once it runs, says cluster_state:ok and (a replica) is in sync with
    its master; else _NotYet says why."""
    if not node.is_running():
        raise _NotYet(f"{node.address} exited (see {node.data_dir / 'redis.log'})")
    try:
        state = node.ask("CLUSTER INFO")["cluster_state"]
        slot_map = _slot_map(node.ask("CLUSTER NODES"))
        replication = node.ask("INFO", "replication")
    except redis.RedisError as exc:
        raise _NotYet(f"{node.address} does not answer: {exc}") from exc
    if state != "ok":
        raise _NotYet(f"{node.address} says cluster_state:{state}")
    if replication["role"] == "slave" and (
        replication["master_link_status"] != "up" or replication["master_sync_in_progress"] != 0
    ):
        raise _NotYet(f"replica {node.address} is not in sync with its master")
    return slot_map


def _flags(entry: dict[str, Any]) -> set[str]:
    return set(entry["flags"].split(","))


def _is_master(entry: dict[str, Any]) -> bool:
    return "master" in _flags(entry) and "fail" not in _flags(entry) and bool(entry["slots"])


def _slot_map(view: dict[str, dict[str, Any]]) -> frozenset[tuple[Any, ...]]:
    """(slot ranges, master, its replicas not marked failed) for every master serving slots."""
    ids = {entry["node_id"]: address for address, entry in view.items()}
    replicas: dict[str, list[str]] = {}
    for address, entry in view.items():
        if entry["master_id"] in ids and "fail" not in _flags(entry):
            replicas.setdefault(ids[entry["master_id"]], []).append(address)
    return frozenset(
        (tuple(map(tuple, entry["slots"])), address, tuple(sorted(replicas.get(address, []))))
        for address, entry in view.items()
        if _is_master(entry)
    )
