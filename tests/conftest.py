"""Real PostgreSQL and Redis for the whole suite, started by the suite itself on free ports
(or TEST_DATABASE_URL / TEST_REDIS_URL); every test starts from empty stores."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from alembic import command
from alembic.config import Config
from arq.worker import Worker
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient
from redis.asyncio import Redis
from redis.cluster import RedisCluster as SyncRedisCluster
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from core.builders import feed_limits
from db.redis_client import close_redis, make_redis
from devstack.cluster import EmbeddedRedisCluster
from devstack.servers import EmbeddedPostgres, EmbeddedRedis
from jobs.resources import WorkerResources, make_resources
from service.app import create_asgi
from settings import Settings
from tests.fakes import ScriptedAI
from tests.serving import arq_worker

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def server_urls() -> Iterator[tuple[str, str]]:
    db_url, redis_url = os.environ.get("TEST_DATABASE_URL"), os.environ.get("TEST_REDIS_URL")
    started: list[EmbeddedPostgres | EmbeddedRedis] = []
    with tempfile.TemporaryDirectory(prefix="callstream-test-") as tmp:
        if not db_url:
            pg = EmbeddedPostgres(Path(tmp) / "pg", fast_and_unsafe=True).start()
            started.append(pg)
            db_url = pg.url
        if not redis_url:
            redis = EmbeddedRedis(Path(tmp) / "redis").start()
            started.append(redis)
            redis_url = redis.url
        migrate(db_url)
        try:
            yield db_url, redis_url
        finally:
            for server in reversed(started):
                server.stop()


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Redis Cluster (3 masters, a replica each), started on first use by a test that
    asks for it, or TEST_REDIS_CLUSTER_URL; each such test starts with it empty."""
    if url := os.environ.get("TEST_REDIS_CLUSTER_URL"):
        yield url
        return
    cluster = EmbeddedRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster.start().url
    finally:
        cluster.stop()


def connect_to_cluster(url: str) -> SyncRedisCluster:
    """redis-py finds every node from the first one of a redis+cluster:// URL."""
    scheme, nodes = url.split("://", 1)
    first = f"{scheme.removesuffix('+cluster')}://{nodes.split(',')[0]}"
    client: SyncRedisCluster = SyncRedisCluster.from_url(first)
    return client


@pytest.fixture
def empty_cluster(redis_cluster_url: str) -> None:
    with connect_to_cluster(redis_cluster_url) as client:
        client.flushall(target_nodes=SyncRedisCluster.PRIMARIES)  # replicas follow


def migrate(db_url: str, revision: str = "head") -> None:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "db" / "migrations"))
    cfg.set_main_option("sqlalchemy.url", db_url)
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, revision)


# The live feed's limits as the settings' defaults give them: for the tests that build a store
# of the feed (an intake, an event log) without the app's settings.
FEED = feed_limits(Settings(_env_file=None))


def make_settings(db_url: str, redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "redis_url": redis_url,
        "ai_failure_rate": 0.0,
        "ai_latency_min_s": 0.0,
        "ai_latency_max_s": 0.0,
        "ai_seed": 7,
        "ai_backoff_base_s": 0.01,
        "ai_backoff_max_s": 0.02,
        "lease_ttl_s": 3.0,
        "call_idle_timeout_s": 30.0,
        # Most tests send a whole call at once with no worker running (a flush at the end): the
        # tail's bound (TAIL_MAX_SEGMENTS, 2 in make run) would hold them back. Its own tests
        # (tests/service/test_backpressure.py) set it.
        "tail_max_segments": 0,
        # The suite's one process serves many apps: its collector is left as it is.
        "settle_heap": False,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked both_topologies run twice: call keys on a single Redis, then on a real
    Redis Cluster (the job queue stays on the single Redis, as QUEUE_REDIS_URL requires)."""
    marked = metafunc.definition.get_closest_marker("both_topologies") is not None
    if marked and "topology" in metafunc.fixturenames:
        metafunc.parametrize("topology", ["single", "cluster"], indirect=True, scope="session")


@pytest.fixture(scope="session")
def topology(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "single"))


@pytest.fixture(scope="session")
def settings(
    server_urls: tuple[str, str], topology: str, request: pytest.FixtureRequest
) -> Settings:
    db_url, redis_url = server_urls
    if topology == "cluster":
        cluster_url = request.getfixturevalue("redis_cluster_url")
        return make_settings(db_url, cluster_url, queue_redis_url=redis_url)
    return make_settings(db_url, redis_url)


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(settings.database_url)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    """The call keys' store (a cluster client for the cluster topology: typed as Redis, since
    tests use the commands both have)."""
    client = make_redis(
        settings.redis_url, max_connections=64, connect_timeout_s=2.0, read_timeout_s=10.0
    )
    yield cast(Redis, client)
    await close_redis(client)


@pytest.fixture
async def queue(settings: Settings) -> AsyncIterator[Redis]:
    """The job queue's Redis (QUEUE_REDIS_URL: the same as the call keys' on a single Redis)."""
    async with Redis.from_url(settings.queue_url) as client:
        yield client


@pytest.fixture
async def empty_stores(redis: Redis, engine: AsyncEngine, settings: Settings) -> None:
    await redis.flushdb()  # every master, on a cluster
    if settings.queue_url != settings.redis_url:
        async with Redis.from_url(settings.queue_url) as queue:
            await queue.flushdb()
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "TRUNCATE call, call_segment, transcript_window, utterance, ai_attempt, erasure,"
                " state_transition, webhook_delivery CASCADE"
            )
        )


@pytest.fixture(autouse=True)
def clean_stores(request: pytest.FixtureRequest) -> None:
    """Every test that uses the shared servers starts from empty stores. Tests of pure logic
    (and the chaos suite, which starts its own) ask for no server fixture, so none is started.
    Sync on purpose: an async fixture cannot resolve other async fixtures by name."""
    if "server_urls" in request.fixturenames:
        request.getfixturevalue("empty_stores")
    if "redis_cluster_url" in request.fixturenames:
        request.getfixturevalue("empty_cluster")


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncClient]:
    app = create_asgi(settings)
    async with (
        LifespanManager(app) as manager,
        AsyncClient(transport=ASGITransport(manager.app), base_url="http://localhost") as client,
    ):
        yield client


@pytest.fixture
def ai() -> ScriptedAI:
    return ScriptedAI()


@pytest.fixture
async def worker_resources(settings: Settings, ai: ScriptedAI) -> AsyncIterator[WorkerResources]:
    res = make_resources(settings, ai=ai)
    yield res
    await res.close()


async def drain_queue(res: WorkerResources, **overrides: Any) -> Worker:
    """Run a real arq worker until the queue is empty, as arq's own tests do."""
    worker = arq_worker(res, burst=True, poll_delay=0, **overrides)
    try:
        await worker.main()
    finally:
        await worker.close()
    return worker


@pytest.fixture
def run_worker(worker_resources: WorkerResources) -> Any:
    async def run(res: WorkerResources | None = None, **overrides: Any) -> Worker:
        return await drain_queue(res or worker_resources, **overrides)

    return run
