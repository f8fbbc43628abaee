"""The Discord client: intents, extensions, the command tree's error handling, pacing.

Why here: this is the one module under `bot/` that knows Discord. It loads the cogs
from an explicit list in `setup_hook`, turns every app-command error into an
ephemeral message in one place, and feeds Discord's rate-limit headers to the shared
streaming budget so replies pace themselves before discord.py would have to block.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Coroutine
from types import SimpleNamespace
from typing import Any

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot.delivery.budget import RateBudget
from bot.errors import BotError, PermissionDenied, user_message
from bot.models import Place
from bot.services import Services

log = logging.getLogger(__name__)

EXTENSIONS = (
    "cogs.chat",
    "cogs.persona",
    "cogs.admin",
    "cogs.usage",
    "cogs.memory",
    "cogs.model",
    "cogs.thinking",
    "cogs.tools",
    "cogs.reply_buttons",
)

# What the bot needs, and why: read and answer in channels and threads, edit its own
# streamed replies, show typing, and register slash commands.
PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    read_message_history=True,
    embed_links=True,
)

_CHANNEL_ROUTE = re.compile(r"/channels/(\d+)/(messages|typing)(/\d+)?$")


def bucket_key(kind: str, channel_id: int) -> str:
    """The streaming budget's name for Discord's per-channel rate-limit bucket."""
    return f"{kind}:{channel_id}"


def invite_url(application_id: int) -> str:
    return discord.utils.oauth_url(
        application_id, permissions=PERMISSIONS, scopes=("bot", "applications.commands")
    )


def place_of(channel: Any) -> Place:
    """The conversation a Discord channel, thread or DM stands for."""
    guild = getattr(channel, "guild", None)
    parent_id = getattr(channel, "parent_id", None) if isinstance(channel, discord.Thread) else None
    return Place(
        channel_id=channel.id,
        channel_name=getattr(channel, "name", None) or "direct-message",
        guild_id=guild.id if guild else None,
        guild_name=guild.name if guild else None,
        parent_id=parent_id,
    )


def require(interaction: discord.Interaction[Any], permission: str, label: str) -> None:
    """Check a permission again at run time (default permissions can be overridden)."""
    if interaction.guild is None:
        return  # in a DM the user owns the conversation
    if not getattr(interaction.permissions, permission, False):
        raise PermissionDenied(label)


class BotTree(app_commands.CommandTree["ChatBot"]):
    """Every slash-command error becomes one ephemeral message, worded in one place."""

    async def on_error(
        self, interaction: discord.Interaction[ChatBot], error: app_commands.AppCommandError
    ) -> None:
        cause: BaseException = error
        if isinstance(error, app_commands.CommandInvokeError):
            cause = error.original
        await self.report(interaction, cause)

    async def report(self, interaction: discord.Interaction[Any], cause: BaseException) -> None:
        """Tell the user what went wrong; used by commands and by modals."""
        if isinstance(cause, discord.NotFound) and cause.code in (10062, 10015):
            # Unknown interaction / webhook: the token expired, nobody is left to tell.
            log.warning("could not answer an interaction: it expired (Discord code %s)", cause.code)
            return
        if isinstance(cause, app_commands.MissingPermissions):
            needed = ", ".join(p.replace("_", " ").title() for p in cause.missing_permissions)
            cause = PermissionDenied(needed)
        elif isinstance(cause, app_commands.NoPrivateMessage):
            cause = BotError("That command only works in a server.")
        if not isinstance(cause, BotError):
            name = interaction.command.qualified_name if interaction.command else "?"
            log.error("command /%s failed", name, exc_info=cause)
        await send_ephemeral(interaction, user_message(cause))


async def send_ephemeral(
    interaction: discord.Interaction[Any],
    text: str,
    *,
    embed: discord.Embed | None = None,
    file: discord.File | None = None,
) -> None:
    """Answer an interaction privately, whether or not it was acknowledged already."""
    kwargs: dict[str, Any] = {"ephemeral": True, "allowed_mentions": discord.AllowedMentions.none()}
    if embed is not None:
        kwargs["embed"] = embed
    if file is not None:
        kwargs["file"] = file
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, **kwargs)
        else:
            await interaction.response.send_message(text, **kwargs)
    except discord.HTTPException as exc:
        # e.g. the interaction token expired (15 minutes): nobody is left to tell.
        log.warning("could not answer interaction: %s", exc)


class ChatBot(commands.AutoShardedBot):
    def __init__(self, services: Services, budget: RateBudget) -> None:
        config = services.config.discord
        intents = discord.Intents.default()
        intents.message_content = True
        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(self._on_http_response)
        # The bot never joins voice: skip discord.py's start-up warnings about the missing
        # voice libraries (PyNaCl, davey), which would be the only warnings of a healthy start.
        discord.VoiceClient.warn_nacl = False
        discord.VoiceClient.warn_dave = False
        shard_kwargs: dict[str, Any] = {}
        if config.shard_count:
            shard_kwargs["shard_count"] = config.shard_count
            if config.shard_ids:
                shard_kwargs["shard_ids"] = list(config.shard_ids)
        super().__init__(
            command_prefix=commands.when_mentioned,
            help_command=None,
            intents=intents,
            tree_cls=BotTree,
            # Nothing the bot sends pings anyone unless a call opts in explicitly.
            allowed_mentions=discord.AllowedMentions.none(),
            activity=discord.CustomActivity(name=config.status) if config.status else None,
            http_trace=trace,
            **shard_kwargs,
        )
        self.services = services
        self.budget = budget
        # Replies in progress, so shutdown can let them finish or end them cleanly.
        self.active_replies: set[asyncio.Task[None]] = set()
        self.accepting = True
        # True once every shard of this process has connected; `after_launch` is then
        # called (the runner uses it to honour a stop asked for during the start).
        self.launched = False
        self.after_launch: Callable[[], None] | None = None

    async def launch_shards(self) -> None:
        await super().launch_shards()
        self.launched = True
        if self.after_launch is not None:
            self.after_launch()

    def start_reply(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self.active_replies.add(task)
        task.add_done_callback(self.active_replies.discard)

    async def setup_hook(self) -> None:
        for ext in EXTENSIONS:
            await self.load_extension(ext)
        await self._check_application()
        for guild_id in self.services.config.discord.dev_guilds:
            guild = discord.Object(guild_id)
            self.tree.copy_global_to(guild=guild)
            synced = await self.tree.sync(guild=guild)
            log.info("synced %d commands to dev guild %s", len(synced), guild_id)

    async def _check_application(self) -> None:
        app = await self.application_info()
        log.info("invite the bot with: %s", invite_url(app.id))
        flags = app.flags
        if not (flags.gateway_message_content or flags.gateway_message_content_limited):
            log.warning(
                "The Message Content intent looks disabled for this application: the bot "
                "cannot read messages. Enable it in the Developer Portal -> your app -> Bot -> "
                "Privileged Gateway Intents -> Message Content Intent."
            )

    async def on_message(self, message: discord.Message) -> None:
        """No text commands: the Chat cog answers messages; this stops commands.Bot's parser."""

    async def on_ready(self) -> None:
        log.info(
            "connected as %s (%s) in %d servers", self.user, getattr(self.user, "id", "?"),
            len(self.guilds),
        )  # fmt: skip

    async def _on_http_response(
        self,
        session: aiohttp.ClientSession,
        ctx: SimpleNamespace,
        params: aiohttp.TraceRequestEndParams,
    ) -> None:
        headers = params.response.headers
        if params.response.status == 429 and (
            headers.get("X-RateLimit-Global", "").lower() == "true"
            or headers.get("X-RateLimit-Scope") == "global"
        ):
            # A global limit stops every request the bot makes: hold all streams too, so
            # their requests don't pile up inside discord.py meanwhile.
            with contextlib.suppress(ValueError):
                self.budget.observe_global(float(headers.get("Retry-After") or 1))
        match = _CHANNEL_ROUTE.search(params.url.path)
        if match is None:
            return
        channel_id, route, with_id = int(match[1]), match[2], match[3]
        if route == "typing":
            kind = "typing"
        elif params.method == "PATCH" and with_id:
            kind = "edit"
        elif params.method == "POST" and not with_id:
            kind = "send"
        else:
            return
        metrics = self.services.metrics
        metrics.discord_request(kind)
        if params.response.status == 429:
            metrics.discord_rate_limited()
            log.warning("Discord rate limited a %s in channel %s", kind, channel_id)
        remaining, reset_after = (
            headers.get("X-RateLimit-Remaining"),
            headers.get("X-RateLimit-Reset-After"),
        )
        if remaining is not None and reset_after is not None:
            with contextlib.suppress(ValueError):
                self.budget.observe(
                    bucket_key(kind, channel_id), int(remaining), float(reset_after)
                )

    async def close(self) -> None:
        """Stop taking messages, let replies finish (up to the grace time), then close."""
        self.accepting = False
        pending = set(self.active_replies)
        if pending:
            grace = self.services.config.discord.shutdown_grace_s
            log.info("shutting down: waiting up to %.0f s for %d replies", grace, len(pending))
            _, pending = await asyncio.wait(pending, timeout=grace)
        if pending:
            log.warning("shutting down: interrupting %d replies", len(pending))
            for task in pending:
                task.cancel()
            # Each cancelled reply posts its "interrupted" note before it ends.
            await asyncio.wait(pending, timeout=10)
        await super().close()
