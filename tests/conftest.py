"""Shared fixtures: a real Redis server process for the whole session.

The suite starts Redis with the same `EmbeddedRedis` the bot uses when no `redis.url`
is configured, so it needs no system Redis. Each test gets a flushed database.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot.memory.redis_server import EmbeddedRedis
from bot.ops import logs
from tests.harness import LATENCIES
from tests.standin.latency import Latency


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis-data"))
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
async def redis_client(redis_server: EmbeddedRedis) -> AsyncIterator[aioredis.Redis]:
    if not redis_server.running:  # a fault test may have stopped it
        redis_server.start()
    client = aioredis.from_url(redis_server.url, decode_responses=True)
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
