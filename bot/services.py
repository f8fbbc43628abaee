"""Everything the bot's front ends (Discord, console) share, built in one place.

`open_services` is the single wiring point: it starts (or connects to) Redis, opens the
one aiohttp session and builds the services on top. Discord cogs and the console
receive the `Services` object and never construct dependencies themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster

from bot.chat.controls import ReplyControls
from bot.chat.conversation import ConversationService
from bot.chat.memory import MemoryService
from bot.chat.model_choice import ModelChoiceService
from bot.chat.personas import PersonaService
from bot.chat.summary import SummaryService, summary_llm_config
from bot.chat.thoughts import ThoughtsService
from bot.chat.usage import UsageService
from bot.config import Config
from bot.delivery.gate import Cooldown
from bot.llm.client import LLMClient
from bot.llm.models import ModelRegistry
from bot.llm.tokens import TokenCounter
from bot.memory.cluster import cluster_client, wants_cluster
from bot.memory.redis_server import EmbeddedRedis
from bot.memory.store import Store
from bot.ops.metrics import Metrics
from bot.tools.control import ToolService
from bot.tools.mcp import ToolManager

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Services:
    config: Config
    store: Store
    llm: LLMClient
    counter: TokenCounter
    conversations: ConversationService
    personas: PersonaService
    usage: UsageService
    cooldown: Cooldown
    metrics: Metrics
    session: aiohttp.ClientSession
    embedded_redis: EmbeddedRedis | None
    summaries: SummaryService
    memory: MemoryService
    thoughts: ThoughtsService
    tools: ToolService | None = None
    # Replies being written, for their Stop / Regenerate / Retry buttons.
    controls: ReplyControls = field(default_factory=ReplyControls)


async def wait_for_redis(
    client: aioredis.Redis | RedisCluster, *, attempts: int = 8, first_delay: float = 0.5
) -> None:
    """Retry with backoff so a Redis that starts a little later than the bot is fine."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            await client.ping()
            return
        except (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            redis.exceptions.RedisClusterException,  # a cluster client that found no node
            OSError,
        ) as exc:
            if attempt == attempts:
                raise ConnectionError(
                    f"Redis is unreachable after {attempts} attempts ({type(exc).__name__}). "
                    "Check redis.url / REDIS_URL, or leave it empty to use the built-in Redis."
                ) from exc
            log.warning(
                "Redis unreachable (attempt %d/%d); retrying in %.1f s", attempt, attempts, delay
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10)


async def _finish_even_if_cancelled(work: Coroutine[Any, Any, None]) -> None:
    """Await `work` (a thread's job) to its end even when the caller is cancelled.

    A cancelled `to_thread` await returns at once while the thread carries on: a SIGTERM
    during start-up would unwind before `EmbeddedRedis.start` had recorded its process,
    and the cleanup would find nothing to stop. Let the start finish, then re-raise.
    """
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(task), 30)
        raise


# A burst of replies (hundreds of channels at once) can need more connections at the
# same instant than the pool holds; they then wait briefly for a free one instead of
# failing at once with MaxConnectionsError, which people would see as "memory unavailable"
# although Redis is fine.
REDIS_MAX_CONNECTIONS = 64
REDIS_POOL_WAIT_S = 2.5


def redis_client(url: str) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_MAX_CONNECTIONS,
        timeout=REDIS_POOL_WAIT_S,
        decode_responses=True,
        # Short: a slash command has 3 s to answer, and Redis answers in milliseconds
        # when it is healthy; a hung Redis should become "memory unavailable" quickly.
        socket_connect_timeout=2,
        socket_timeout=2.5,
        health_check_interval=30,
        retry_on_timeout=False,
    )
    return aioredis.Redis.from_pool(pool)


@contextlib.asynccontextmanager
async def open_services(
    config: Config, *, metrics: Metrics | None = None, redis_attempts: int = 8
) -> AsyncIterator[Services]:
    """Build every service; on exit close them in reverse order (Redis data flushed)."""
    async with contextlib.AsyncExitStack() as stack:
        embedded: EmbeddedRedis | None = None
        url = config.redis.url
        if not url:
            embedded = EmbeddedRedis(Path(config.redis.data_dir))
            stack.callback(embedded.cleanup)
            await _finish_even_if_cancelled(asyncio.to_thread(embedded.start))
            url = embedded.url
        client = redis_client(url)
        stack.push_async_callback(client.aclose)
        await wait_for_redis(client, attempts=redis_attempts)
        store_client: aioredis.Redis | RedisCluster = client
        if await wants_cluster(client, config.redis.cluster):
            store_client = cluster_client(url)
            stack.push_async_callback(store_client.aclose)
            await wait_for_redis(store_client, attempts=redis_attempts)
            log.info("Redis Cluster mode (redis.cluster = %s)", config.redis.cluster)

        # No pool limit: every streaming reply holds one connection to the LLM for its
        # whole length, and aiohttp's default of 100 would queue the 101st reply.
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        stack.push_async_callback(session.close)

        counter = TokenCounter()
        await asyncio.to_thread(counter.load)
        metrics = metrics or Metrics()
        store = Store(
            store_client,
            prefix=config.redis.key_prefix,
            max_turns=config.history.stored_turns_cap,
            retention_days=config.history.retention_days,
            metrics=metrics,
        )
        models = ModelRegistry.build(config, session, counter)
        # The default model's client and settings: what `llm` and `config.llm` always were
        # with a single [llm] section (then they are exactly those); summaries use them too.
        llm = models.client(models.default)
        default_llm = models.default.llm
        model_choice = ModelChoiceService(store, models)
        usage = UsageService(store, config.usage, prices=models.price)
        summaries = SummaryService(
            store=store,
            llm=LLMClient(session, summary_llm_config(config.history, default_llm)),
            counter=counter,
            history=config.history,
            llm_config=default_llm,
        )
        # Closed before the session and Redis (the stack unwinds in reverse).
        stack.push_async_callback(summaries.close)
        personas = PersonaService(store, config.persona)
        # MCP tool servers start with the bot (and keep retrying in the background).
        manager = ToolManager(config.mcp)
        stack.push_async_callback(manager.stop)
        await manager.start()
        tools = ToolService(manager, store, config.mcp)
        yield Services(
            config=config,
            store=store,
            llm=llm,
            counter=counter,
            conversations=ConversationService(
                store=store,
                llm=llm,
                counter=counter,
                usage=usage,
                llm_config=config.llm,
                default_persona=config.persona.default,
                metrics=metrics,
                attachments=config.attachments,
                max_images=config.history.max_images,
                summaries=summaries,
                models=models,
                choices=model_choice,
                tools=tools,
            ),
            personas=personas,
            usage=usage,
            cooldown=Cooldown(config.discord.user_burst, config.discord.user_cooldown_s),
            metrics=metrics,
            session=session,
            embedded_redis=embedded,
            summaries=summaries,
            memory=MemoryService(
                store=store,
                personas=personas,
                counter=counter,
                llm_config=default_llm,
                summaries=summaries,
            ),
            thoughts=ThoughtsService(store),
            tools=tools,
        )
