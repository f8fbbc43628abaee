"""Shared fixtures: a real Redis server process for the whole session, and a real cluster.

The suite starts Redis with the same `EmbeddedRedis` the bot uses when no `redis.url`
is configured, so it needs no system Redis. Each test gets a flushed database.

Backends: tests that take `redis_client` or `redis_url` run on the single server; those
in CLUSTER_SUITES, and tests marked `@pytest.mark.cluster`, run a second time on a Redis
Cluster (3 primaries + 3 replicas on loopback, tests/cluster.py) built once per session
from the same server binary, and only when such a test is collected.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from bot.memory.redis_server import EmbeddedRedis
from bot.ops import logs
from tests.cluster import LocalCluster, connect
from tests.harness import LATENCIES
from tests.standin.latency import Latency
from tests.standin.llm_api import LLMStandIn

# Suites that run whole on both backends.
CLUSTER_SUITES = {"test_store", "test_conversation"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: also run this test on the Redis Cluster")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "redis_backend" not in metafunc.fixturenames:
        return
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    both = module in CLUSTER_SUITES or metafunc.definition.get_closest_marker("cluster")
    metafunc.parametrize(
        "redis_backend", ["single", "cluster"] if both else ["single"], indirect=True
    )


@pytest.fixture
def redis_backend(request: pytest.FixtureRequest) -> str:
    """ "single" or "cluster" (parametrized by pytest_generate_tests)."""
    return str(getattr(request, "param", "single"))


@pytest.fixture
async def llm() -> AsyncIterator[LLMStandIn]:
    """A loopback OpenAI-compatible server with default behaviour (modules may override)."""
    async with LLMStandIn() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster"), node_timeout_ms=3000)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis-data"))
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_backend: str, request: pytest.FixtureRequest) -> str:
    """The URL the bot is given: the single server's socket, or one cluster node."""
    if redis_backend == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    server: EmbeddedRedis = request.getfixturevalue("redis_server")
    if not server.running:  # a fault test may have stopped it
        server.start()
    return server.url


@pytest.fixture
async def redis_client(redis_url: str, redis_backend: str) -> AsyncIterator[aioredis.Redis]:
    client = connect(redis_url, redis_backend)
    if isinstance(client, RedisCluster):
        await client.flushall(target_nodes=RedisCluster.PRIMARIES)
    else:
        await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger and the libraries' levels back after a test set up logging."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {name: logging.getLogger(name).level for name in logs.NOISY_LOGGERS}
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    for name, lvl in noisy.items():
        logging.getLogger(name).setLevel(lvl)
    logging.captureWarnings(False)


@pytest.fixture(params=["none"])
def latency(request: pytest.FixtureRequest) -> Latency | None:
    """Discord stand-in latency for `running_bot`; a test runs with both by
    ``@pytest.mark.parametrize("latency", ["none", "realistic"], indirect=True)``."""
    return LATENCIES[request.param]()
