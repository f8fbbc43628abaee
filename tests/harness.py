"""The whole bot over the wire: real discord.py against the Discord stand-in, the loopback
LLM server, and the session's real Redis.

`BotHarness` builds the bot exactly as `python -m bot` does (`open_services` + `ChatBot`),
only pointing discord.py at the stand-in. Tests then act as Discord users.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from bot.__main__ import make_bot
from bot.client import ChatBot
from bot.config import (
    Config,
    DiscordConfig,
    HistoryConfig,
    LLMConfig,
    PersonaConfig,
    RedisConfig,
)
from bot.services import Services, open_services
from tests.standin.discord_api import DiscordStandIn
from tests.standin.discord_models import MessageRecord
from tests.standin.latency import Latency, realistic
from tests.standin.llm_api import LLMStandIn

TOKEN = "standin-bot-token-SECRET"
MANAGE_CHANNELS = 1 << 4
MANAGE_GUILD = 1 << 5
MARKER = "⏳"


def e2e_config(
    redis_url: str,
    llm_url: str,
    guild_id: int,
    *,
    overrides: dict[str, dict[str, Any]] | None = None,
    **discord: Any,
) -> Config:
    """The test configuration. `overrides` replaces fields of other sections, e.g.
    ``{"llm": {"max_retries": 1}, "usage": {"daily_token_quota": 50}}``."""
    config = Config(
        discord=replace(
            DiscordConfig(
                token=TOKEN,
                dev_guilds=[guild_id],
                edit_interval=0.25,
                user_cooldown_s=0,
                shutdown_grace_s=5,
            ),
            **discord,
        ),
        llm=LLMConfig(
            base_url=llm_url,
            api_key="sk-e2e-SECRET",
            model="stand-in",
            max_tokens=1000,
            context_tokens=8000,
            first_token_timeout=3,
            idle_timeout=2,
            total_timeout=30,
            max_retries=0,
        ),
        redis=RedisConfig(url=redis_url, key_prefix="e2e"),
        history=HistoryConfig(max_turns=100),
        persona=PersonaConfig(
            default="You are {bot_name}, default persona.",
            presets={"pirate": "You are a pirate.", "poet": "You write verse."},
        ),
    )
    for section, values in (overrides or {}).items():
        config = replace(config, **{section: replace(getattr(config, section), **values)})
    return config


@dataclass
class BotHarness:
    discord: DiscordStandIn
    llm: LLMStandIn
    config: Config
    guild: int
    channel: int
    user: int
    bot: ChatBot | None = None
    services: Services | None = None
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    @property
    def bot_id(self) -> int:
        return self.discord.bot_user.id

    async def start(self, config: Config | None = None) -> ChatBot:
        """Start the bot (again, after `stop`) and wait until it is ready."""
        self.config = config or self.config
        stack = contextlib.AsyncExitStack()
        self.services = await stack.enter_async_context(open_services(self.config))
        bot = make_bot(self.services)
        bot._connection.guild_ready_timeout = 0.1
        await bot.login(self.config.discord.token)
        runner = asyncio.create_task(bot.connect(reconnect=True), name="bot gateway")

        async def stop() -> None:
            if not bot.is_closed():
                await bot.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runner, 10)

        stack.push_async_callback(stop)
        self._stack = stack
        await asyncio.wait_for(bot.wait_until_ready(), 15)
        self.bot = bot
        return bot

    async def stop(self) -> None:
        await self._stack.aclose()
        self.bot = None

    async def say(
        self,
        content: str,
        *,
        channel: int | None = None,
        author: int | None = None,
        mention: bool = True,
        **kwargs: Any,
    ) -> MessageRecord:
        text = f"<@{self.bot_id}> {content}" if mention else content
        return await self.discord.dispatch_message(
            channel or self.channel, author or self.user, text, **kwargs
        )

    async def settle(self, timeout: float = 20) -> None:  # noqa: ASYNC109
        """Wait until every reply in progress has finished (final edits included)."""
        assert self.bot is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await asyncio.sleep(0.05)
        while self.bot.active_replies:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("replies still running")
            await asyncio.wait(set(self.bot.active_replies), timeout=remaining)
            await asyncio.sleep(0.05)

    def replies_to(self, message: MessageRecord) -> list[MessageRecord]:
        """The bot's messages answering `message`: the first part, then its reply chain."""
        parts: list[MessageRecord] = []
        target = message.id
        while True:
            nxt = next(
                (
                    m
                    for m in self.discord.bot_messages_in(message.channel_id)
                    if m.referenced_message_id == target
                ),
                None,
            )
            if nxt is None:
                return parts
            parts.append(nxt)
            target = nxt.id

    async def ask(self, content: str, **kwargs: Any) -> list[MessageRecord]:
        message = await self.say(content, **kwargs)
        await self.settle()
        return self.replies_to(message)

    async def slash(self, name: str, options: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        kwargs.setdefault("channel_id", self.channel)
        kwargs.setdefault("user_id", self.discord.owner_user.id)
        kwargs.setdefault("guild_id", self.guild)
        record = await self.discord.invoke_slash(name, options or {}, **kwargs)
        await record.wait_response(5)
        # A deferred answer is complete once the follow-up filled in the "thinking" message.
        await self.discord.wait_for(
            lambda: not record.deferred or record.content or record.embeds, 5
        )
        return record

    async def wait(self, predicate: Callable[[], Any], timeout: float = 10) -> Any:  # noqa: ASYNC109
        return await self.discord.wait_for(predicate, timeout=timeout)


@contextlib.asynccontextmanager
async def running_bot(
    redis_url: str,
    *,
    llm: LLMStandIn | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    standin_options: dict[str, Any] | None = None,
    configure: Callable[[Config], Config] | None = None,
    latency: Latency | None = None,
    **discord_config: Any,
) -> AsyncIterator[BotHarness]:
    """A started bot. `overrides`: config sections other than discord (see `e2e_config`);
    `standin_options`: keyword arguments for `DiscordStandIn` (e.g. `rate_limits`); a
    `token=` among the discord options is used by both the bot and the stand-in;
    `configure` changes the finished test config (e.g. adds providers and models);
    `latency`: how long the stand-in takes to acknowledge requests and deliver events
    (see `LATENCIES`)."""
    async with contextlib.AsyncExitStack() as stack:
        token = discord_config.get("token", TOKEN)
        options = dict(standin_options or {})
        if latency is not None:
            options["delays"] = latency
        standin = await stack.enter_async_context(DiscordStandIn(token=token, **options))
        stack.enter_context(standin.patch_discord())
        if llm is None:
            llm = await stack.enter_async_context(LLMStandIn())
        guild, channel, user = standin.populate()
        harness = BotHarness(
            standin,
            llm,
            e2e_config(redis_url, llm.base_url, guild, overrides=overrides, **discord_config),
            guild,
            channel,
            user,
        )
        if configure is not None:
            harness.config = configure(harness.config)
        stack.push_async_callback(harness.stop)
        await harness.start()
        yield harness


#: The Discord latencies over-the-wire scenarios run with (`latency` fixture in conftest):
#: none (a loopback millisecond) and realistic (50-400 ms per request, 20-100 ms per event).
LATENCIES: dict[str, Callable[[], Latency | None]] = {"none": lambda: None, "realistic": realistic}
