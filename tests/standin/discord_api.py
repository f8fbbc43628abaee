"""A loopback stand-in for Discord's REST API and gateway, strict like Discord.

Why: the bot's behaviour that matters most (streamed edits under rate limits, slash
commands, reconnects) lives in the interplay between discord.py and Discord.  Mocking
discord.py objects hides exactly those bugs, so tests run the *real* client against this
server over sockets.  It enforces what Discord enforces (content and embed limits, empty
messages, per-route and global rate limits with real headers, interaction ack rules,
token expiry) and records everything so tests can assert on timing and content.

Typical use::

    async with DiscordStandIn(token="t") as discord_api:
        guild = discord_api.add_guild("Test")
        channel = discord_api.add_channel(guild, "general")
        user = discord_api.add_user("alice", guild_id=guild)
        with discord_api.patch_discord():
            ...  # start a discord.Client with token "t"
            await discord_api.dispatch_message(channel, user, "hello")
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import yarl
from aiohttp import hdrs, web

from .discord_gateway import OP_INVALID_SESSION, OP_RECONNECT, Gateway, GatewaySession
from .discord_models import (
    ALL_PERMISSIONS,
    ATTACHMENT_SIZE_LIMIT,
    CHANNEL_CATEGORY,
    CHANNEL_DM,
    CHANNEL_PUBLIC_THREAD,
    CHANNEL_TEXT,
    DEFAULT_EVERYONE_PERMISSIONS,
    EMPTY_MESSAGE,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    INTENT_DIRECT_MESSAGES,
    INTENT_GUILD_MEMBERS,
    INTENT_GUILD_MESSAGES,
    INTENT_GUILDS,
    INTENT_MESSAGE_CONTENT,
    MESSAGE_CHAT_INPUT_COMMAND,
    MESSAGE_DEFAULT,
    MESSAGE_REPLY,
    PERM_ADMINISTRATOR,
    PERM_ATTACH_FILES,
    PERM_MANAGE_MESSAGES,
    PERM_SEND_MESSAGES,
    PERM_SEND_MESSAGES_IN_THREADS,
    PERM_VIEW_CHANNEL,
    ApiError,
    CallbackRecord,
    Channel,
    FormErrors,
    Guild,
    IdentifyRecord,
    Member,
    MessageEdit,
    MessageRecord,
    Overwrite,
    RequestRecord,
    Role,
    SnowflakeGenerator,
    User,
    base_permissions,
    channel_permissions,
    is_empty_message,
    iso,
    parse_mentions,
    snowflake_time,
    unknown,
    validate_choices,
    validate_commands,
    validate_message_fields,
    validate_modal,
)
from .latency import Latency

__all__ = [
    "CallbackRecord",
    "DiscordStandIn",
    "IdentifyRecord",
    "InteractionRecord",
    "MessageEdit",
    "MessageRecord",
    "RateLimits",
    "RequestRecord",
]

JSON_HEADERS: dict[str, str] = {"Content-Type": "application/json"}

#: Route keys are ``"METHOD /template"``; these are the buckets Discord keeps tight.
DEFAULT_ROUTE_LIMITS: dict[str, tuple[int, float]] = {
    "POST /channels/{channel_id}/messages": (5, 5.0),
    "PATCH /channels/{channel_id}/messages/{message_id}": (5, 5.0),
    # Interaction webhooks (followups, @original edits): Discord reports limit 5 there.
    "POST /webhooks/{webhook_id}/{webhook_token}": (5, 2.0),
    "PATCH /webhooks/{webhook_id}/{webhook_token}/messages/{message_id}": (5, 2.0),
}

# Application flags Discord reports for an unverified app whose privileged intents are
# switched on in the Developer Portal (presence, server members, message content).
APP_FLAGS_PRIVILEGED_LIMITED = (1 << 13) | (1 << 15) | (1 << 19)

MAJOR_PARAMETERS = ("channel_id", "guild_id", "webhook_id", "webhook_token")
ALLOWED_CREATE_FLAGS = (1 << 2) | (1 << 12) | (1 << 15)  # suppress embeds/notifications, v2

# Interaction types and the callback types Discord accepts for each.
INTERACTION_COMMAND = 2
INTERACTION_COMPONENT = 3
INTERACTION_AUTOCOMPLETE = 4
INTERACTION_MODAL_SUBMIT = 5
ALLOWED_CALLBACKS = {
    INTERACTION_COMMAND: {4, 5, 9},
    INTERACTION_COMPONENT: {4, 5, 6, 7, 9},
    INTERACTION_AUTOCOMPLETE: {8},
    INTERACTION_MODAL_SUBMIT: {4, 5, 6, 7},
}


@dataclass
class RateLimits:
    """Rate-limit settings; mutate ``standin.rate_limits`` at any time.

    ``routes`` maps a route key (``"PATCH /channels/{channel_id}/messages/{message_id}"``)
    to ``(limit, window_seconds)``; buckets are per route *and* major parameter (channel,
    guild or webhook), like Discord.  ``enabled=False`` serves no 429s of its own (forced
    ones still happen) but keeps sending headers so discord.py behaves normally.
    """

    enabled: bool = True
    global_limit: int = 50
    global_window: float = 1.0
    default: tuple[int, float] = (50, 1.0)
    routes: dict[str, tuple[int, float]] = field(default_factory=lambda: dict(DEFAULT_ROUTE_LIMITS))

    def limit_for(self, route_key: str) -> tuple[int, float]:
        return self.routes.get(route_key, self.default)


@dataclass
class _Window:
    reset_at: float
    count: int = 0


@dataclass
class _Fault:
    kind: str  # "fail" or "429"
    method: str | None
    pattern: re.Pattern[str]
    remaining: int
    status: int = 500
    body: Any = None
    retry_after: float = 1.0
    scope: str = "user"


@dataclass
class _Upload:
    field: str
    filename: str
    data: bytes
    content_type: str


@dataclass
class _Ctx:
    request: web.Request
    params: dict[str, str]
    json: Any
    uploads: list[_Upload]
    record: RequestRecord

    def body(self) -> dict[str, Any]:
        if self.json is None:
            return {}
        if not isinstance(self.json, dict):
            raise ApiError(400, 50035, "Invalid Form Body", {"_errors": [{"code": "DICT_TYPE"}]})
        return self.json

    def int_param(self, name: str, kind: str, code: int) -> int:
        try:
            return int(self.params[name])
        except ValueError:
            raise unknown(kind, code) from None


_Handler = Callable[[_Ctx], Awaitable[Any]]


@dataclass
class _Route:
    method: str
    template: str
    regex: re.Pattern[str]
    handler: _Handler
    bot_auth: bool
    global_exempt: bool

    @property
    def key(self) -> str:
        return f"{self.method} {self.template}"


@dataclass
class InteractionRecord:
    """An interaction the stand-in sent to the bot, and everything the bot did with it.

    The first callback is ``callback`` (``None`` until acknowledged).  ``original`` is the
    response message (type 4 or 5 callbacks), ``followups`` the messages sent with the
    interaction token; ``content``/``embeds``/``flags`` read the original's current state.
    """

    standin: DiscordStandIn = field(repr=False)
    id: int
    token: str
    type: int
    payload: dict[str, Any] = field(repr=False)
    user_id: int
    channel_id: int
    guild_id: int | None
    created: float = field(default_factory=time.monotonic)
    callback: CallbackRecord | None = None
    rejected_callbacks: list[CallbackRecord] = field(default_factory=list)
    original_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)
    source_message_id: int | None = None
    expired: bool = False

    @property
    def name(self) -> str:
        data = self.payload.get("data") or {}
        return str(data.get("name") or data.get("custom_id") or "")

    @property
    def response_type(self) -> int | None:
        return self.callback.type if self.callback else None

    @property
    def deferred(self) -> bool:
        return self.response_type == 5

    @property
    def modal(self) -> dict[str, Any] | None:
        """The modal the bot opened (callback type 9): ``{custom_id, title, components}``."""
        return self.callback.data if self.callback and self.callback.type == 9 else None

    @property
    def choices(self) -> list[dict[str, Any]] | None:
        """Autocomplete choices (callback type 8)."""
        if self.callback and self.callback.type == 8:
            return list(self.callback.data.get("choices") or [])
        return None

    @property
    def original(self) -> MessageRecord | None:
        return self.standin.messages.get(self.original_id) if self.original_id else None

    @property
    def followups(self) -> list[MessageRecord]:
        return [self.standin.messages[i] for i in self.followup_ids]

    @property
    def messages(self) -> list[MessageRecord]:
        """Original and followups that are still visible (not deleted)."""
        found = [m for m in [self.original, *self.followups] if m is not None]
        return [m for m in found if not m.deleted]

    @property
    def content(self) -> str | None:
        original = self.original
        return original.content if original is not None else None

    @property
    def embeds(self) -> list[dict[str, Any]]:
        original = self.original
        return original.embeds if original is not None else []

    @property
    def flags(self) -> int:
        original = self.original
        return original.flags if original is not None else 0

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def all_content(self) -> str:
        """Content of every visible message, joined by newlines (easy substring checks)."""
        return "\n".join(m.content for m in self.messages)

    def expire(self) -> None:
        """Make the token invalid now, as if 15 minutes had passed."""
        self.expired = True
        self.standin.notify_change()

    async def wait_response(self, timeout: float = 5.0) -> CallbackRecord:  # noqa: ASYNC109
        """Wait for the bot's first callback (type 4 message, 5 defer, 8, 9...)."""
        await self.standin.wait_for(lambda: self.callback is not None, timeout=timeout)
        assert self.callback is not None
        return self.callback

    async def wait_until(
        self,
        predicate: Callable[[InteractionRecord], Any],
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> Any:
        """Wait until ``predicate(self)`` is truthy; re-checked after every change."""
        return await self.standin.wait_for(lambda: predicate(self), timeout=timeout)

    async def wait_content(self, timeout: float = 5.0) -> str:  # noqa: ASYNC109
        """Wait until the original response shows content (defers resolved) and return it."""
        await self.wait_until(
            lambda r: r.original is not None and not r.original.loading and r.original.content,
            timeout=timeout,
        )
        return self.content or ""


class _DiscordPatch:
    """Undo handle for :meth:`DiscordStandIn.patch_discord`; also a context manager."""

    def __init__(self, undo: Callable[[], None]) -> None:
        self._undo = undo
        self._done = False

    def __call__(self) -> None:
        if not self._done:
            self._done = True
            self._undo()

    def __enter__(self) -> _DiscordPatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self()


class DiscordStandIn:
    """Discord's REST API (``/api/v10``) and gateway (``/gateway``) on 127.0.0.1.

    ``token`` is the only bot token accepted (REST ``Authorization: Bot <token>`` and
    IDENTIFY).  The bot user's id equals ``application_id``.  ``shard_count`` is what
    ``GET /gateway/bot`` recommends.  ``ack_deadline`` (Discord: 3 s, ``None`` = off) is
    how long the bot has to acknowledge an interaction; ``interaction_token_ttl`` (15 min)
    how long its token works for followups and edits.  ``dispatch_own_messages`` echoes
    the bot's messages back as MESSAGE_CREATE, as Discord does.  With
    ``privileged_intents_allowed=False`` an IDENTIFY asking for members/presences/message
    content is closed with 4014, like an app without those intents enabled; the
    application's ``flags`` (``GET /applications/@me``, READY) tell the same story.
    """

    def __init__(
        self,
        token: str = "standin-bot-token",
        *,
        bot_name: str = "StandInBot",
        application_id: int | None = None,
        rate_limits: RateLimits | bool = True,
        shard_count: int = 1,
        heartbeat_interval: float = 41.25,
        ack_deadline: float | None = 3.0,
        interaction_token_ttl: float = 15 * 60.0,
        dispatch_own_messages: bool = True,
        privileged_intents_allowed: bool = True,
        host: str = "127.0.0.1",
        delays: Latency | None = None,
    ) -> None:
        self.token = token
        self.host = host
        self.ids = SnowflakeGenerator()
        if isinstance(rate_limits, RateLimits):
            self.rate_limits = rate_limits
        else:
            self.rate_limits = RateLimits(enabled=bool(rate_limits))
        self.shard_count = shard_count
        self.ack_deadline = ack_deadline
        self.interaction_token_ttl = interaction_token_ttl
        self.dispatch_own_messages = dispatch_own_messages
        self.latency = 0.0
        #: Per-route acknowledgement delay and gateway dispatch delay (see latency.py).
        self.delays = delays or Latency()
        self.gateway = Gateway(
            self,
            heartbeat_interval=heartbeat_interval,
            privileged_intents_allowed=privileged_intents_allowed,
            delays=self.delays,
        )

        self.application_id = application_id or self.ids.next()
        self.bot_user = User(self.application_id, bot_name, bot=True)
        self.owner_user = User(self.ids.next(), "app-owner", global_name="App Owner")
        self.users: dict[int, User] = {
            self.bot_user.id: self.bot_user,
            self.owner_user.id: self.owner_user,
        }
        self.guilds: dict[int, Guild] = {}
        self.channels: dict[int, Channel] = {}
        self.dm_channels: dict[int, int] = {}
        self.dm_blocked: set[int] = set()
        self.messages: dict[int, MessageRecord] = {}
        self.interactions: dict[int, InteractionRecord] = {}
        self.commands: dict[int | None, list[dict[str, Any]]] = {}
        self.command_syncs: list[tuple[float, int | None, list[dict[str, Any]]]] = []
        self._command_ids: dict[tuple[int | None, str, int], int] = {}
        self.attachment_blobs: dict[int, tuple[bytes, str]] = {}
        self.attachment_downloads: list[str] = []
        self.typing: list[tuple[float, int]] = []
        self.request_log: list[RequestRecord] = []
        #: Exceptions raised inside handlers (stand-in bugs); answered 503 so they surface.
        self.internal_errors: list[BaseException] = []

        self._buckets: dict[tuple[str, str], _Window] = {}
        self._global_window: _Window | None = None
        self._faults: list[_Fault] = []
        self._latency_rules: list[tuple[str | None, re.Pattern[str], float]] = []
        self._routes = self._build_routes()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._pending: set[asyncio.Task[Any]] = set()
        self._change: asyncio.Event | None = None
        self._closed = False

    # ----------------------------------------------------------------------------------
    # Lifecycle and wiring
    # ----------------------------------------------------------------------------------

    async def start(self) -> DiscordStandIn:
        """Bind to a free port on 127.0.0.1 and start serving."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._handle_api)
        app.router.add_get("/gateway", self.gateway.handle)
        app.router.add_get("/gateway-resume", self.gateway.handle)
        app.router.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", self._serve_file)
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=None, shutdown_timeout=2.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        return self

    async def close(self) -> None:
        """Close every websocket, finish pending dispatches and stop the server."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            await self.flush()
        await self.gateway.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> DiscordStandIn:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("DiscordStandIn is not started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        """What ``discord.http.Route.BASE`` must be."""
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://{self.host}:{self.port}/gateway"

    @property
    def resume_gateway_url(self) -> str:
        """Sent in READY; a separate path so tests can see resumes use it."""
        return f"ws://{self.host}:{self.port}/gateway-resume"

    def patch_discord(self) -> _DiscordPatch:
        """Point discord.py at this server; returns an undo callable / context manager.

        Sets ``discord.http.Route.BASE`` (also used by the interaction webhook adapter) and
        ``DiscordWebSocket.DEFAULT_GATEWAY``.  Do not call ``discord.http._set_api_version``
        afterwards: it rewrites ``Route.BASE``.
        """
        import discord.gateway
        import discord.http

        old_base = discord.http.Route.BASE
        old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
        discord.http.Route.BASE = self.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)

        def undo() -> None:
            discord.http.Route.BASE = old_base
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway

        return _DiscordPatch(undo)

    # ----------------------------------------------------------------------------------
    # Change notification and waiting
    # ----------------------------------------------------------------------------------

    def notify_change(self) -> None:
        """Wake everything in :meth:`wait_for`; called after every state change."""
        if self._change is not None:
            self._change.set()
            self._change = None

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:  # noqa: ASYNC109
        """Wait until ``predicate()`` is truthy and return its value.

        Re-evaluated after each request, gateway event and record change, so there is no
        polling delay.  Raises ``TimeoutError`` with the predicate's name on timeout.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                name = getattr(predicate, "__qualname__", repr(predicate))
                raise TimeoutError(f"stand-in condition not met within {timeout}s: {name}")
            if self._change is None:
                self._change = asyncio.Event()
            event = self._change
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(remaining, 0.5))

    async def wait_connected(self, count: int = 1, timeout: float = 10.0) -> list[GatewaySession]:  # noqa: ASYNC109
        """Wait until ``count`` gateway sessions are connected and have had their guilds."""

        def ready() -> list[GatewaySession]:
            live = [s for s in self.gateway.live_sessions() if s.ready and s.connected]
            return live if len(live) >= count else []

        result: list[GatewaySession] = await self.wait_for(ready, timeout=timeout)
        return result

    async def wait_for_bot_message(
        self,
        channel_id: int,
        predicate: Callable[[MessageRecord], Any] | None = None,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> MessageRecord:
        """Wait for a (non-deleted) bot message in ``channel_id`` matching ``predicate``."""

        def found() -> MessageRecord | None:
            for msg in self.bot_messages_in(channel_id):
                if predicate is None or predicate(msg):
                    return msg
            return None

        result: MessageRecord = await self.wait_for(found, timeout=timeout)
        return result

    async def flush(self) -> None:
        """Wait for gateway events scheduled by the synchronous ``add_*`` methods."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    def _schedule(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a dispatch in the background when called from sync setup code."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()
            return
        task = loop.create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _has_sessions(self) -> bool:
        return bool(self.gateway.live_sessions())

    # ----------------------------------------------------------------------------------
    # Test-side world building
    # ----------------------------------------------------------------------------------

    def add_user(
        self,
        username: str,
        *,
        user_id: int | None = None,
        bot: bool = False,
        global_name: str | None = None,
        guild_id: int | None = None,
        roles: Iterable[int] = (),
    ) -> int:
        """Create a user; with ``guild_id`` also make them a member.  Returns the id."""
        uid = user_id or self.ids.next()
        self.users[uid] = User(uid, username, bot=bot, global_name=global_name)
        if guild_id is not None:
            self.add_member(guild_id, uid, roles=roles)
        return uid

    def add_guild(
        self,
        name: str = "Test Guild",
        *,
        guild_id: int | None = None,
        owner_id: int | None = None,
        everyone_permissions: int = DEFAULT_EVERYONE_PERMISSIONS,
    ) -> int:
        """Create a guild with its @everyone role and the bot as a member.

        The owner defaults to the application's owner user (a member with all permissions).
        """
        gid = guild_id or self.ids.next()
        owner = owner_id or self.owner_user.id
        guild = Guild(gid, name, owner)
        guild.roles[gid] = Role(gid, gid, "@everyone", everyone_permissions)
        self.guilds[gid] = guild
        guild.members[self.bot_user.id] = Member(self.bot_user.id, gid)
        if owner in self.users:
            guild.members[owner] = Member(owner, gid)
        if self._has_sessions():
            self._schedule(self._dispatch_guild_create(gid))
        self.notify_change()
        return gid

    def add_role(
        self,
        guild_id: int,
        name: str,
        permissions: int = 0,
        *,
        role_id: int | None = None,
        mentionable: bool = False,
        position: int | None = None,
    ) -> int:
        guild = self.guilds[guild_id]
        rid = role_id or self.ids.next()
        pos = position if position is not None else len(guild.roles)
        guild.roles[rid] = Role(rid, guild_id, name, permissions, pos, mentionable)
        if self._has_sessions():
            payload = {"guild_id": str(guild_id), "role": guild.roles[rid].payload()}
            self._schedule(
                self.gateway.dispatch("GUILD_ROLE_CREATE", payload, guild_id=guild_id, intent=1)
            )
        self.notify_change()
        return rid

    def add_member(
        self,
        guild_id: int,
        user_id: int,
        *,
        roles: Iterable[int] = (),
        nick: str | None = None,
        permissions: int | None = None,
    ) -> None:
        """Make ``user_id`` a member (or update their roles if already one).

        ``permissions`` forces the bitfield sent as ``member.permissions`` in this member's
        interactions instead of the value computed from roles and overwrites.
        """
        guild = self.guilds[guild_id]
        if user_id not in self.users:
            raise KeyError(f"unknown user {user_id}; call add_user first")
        role_ids = [int(r) for r in roles]
        for rid in role_ids:
            if rid not in guild.roles:
                raise KeyError(f"unknown role {rid} in guild {guild_id}")
        existing = guild.members.get(user_id)
        if existing is not None:
            existing.roles = role_ids or existing.roles
            existing.nick = nick if nick is not None else existing.nick
            if permissions is not None:
                existing.permissions_override = permissions
            event = "GUILD_MEMBER_UPDATE"
            member = existing
        else:
            member = Member(user_id, guild_id, role_ids, nick, permissions_override=permissions)
            guild.members[user_id] = member
            event = "GUILD_MEMBER_ADD"
        if self._has_sessions():
            payload = member.payload(self.users[user_id])
            payload["guild_id"] = str(guild_id)
            self._schedule(
                self.gateway.dispatch(
                    event, payload, guild_id=guild_id, intent=INTENT_GUILD_MEMBERS
                )
            )
        self.notify_change()

    def add_channel(
        self,
        guild_id: int,
        name: str = "general",
        *,
        type: int = CHANNEL_TEXT,
        channel_id: int | None = None,
        parent_id: int | None = None,
        topic: str | None = None,
        position: int | None = None,
        overwrites: Iterable[Overwrite | dict[str, Any]] = (),
        nsfw: bool = False,
    ) -> int:
        """Create a guild channel (text by default; ``type=4`` for a category)."""
        guild = self.guilds[guild_id]
        cid = channel_id or self.ids.next()
        if parent_id is not None and self.channels[parent_id].type != CHANNEL_CATEGORY:
            raise ValueError("a channel's parent_id must be a category (type 4)")
        ows = [
            o
            if isinstance(o, Overwrite)
            else Overwrite(
                int(o["id"]), int(o["type"]), int(o.get("allow", 0)), int(o.get("deny", 0))
            )
            for o in overwrites
        ]
        pos = position if position is not None else len(guild.channel_ids)
        channel = Channel(
            cid, type, guild_id, name, pos, parent_id, topic, nsfw, ows, rate_limit_per_user=0
        )
        self.channels[cid] = channel
        guild.channel_ids.append(cid)
        if self._has_sessions():
            self._schedule(
                self.gateway.dispatch(
                    "CHANNEL_CREATE", channel.payload(), guild_id=guild_id, intent=INTENT_GUILDS
                )
            )
        self.notify_change()
        return cid

    def add_category(self, guild_id: int, name: str = "Text Channels", **kwargs: Any) -> int:
        return self.add_channel(guild_id, name, type=CHANNEL_CATEGORY, **kwargs)

    def add_thread(
        self,
        parent_id: int,
        name: str = "thread",
        *,
        thread_id: int | None = None,
        owner_id: int | None = None,
        type: int = CHANNEL_PUBLIC_THREAD,
        archived: bool = False,
        locked: bool = False,
    ) -> int:
        """Create a thread under a text channel (sent in GUILD_CREATE's ``threads``)."""
        parent = self.channels[parent_id]
        if parent.guild_id is None or parent.type not in (CHANNEL_TEXT, 5, 15):
            raise ValueError("threads need a guild text/news/forum parent channel")
        tid = thread_id or self.ids.next()
        thread = Channel(
            tid,
            type,
            parent.guild_id,
            name,
            0,
            parent_id,
            owner_id=owner_id or self.owner_user.id,
            archived=archived,
            locked=locked,
        )
        self.channels[tid] = thread
        self.guilds[parent.guild_id].channel_ids.append(tid)
        if self._has_sessions():
            payload = thread.payload()
            payload["newly_created"] = True
            self._schedule(
                self.gateway.dispatch(
                    "THREAD_CREATE", payload, guild_id=parent.guild_id, intent=INTENT_GUILDS
                )
            )
        self.notify_change()
        return tid

    def open_dm(self, user_id: int) -> int:
        """The DM channel between the bot and ``user_id`` (created on first use)."""
        if user_id not in self.users:
            raise KeyError(f"unknown user {user_id}")
        existing = self.dm_channels.get(user_id)
        if existing is not None:
            return existing
        cid = self.ids.next()
        self.channels[cid] = Channel(cid, CHANNEL_DM, recipients=[user_id])
        self.dm_channels[user_id] = cid
        return cid

    def block_dms(self, user_id: int, blocked: bool = True) -> None:
        """Make bot DMs to this user fail with 50007 (user closed DMs)."""
        if blocked:
            self.dm_blocked.add(user_id)
        else:
            self.dm_blocked.discard(user_id)

    def populate(self) -> tuple[int, int, int]:
        """A guild with one text channel and one member user: ``(guild, channel, user)``."""
        guild = self.add_guild()
        channel = self.add_channel(guild, "general")
        user = self.add_user("alice", guild_id=guild)
        return guild, channel, user

    # ----------------------------------------------------------------------------------
    # Test-side gateway actions
    # ----------------------------------------------------------------------------------

    async def dispatch_message(
        self,
        channel_id: int,
        author_id: int,
        content: str = "",
        *,
        mentions: Iterable[int] = (),
        mention_roles: Iterable[int] = (),
        mention_everyone: bool = False,
        reference: int | None = None,
        attachments: Iterable[tuple[str, bytes] | tuple[str, bytes, str] | dict[str, Any]] = (),
        embeds: Iterable[dict[str, Any]] = (),
        session_id: str | None = None,
    ) -> MessageRecord:
        """A user posts a message: stored, then MESSAGE_CREATE goes to the gateways.

        ``<@id>`` mentions in ``content`` are found automatically; ``mentions`` adds more.
        ``attachments`` are ``(filename, bytes[, content_type])`` served by this server.
        ``session_id`` delivers the event to that gateway session only (when it would get
        it at all), e.g. to spread one channel's messages over two bot processes.
        """
        await self.flush()
        channel = self._channel(channel_id)
        if author_id not in self.users:
            raise KeyError(f"unknown user {author_id}")
        guild_id = self._guild_id_of(channel)
        if guild_id is not None and author_id not in self.guilds[guild_id].members:
            raise ValueError(f"user {author_id} is not a member of guild {guild_id}")
        if channel.type == CHANNEL_DM and author_id not in channel.recipients:
            raise ValueError("only the DM's recipient can post in it")
        msg = MessageRecord(self.ids.next(), channel_id, guild_id, author_id, content=content)
        msg.embeds = [dict(e) for e in embeds]
        for att in attachments:
            if isinstance(att, dict):
                msg.attachments.append(att)
            else:
                ctype = att[2] if len(att) > 2 else _guess_type(att[0])
                msg.attachments.append(self._store_attachment(channel_id, att[0], att[1], ctype))
        users, roles, everyone = parse_mentions(
            content, None, known_users=self.users, known_roles=self._role_ids(guild_id)
        )
        msg.mentions = list(dict.fromkeys([*users, *(int(m) for m in mentions)]))
        msg.mention_roles = list(dict.fromkeys([*roles, *(int(r) for r in mention_roles)]))
        msg.mention_everyone = everyone or mention_everyone
        if reference is not None:
            ref = self.messages.get(reference)
            if ref is None or ref.channel_id != channel_id:
                raise KeyError(f"unknown message {reference} in channel {channel_id}")
            msg.type = MESSAGE_REPLY
            msg.referenced_message_id = reference
            msg.message_reference = self._reference_payload(ref)
        self._store_message(msg)
        only = None if session_id is None else {session_id}
        await self._dispatch_message_event("MESSAGE_CREATE", msg, session_ids=only)
        return msg

    async def dispatch_edit(self, message_id: int, content: str) -> MessageRecord:
        """A user edits their message: MESSAGE_UPDATE with the new content."""
        msg = self.messages[message_id]
        msg.content = content
        msg.edited_timestamp = iso()
        msg.record_state(time.monotonic())
        await self._dispatch_message_event("MESSAGE_UPDATE", msg)
        self.notify_change()
        return msg

    async def dispatch_delete(self, message_id: int) -> None:
        """A user (or moderator) deletes a message: MESSAGE_DELETE."""
        msg = self.messages[message_id]
        await self._delete_message(msg)

    async def close_gateway(self, code: int = 4000, *, session_id: str | None = None) -> int:
        """Drop gateway sockets; sessions stay resumable.  Returns how many were closed."""
        closed = await self.gateway.close_connections(code, session_id=session_id)
        self.notify_change()
        return closed

    async def send_reconnect(self) -> None:
        """Send op 7 RECONNECT (the client should close and RESUME)."""
        await self.gateway.send_op(OP_RECONNECT, None)

    async def invalidate_sessions(self, *, notify: bool = True) -> None:
        """Forget all sessions; with ``notify`` send op 9 (d=false) to live sockets.

        discord.py then re-IDENTIFYs; its ``before_identify_hook`` sleeps 5 s first.
        """
        if notify:
            await self.gateway.send_op(OP_INVALID_SESSION, False)
        self.gateway.invalidate_sessions()

    async def dispatch_event(
        self,
        event: str,
        data: dict[str, Any],
        *,
        guild_id: int | None = None,
        session_id: str | None = None,
    ) -> list[str]:
        """Send any raw dispatch event (escape hatch for events without a helper).

        ``session_id`` delivers it to that gateway session only.
        """
        only = None if session_id is None else {session_id}
        return await self.gateway.dispatch(event, data, guild_id=guild_id, session_ids=only)

    # ----------------------------------------------------------------------------------
    # Test-side interactions
    # ----------------------------------------------------------------------------------

    async def invoke_slash(
        self,
        name: str,
        options: dict[str, Any] | list[dict[str, Any]] | None = None,
        *,
        channel_id: int,
        user_id: int,
        guild_id: int | None = None,
        permissions: int | None = None,
        locale: str = "en-US",
        strict: bool = True,
    ) -> InteractionRecord:
        """A user runs ``/name`` (``"group sub"`` for subcommands) with ``options``.

        ``options`` maps option names to values (types come from the synced command; user,
        channel, role and attachment options get ``resolved`` data) or is a raw option
        list.  With ``strict`` (default) it refuses what Discord would never deliver:
        ``LookupError`` for a command that was not synced (or not allowed in DMs there),
        ``PermissionError`` when the member lacks the command's
        ``default_member_permissions``.  ``strict=False`` skips those checks, e.g. to test
        the bot's own guards.
        """
        return await self._command_interaction(
            INTERACTION_COMMAND,
            name,
            options,
            focused=None,
            channel_id=channel_id,
            user_id=user_id,
            guild_id=guild_id,
            permissions=permissions,
            locale=locale,
            strict=strict,
        )

    async def invoke_autocomplete(
        self,
        name: str,
        options: dict[str, Any] | None,
        focused: str,
        *,
        channel_id: int,
        user_id: int,
        guild_id: int | None = None,
        locale: str = "en-US",
        strict: bool = True,
    ) -> InteractionRecord:
        """Autocomplete (type 4) while typing option ``focused``; read ``record.choices``."""
        return await self._command_interaction(
            INTERACTION_AUTOCOMPLETE,
            name,
            options or {},
            focused=focused,
            channel_id=channel_id,
            user_id=user_id,
            guild_id=guild_id,
            permissions=None,
            locale=locale,
            strict=strict,
        )

    async def submit_modal(
        self,
        custom_id: str,
        values: dict[str, str | list[str]],
        *,
        channel_id: int,
        user_id: int,
        guild_id: int | None = None,
    ) -> InteractionRecord:
        """Submit the modal with ``custom_id`` (the last one the bot opened) with ``values``.

        ``values`` maps input custom_ids to text (or a list of picked values for selects).
        The submitted component tree mirrors the modal's (action rows or labels), as
        Discord's client does.
        """
        modal = next(
            (
                r.modal
                for r in reversed(list(self.interactions.values()))
                if r.modal and r.modal.get("custom_id") == custom_id
            ),
            None,
        )
        components = _modal_submit_components(modal, values)
        data = {"custom_id": custom_id, "components": components}
        return await self._send_interaction(
            INTERACTION_MODAL_SUBMIT,
            data,
            channel_id=channel_id,
            user_id=user_id,
            guild_id=guild_id,
            permissions=None,
            locale="en-US",
        )

    async def invoke_component(
        self,
        message_id: int,
        custom_id: str,
        *,
        user_id: int,
        component_type: int = 2,
        values: list[str] | None = None,
    ) -> InteractionRecord:
        """Click a button / pick from a select on one of the bot's messages (type 3)."""
        msg = self.messages[message_id]
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component_type}
        if values is not None:
            data["values"] = values
        return await self._send_interaction(
            INTERACTION_COMPONENT,
            data,
            channel_id=msg.channel_id,
            user_id=user_id,
            guild_id=msg.guild_id,
            permissions=None,
            locale="en-US",
            message=msg,
        )

    async def _command_interaction(
        self,
        itype: int,
        name: str,
        options: dict[str, Any] | list[dict[str, Any]] | None,
        *,
        focused: str | None,
        channel_id: int,
        user_id: int,
        guild_id: int | None,
        permissions: int | None,
        locale: str,
        strict: bool,
    ) -> InteractionRecord:
        channel = self._channel(channel_id)
        real_guild = self._guild_id_of(channel)
        if guild_id is not None and guild_id != real_guild:
            raise ValueError(f"channel {channel_id} is not in guild {guild_id}")
        guild_id = real_guild
        parts = name.split()
        command, scope = self._find_command(parts[0], guild_id)
        if strict:
            self._check_deliverable(parts[0], command, guild_id, channel_id, user_id, permissions)
        resolved: dict[str, dict[str, Any]] = {}
        definitions = command.get("options") if command else None
        path_defs: list[dict[str, Any]] | None = definitions
        chain: list[tuple[str, int]] = []
        for sub in parts[1:]:
            sub_def = next((o for o in path_defs or [] if o.get("name") == sub), None)
            if command is not None and sub_def is None:
                raise LookupError(f"/{name}: no subcommand {sub!r}")
            sub_type = int(sub_def.get("type", 1)) if sub_def else 1
            chain.append((sub, sub_type))
            path_defs = sub_def.get("options") if sub_def else None
        if chain and command is None:
            # No definition: the last word is a subcommand, earlier ones are groups.
            chain = [(n, 2) for n, _ in chain[:-1]] + [(chain[-1][0], 1)]
        if isinstance(options, list):
            leaf = options
        else:
            leaf = self._build_options(
                path_defs if command is not None else None,
                options or {},
                resolved,
                guild_id=guild_id,
                channel_id=channel_id,
                focused=focused,
            )
        for sub, sub_type in reversed(chain):
            leaf = [{"name": sub, "type": sub_type, "options": leaf}]
        data: dict[str, Any] = {
            "id": str(command["id"]) if command else str(self.ids.next()),
            "name": parts[0],
            "type": int(command.get("type", 1)) if command else 1,
            "options": leaf,
        }
        if resolved:
            data["resolved"] = resolved
        if scope is not None:
            data["guild_id"] = str(scope)
        return await self._send_interaction(
            itype,
            data,
            channel_id=channel_id,
            user_id=user_id,
            guild_id=guild_id,
            permissions=permissions,
            locale=locale,
        )

    def _check_deliverable(
        self,
        name: str,
        command: dict[str, Any] | None,
        guild_id: int | None,
        channel_id: int,
        user_id: int,
        permissions: int | None,
    ) -> None:
        """Refuse invocations Discord's client would not even offer the user."""
        if command is None:
            raise LookupError(
                f"/{name} was never synced (globally or to guild {guild_id}); Discord would "
                "not deliver it.  Sync the tree first, or pass strict=False."
            )
        if guild_id is None:
            contexts = command.get("contexts")
            if command.get("dm_permission") is False or (
                contexts is not None and 1 not in contexts
            ):
                raise LookupError(f"/{name} is not available in DMs (contexts={contexts})")
            return
        needed = command.get("default_member_permissions")
        if needed is not None:
            have = permissions
            if have is None:
                have = self._member_permissions(guild_id, channel_id, user_id)
            # "0" means administrators only; otherwise every listed bit is required.
            missing = not have & PERM_ADMINISTRATOR if int(needed) == 0 else int(needed) & ~have
            if missing:
                raise PermissionError(
                    f"/{name} needs permissions {needed}; the member has {have}.  Discord hides "
                    "it from them; pass strict=False to deliver it anyway."
                )

    def _build_options(
        self,
        definitions: list[dict[str, Any]] | None,
        values: dict[str, Any],
        resolved: dict[str, dict[str, Any]],
        *,
        guild_id: int | None,
        channel_id: int,
        focused: str | None,
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        by_name = {o["name"]: o for o in definitions or []}
        for opt_name, value in values.items():
            definition = by_name.get(opt_name)
            if definitions is not None and definition is None:
                raise LookupError(f"option {opt_name!r} is not in the synced command")
            otype = int(definition["type"]) if definition else _infer_option_type(value)
            entry: dict[str, Any] = {"name": opt_name, "type": otype}
            if opt_name == focused:
                entry["value"] = str(value)
                entry["focused"] = True
            else:
                entry["value"] = self._option_value(otype, value, resolved, guild_id, channel_id)
            out.append(entry)
        if focused is not None and focused not in values:
            definition = by_name.get(focused)
            otype = int(definition["type"]) if definition else 3
            out.append({"name": focused, "type": otype, "value": "", "focused": True})
        if definitions is not None and focused is None:
            missing = [
                o["name"] for o in definitions if o.get("required") and o["name"] not in values
            ]
            if missing:
                raise ValueError(f"required options missing: {missing}")
        return out

    def _option_value(
        self,
        otype: int,
        value: Any,
        resolved: dict[str, dict[str, Any]],
        guild_id: int | None,
        channel_id: int,
    ) -> Any:
        if otype == 3:
            return str(value)
        if otype == 4:
            return int(value)
        if otype == 5:
            return bool(value)
        if otype == 10:
            return float(value)
        if otype in (6, 9) and int(value) in self.users:
            uid = int(value)
            resolved.setdefault("users", {})[str(uid)] = self.users[uid].payload()
            if guild_id is not None and uid in self.guilds[guild_id].members:
                member = self.guilds[guild_id].members[uid]
                perms = self._member_permissions(guild_id, channel_id, uid)
                resolved.setdefault("members", {})[str(uid)] = member.payload(
                    None, permissions=perms
                )
            return str(uid)
        if otype in (8, 9) and guild_id is not None and int(value) in self.guilds[guild_id].roles:
            rid = int(value)
            resolved.setdefault("roles", {})[str(rid)] = self.guilds[guild_id].roles[rid].payload()
            return str(rid)
        if otype == 7:
            cid = int(value)
            payload = self._channel(cid).payload(self.users)
            payload["permissions"] = str(ALL_PERMISSIONS)
            resolved.setdefault("channels", {})[str(cid)] = payload
            return str(cid)
        if otype == 11:
            if isinstance(value, dict):
                att = value
            else:
                ctype = value[2] if len(value) > 2 else _guess_type(value[0])
                att = self._store_attachment(channel_id, value[0], value[1], ctype)
            resolved.setdefault("attachments", {})[str(att["id"])] = att
            return str(att["id"])
        raise ValueError(f"cannot build a value of option type {otype} from {value!r}")

    async def _send_interaction(
        self,
        itype: int,
        data: dict[str, Any],
        *,
        channel_id: int,
        user_id: int,
        guild_id: int | None,
        permissions: int | None,
        locale: str,
        message: MessageRecord | None = None,
    ) -> InteractionRecord:
        await self.flush()
        channel = self._channel(channel_id)
        guild_id = self._guild_id_of(channel) if guild_id is None else guild_id
        if user_id not in self.users:
            raise KeyError(f"unknown user {user_id}")
        iid = self.ids.next()
        token = "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(48)
        payload: dict[str, Any] = {
            "id": str(iid),
            "application_id": str(self.application_id),
            "type": itype,
            "data": data,
            "token": token,
            "version": 1,
            "channel_id": str(channel_id),
            "locale": locale,
            "entitlements": [],
            "entitlement_sku_ids": [],
            "attachment_size_limit": ATTACHMENT_SIZE_LIMIT,
        }
        if guild_id is not None:
            guild = self.guilds[guild_id]
            member = guild.members.get(user_id)
            if member is None:
                raise ValueError(f"user {user_id} is not a member of guild {guild_id}")
            perms = permissions
            if perms is None:
                perms = self._member_permissions(guild_id, channel_id, user_id)
            channel_payload = channel.payload(self.users)
            channel_payload["permissions"] = str(perms)
            payload.update(
                {
                    "guild_id": str(guild_id),
                    "guild": {"id": str(guild_id), "locale": "en-US", "features": []},
                    "guild_locale": "en-US",
                    "channel": channel_payload,
                    "member": member.payload(self.users[user_id], permissions=perms),
                    "app_permissions": str(
                        self._member_permissions(guild_id, channel_id, self.bot_user.id)
                    ),
                    "context": 0,
                    "authorizing_integration_owners": {"0": str(guild_id)},
                }
            )
        else:
            if channel.type == CHANNEL_DM and user_id not in channel.recipients:
                raise ValueError("only the DM's recipient can use commands in it")
            payload.update(
                {
                    "channel": channel.payload(self.users),
                    "user": self.users[user_id].payload(),
                    "app_permissions": str(ALL_PERMISSIONS & ~(1 << 3)),
                    "context": 1,
                    "authorizing_integration_owners": {"0": "0"},
                }
            )
        if message is not None:
            payload["message"] = self._message_payload(message, gateway=False)
        record = InteractionRecord(self, iid, token, itype, payload, user_id, channel_id, guild_id)
        if message is not None:
            record.source_message_id = message.id
        self.interactions[iid] = record
        self.notify_change()
        await self.gateway.dispatch("INTERACTION_CREATE", payload, guild_id=guild_id)
        return record

    # ----------------------------------------------------------------------------------
    # Fault injection
    # ----------------------------------------------------------------------------------

    def fail_next(
        self,
        method: str | None,
        path_regex: str,
        status: int,
        count: int = 1,
        body: Any = None,
    ) -> None:
        """Answer the next ``count`` matching requests with ``status`` (e.g. 500, 502).

        ``path_regex`` is searched in the path below ``/api/v10`` (``/channels/1/messages``);
        ``method`` ``None`` matches any.  These happen before rate limiting.
        """
        self._faults.append(
            _Fault("fail", method, re.compile(path_regex), count, status=status, body=body)
        )

    def force_429(
        self,
        path_regex: str,
        count: int = 1,
        retry_after: float = 1.0,
        *,
        method: str | None = None,
        is_global: bool = False,
        scope: str = "user",
    ) -> None:
        """Answer the next ``count`` matching requests with a well-formed 429."""
        self._faults.append(
            _Fault(
                "429",
                method,
                re.compile(path_regex),
                count,
                retry_after=retry_after,
                scope="global" if is_global else scope,
            )
        )

    def add_latency(self, seconds: float, path_regex: str = "", method: str | None = None) -> None:
        """Delay matching requests by ``seconds`` (on top of ``self.latency`` for all)."""
        self._latency_rules.append((method, re.compile(path_regex), seconds))

    def clear_faults(self) -> None:
        self._faults.clear()
        self._latency_rules.clear()
        self.latency = 0.0

    def reset_rate_limits(self) -> None:
        """Forget all bucket state (the next request starts a fresh window)."""
        self._buckets.clear()
        self._global_window = None

    # ----------------------------------------------------------------------------------
    # Queries for assertions
    # ----------------------------------------------------------------------------------

    def message(self, message_id: int) -> MessageRecord:
        return self.messages[message_id]

    def messages_in(self, channel_id: int, *, include_deleted: bool = False) -> list[MessageRecord]:
        """All messages in a channel (users' and bot's), oldest first."""
        return sorted(
            (
                m
                for m in self.messages.values()
                if m.channel_id == channel_id and (include_deleted or not m.deleted)
            ),
            key=lambda m: m.id,
        )

    def bot_messages_in(
        self, channel_id: int, *, include_deleted: bool = False
    ) -> list[MessageRecord]:
        return [
            m for m in self.messages_in(channel_id, include_deleted=include_deleted) if m.from_bot
        ]

    def user_messages_in(self, channel_id: int) -> list[MessageRecord]:
        return [m for m in self.messages_in(channel_id) if not m.from_bot]

    def requests(
        self,
        method: str | None = None,
        path_contains: str | None = None,
        *,
        route: str | None = None,
        status: int | None = None,
    ) -> list[RequestRecord]:
        """Logged REST requests, filtered.

        ``route`` is a route key such as ``"POST /channels/{channel_id}/messages"``.
        """
        return [
            r
            for r in self.request_log
            if (method is None or r.method == method.upper())
            and (path_contains is None or path_contains in r.path)
            and (route is None or r.route == route)
            and (status is None or r.status == status)
        ]

    def count_429(self, scope: str | None = None) -> int:
        """429s served (forced ones included); ``scope`` is "user", "global" or "shared"."""
        return sum(
            1 for r in self.request_log if r.rate_limited and (scope is None or r.scope == scope)
        )

    def unknown_requests(self) -> list[RequestRecord]:
        """Requests to routes the stand-in does not implement (answered 404 code 0)."""
        return [r for r in self.request_log if r.route is None]

    def error_requests(self) -> list[RequestRecord]:
        """Non-injected requests answered with 4xx/5xx, other than 429s."""
        return [
            r for r in self.request_log if r.status >= 400 and not r.rate_limited and not r.injected
        ]

    def typing_count(self, channel_id: int) -> int:
        return sum(1 for _, c in self.typing if c == channel_id)

    def synced_commands(self, guild_id: int | None = None) -> list[dict[str, Any]]:
        """Commands as last synced (global with ``None``), with ids as echoed back."""
        return list(self.commands.get(guild_id, []))

    @property
    def identifies(self) -> list[IdentifyRecord]:
        return self.gateway.identifies

    @property
    def application_flags(self) -> int:
        """The app's flags: the privileged intents' "limited" bits when they are allowed."""
        return APP_FLAGS_PRIVILEGED_LIMITED if self.gateway.privileged_intents_allowed else 0

    # ----------------------------------------------------------------------------------
    # Gateway host hooks
    # ----------------------------------------------------------------------------------

    def ready_payload(self, session: GatewaySession) -> dict[str, Any]:
        user = self.bot_user.payload()
        user.update({"verified": True, "mfa_enabled": False, "email": None})
        data: dict[str, Any] = {
            "v": 10,
            "user": user,
            "guilds": [{"id": str(g), "unavailable": True} for g in self._guilds_for(session)],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": self.resume_gateway_url,
            "application": {"id": str(self.application_id), "flags": self.application_flags},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["us-east"],
            "user_settings": {},
            "auth": {},
        }
        if session.shard is not None:
            data["shard"] = list(session.shard)
        return data

    def guild_ids_for(self, session: GatewaySession) -> list[int]:
        """Guilds to send GUILD_CREATE for (needs the GUILDS intent, like Discord)."""
        return self._guilds_for(session) if session.has_intent(INTENT_GUILDS) else []

    def _guilds_for(self, session: GatewaySession) -> list[int]:
        return [g for g in self.guilds if session.wants_guild(g)]

    def guild_create_payload(self, guild_id: int, session: GatewaySession) -> dict[str, Any]:
        """GUILD_CREATE for one session: members only with GUILD_MEMBERS, like Discord."""
        guild = self.guilds[guild_id]
        members = list(guild.members.values())
        if not session.has_intent(INTENT_GUILD_MEMBERS):
            members = [m for m in members if m.user_id == self.bot_user.id]
        channels = [self.channels[c] for c in guild.channel_ids]
        return {
            **self._guild_payload(guild),
            "joined_at": guild.joined_at,
            "large": False,
            "unavailable": False,
            "member_count": len(guild.members),
            "members": [m.payload(self.users.get(m.user_id)) for m in members],
            "channels": [c.payload() for c in channels if not c.is_thread],
            "threads": [c.payload() for c in channels if c.is_thread and not c.archived],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    def member_chunk(self, guild_id: int, request: dict[str, Any]) -> list[dict[str, Any]]:
        """Answer to op 8: members matching ``query`` (name prefix) or ``user_ids``."""
        guild = self.guilds.get(guild_id)
        if guild is None:
            return []
        query = str(request.get("query") or "").lower()
        user_ids = request.get("user_ids")
        if isinstance(user_ids, (str, int)):
            user_ids = [user_ids]
        wanted = {int(u) for u in user_ids} if user_ids else None
        limit = int(request.get("limit") or 0)
        out: list[dict[str, Any]] = []
        for member in guild.members.values():
            user = self.users[member.user_id]
            if wanted is not None and member.user_id not in wanted:
                continue
            if query and not (
                user.username.lower().startswith(query)
                or (member.nick or "").lower().startswith(query)
            ):
                continue
            out.append(member.payload(user))
            if limit and len(out) >= limit:
                break
        return out

    # ----------------------------------------------------------------------------------
    # HTTP plumbing
    # ----------------------------------------------------------------------------------

    def _build_routes(self) -> list[_Route]:
        table: list[tuple[str, str, _Handler, bool, bool]] = [
            ("GET", "/users/@me", self._get_me, True, False),
            ("POST", "/users/@me/channels", self._create_dm, True, False),
            ("GET", "/users/{user_id}", self._get_user, True, False),
            ("GET", "/oauth2/applications/@me", self._get_application, True, False),
            ("GET", "/applications/@me", self._get_application, True, False),
            ("GET", "/gateway", self._get_gateway, False, False),
            ("GET", "/gateway/bot", self._get_gateway_bot, True, False),
            ("GET", "/channels/{channel_id}", self._get_channel, True, False),
            ("GET", "/channels/{channel_id}/messages", self._list_messages, True, False),
            ("POST", "/channels/{channel_id}/messages", self._create_message, True, False),
            ("GET", "/channels/{channel_id}/messages/{message_id}", self._get_message, True, False),
            (
                "PATCH",
                "/channels/{channel_id}/messages/{message_id}",
                self._edit_message,
                True,
                False,
            ),
            (
                "DELETE",
                "/channels/{channel_id}/messages/{message_id}",
                self._delete_message_route,
                True,
                False,
            ),
            ("POST", "/channels/{channel_id}/typing", self._typing, True, False),
            (
                "PUT",
                "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me",
                self._add_reaction,
                True,
                False,
            ),
            (
                "DELETE",
                "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me",
                self._remove_reaction,
                True,
                False,
            ),
            (
                "POST",
                "/channels/{channel_id}/messages/{message_id}/threads",
                self._thread_from_message,
                True,
                False,
            ),
            ("POST", "/channels/{channel_id}/threads", self._thread_without_message, True, False),
            ("GET", "/guilds/{guild_id}", self._get_guild, True, False),
            ("GET", "/guilds/{guild_id}/channels", self._get_guild_channels, True, False),
            ("GET", "/guilds/{guild_id}/roles", self._get_guild_roles, True, False),
            ("GET", "/guilds/{guild_id}/members/{user_id}", self._get_member, True, False),
            ("GET", "/applications/{application_id}/commands", self._get_commands, True, False),
            ("PUT", "/applications/{application_id}/commands", self._put_commands, True, False),
            (
                "GET",
                "/applications/{application_id}/guilds/{guild_id}/commands",
                self._get_commands,
                True,
                False,
            ),
            (
                "PUT",
                "/applications/{application_id}/guilds/{guild_id}/commands",
                self._put_commands,
                True,
                False,
            ),
            (
                "POST",
                "/interactions/{webhook_id}/{webhook_token}/callback",
                self._interaction_callback,
                False,
                True,
            ),
            ("POST", "/webhooks/{webhook_id}/{webhook_token}", self._followup, False, True),
            (
                "GET",
                "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}",
                self._get_webhook_message,
                False,
                True,
            ),
            (
                "PATCH",
                "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}",
                self._edit_webhook_message,
                False,
                True,
            ),
            (
                "DELETE",
                "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}",
                self._delete_webhook_message,
                False,
                True,
            ),
        ]
        routes = []
        for method, template, handler, bot_auth, exempt in table:
            pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)
            routes.append(
                _Route(method, template, re.compile(f"^{pattern}$"), handler, bot_auth, exempt)
            )
        return routes

    def _match(self, method: str, path: str) -> tuple[_Route | None, dict[str, str], bool]:
        path_known = False
        for route in self._routes:
            m = route.regex.match(path)
            if m is None:
                continue
            path_known = True
            if route.method == method:
                return route, m.groupdict(), True
        return None, {}, path_known

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        received = time.monotonic()
        path = "/" + request.match_info["tail"]
        method = request.method.upper()
        route, params, path_known = self._match(method, path)
        record = RequestRecord(
            received=received,
            method=method,
            path=path,
            route=route.key if route else None,
            query=dict(request.query),
            json=None,
        )
        self.request_log.append(record)
        headers: dict[str, str] = {}
        try:
            json_body, uploads = await self._read_body(request)
            record.json = json_body
            record.files = [(u.field, u.filename, u.data) for u in uploads]
            await self._apply_latency(method, path, route.key if route else None)
            if route is None:
                if path_known:
                    raise ApiError(405, 0, "405: Method Not Allowed")
                raise ApiError(404, 0, "404: Not Found")
            record.authorized = request.headers.get(hdrs.AUTHORIZATION) == f"Bot {self.token}"
            if route.bot_auth and not record.authorized:
                raise ApiError(401, 0, "401: Unauthorized")
            fault = self._take_fault(method, path)
            if fault is not None:
                return self._fault_response(record, fault, route)
            limited = self._rate_limit(record, route, params, headers)
            if limited is not None:
                return limited
            try:
                result = await route.handler(_Ctx(request, params, json_body, uploads, record))
            except ApiError:
                raise
            except Exception as exc:  # a stand-in bug: fail loudly, not as a retried 500
                self.internal_errors.append(exc)
                raise ApiError(503, 0, f"stand-in internal error: {exc!r}") from exc
            if isinstance(result, web.StreamResponse):
                status, body = result.status, None
                response: web.StreamResponse = result
                response.headers.update(headers)
            elif result is None:
                status, body = 204, None
                response = web.Response(status=204, headers=headers)
            else:
                status, body = 200, result
                response = self._json(200, result, headers)
        except ApiError as exc:
            status, body = exc.status, exc.body
            response = self._json(exc.status, exc.body, headers)
        record.status = status
        record.response = body
        record.responded = time.monotonic()
        self.notify_change()
        return response

    @staticmethod
    def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
        """JSON with Content-Type exactly ``application/json`` (no charset), as discord.py needs."""
        all_headers = dict(headers or {})
        all_headers.update(JSON_HEADERS)
        return web.Response(status=status, body=json.dumps(body).encode(), headers=all_headers)

    async def _read_body(self, request: web.Request) -> tuple[Any, list[_Upload]]:
        if not request.body_exists:
            return None, []
        ctype = request.content_type
        if ctype.startswith("multipart/"):
            payload: Any = None
            uploads: list[_Upload] = []
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not hasattr(part, "read"):
                    continue
                data = await part.read(decode=True)  # type: ignore[union-attr]
                name = part.name or ""  # type: ignore[union-attr]
                if name == "payload_json":
                    try:
                        payload = json.loads(data or b"null")
                    except ValueError:
                        raise ApiError(
                            400, 50109, "The request body contains invalid JSON."
                        ) from None
                else:
                    uploads.append(
                        _Upload(
                            name,
                            part.filename or name,  # type: ignore[union-attr]
                            bytes(data),
                            part.headers.get(hdrs.CONTENT_TYPE, "application/octet-stream"),
                        )
                    )
            return payload, uploads
        raw = await request.read()
        if not raw:
            return None, []
        if ctype != "application/json":
            raise ApiError(400, 50035, "Invalid Form Body", {"_errors": [{"code": "CONTENT_TYPE"}]})
        try:
            return json.loads(raw), []
        except ValueError:
            raise ApiError(400, 50109, "The request body contains invalid JSON.") from None

    async def _apply_latency(self, method: str, path: str, route_key: str | None = None) -> None:
        delay = self.latency + self.delays.for_route(route_key)
        for rule_method, pattern, seconds in self._latency_rules:
            if (rule_method is None or rule_method.upper() == method) and pattern.search(path):
                delay += seconds
        if delay > 0:
            await asyncio.sleep(delay)

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.remaining <= 0:
                continue
            if fault.method is not None and fault.method.upper() != method:
                continue
            if fault.pattern.search(path):
                fault.remaining -= 1
                return fault
        return None

    def _fault_response(self, record: RequestRecord, fault: _Fault, route: _Route) -> web.Response:
        record.injected = True
        record.responded = time.monotonic()
        if fault.kind == "429":
            is_global = fault.scope == "global"
            body = {
                "message": "You are being rate limited.",
                "retry_after": fault.retry_after,
                "global": is_global,
            }
            headers = self._429_headers(fault.retry_after, fault.scope)
            if not is_global:
                headers.update(
                    {
                        "X-RateLimit-Limit": "1",
                        "X-RateLimit-Remaining": "0",
                        "X-RateLimit-Reset": f"{time.time() + fault.retry_after:.3f}",
                        "X-RateLimit-Reset-After": f"{fault.retry_after:.3f}",
                        "X-RateLimit-Bucket": _bucket_hash(route.key),
                    }
                )
            record.status, record.response = 429, body
            record.rate_limited, record.scope = True, fault.scope
            self.notify_change()
            return self._json(429, body, headers)
        body = (
            fault.body
            if fault.body is not None
            else {"message": f"{fault.status}: injected", "code": 0}
        )
        record.status, record.response = fault.status, body
        self.notify_change()
        if isinstance(body, (dict, list)):
            return self._json(fault.status, body)
        return web.Response(status=fault.status, text=str(body))

    @staticmethod
    def _429_headers(retry_after: float, scope: str) -> dict[str, str]:
        headers = {
            "Retry-After": str(max(1, math.ceil(retry_after))),
            "X-RateLimit-Scope": scope,
            "Via": "1.1 google",
        }
        if scope == "global":
            headers["X-RateLimit-Global"] = "true"
        return headers

    def _rate_limit(
        self,
        record: RequestRecord,
        route: _Route,
        params: dict[str, str],
        headers: dict[str, str],
    ) -> web.Response | None:
        """Apply global then per-bucket limits; fill headers; return a 429 if over."""
        now = time.monotonic()
        cfg = self.rate_limits
        if cfg.enabled and record.authorized and not route.global_exempt:
            window = self._global_window
            if window is None or now >= window.reset_at:
                window = self._global_window = _Window(now + cfg.global_window)
            if window.count >= cfg.global_limit:
                retry = _ceil_ms(window.reset_at - now)
                body = {
                    "message": "You are being rate limited.",
                    "retry_after": retry,
                    "global": True,
                }
                record.status, record.response = 429, body
                record.rate_limited, record.scope = True, "global"
                record.responded = time.monotonic()
                self.notify_change()
                return self._json(429, body, self._429_headers(retry, "global"))
            window.count += 1
        limit, per = cfg.limit_for(route.key) if cfg.enabled else (1000, 1.0)
        major = "+".join(params[p] for p in MAJOR_PARAMETERS if p in params)
        bucket_hash = _bucket_hash(route.key)
        record.bucket = f"{bucket_hash}:{major}"
        key = (route.key, major)
        bucket = self._buckets.get(key)
        if bucket is None or now >= bucket.reset_at:
            bucket = self._buckets[key] = _Window(now + per)
        reset_after = _ceil_ms(bucket.reset_at - now)
        base_headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": bucket_hash,
        }
        if cfg.enabled and bucket.count >= limit:
            body = {
                "message": "You are being rate limited.",
                "retry_after": reset_after,
                "global": False,
            }
            record.status, record.response = 429, body
            record.rate_limited, record.scope = True, "user"
            record.responded = time.monotonic()
            self.notify_change()
            limited_headers = {**base_headers, "X-RateLimit-Remaining": "0"}
            limited_headers.update(self._429_headers(reset_after, "user"))
            return self._json(429, body, limited_headers)
        bucket.count += 1
        headers.update(base_headers)
        headers["X-RateLimit-Remaining"] = str(max(0, limit - bucket.count))
        return None

    async def _serve_file(self, request: web.Request) -> web.StreamResponse:
        """CDN stand-in for attachment URLs (bots download user attachments).

        `add_latency(s, "/attachments/")` makes downloads slow and `fail_next("GET",
        "/attachments/", 500)` makes them fail (both match the path ``/attachments/...``);
        `attachment_downloads` lists the paths fetched."""
        self.attachment_downloads.append(request.path)
        await self._apply_latency("GET", request.path)
        fault = self._take_fault("GET", request.path)
        if fault is not None:
            return web.Response(status=fault.status, text=f"{fault.status}: injected")
        try:
            data, ctype = self.attachment_blobs[int(request.match_info["attachment_id"])]
        except (KeyError, ValueError):
            return web.Response(status=404, text="Not Found")
        return web.Response(body=data, headers={hdrs.CONTENT_TYPE: ctype})

    # ----------------------------------------------------------------------------------
    # Internal helpers for the world
    # ----------------------------------------------------------------------------------

    def _channel(self, channel_id: int) -> Channel:
        try:
            return self.channels[channel_id]
        except KeyError:
            raise unknown("Channel", 10003) from None

    def _guild_id_of(self, channel: Channel) -> int | None:
        return channel.guild_id

    def _role_ids(self, guild_id: int | None) -> list[int]:
        return list(self.guilds[guild_id].roles) if guild_id is not None else []

    def _perm_channel(self, channel: Channel) -> Channel:
        """Threads take their permissions from the parent channel."""
        if channel.is_thread and channel.parent_id in self.channels:
            return self.channels[channel.parent_id]
        return channel

    def _member_permissions(self, guild_id: int, channel_id: int, user_id: int) -> int:
        guild = self.guilds[guild_id]
        member = guild.members.get(user_id)
        if member is not None and member.permissions_override is not None:
            return member.permissions_override
        channel = self.channels.get(channel_id)
        if channel is None:
            return base_permissions(guild, user_id)
        return channel_permissions(guild, self._perm_channel(channel), user_id)

    def _bot_permissions(self, channel: Channel) -> int:
        if channel.guild_id is None:
            return ALL_PERMISSIONS
        guild = self.guilds[channel.guild_id]
        return channel_permissions(guild, self._perm_channel(channel), self.bot_user.id)

    def _require_view(self, channel: Channel) -> None:
        if not self._bot_permissions(channel) & PERM_VIEW_CHANNEL:
            raise ApiError(403, 50001, "Missing Access")

    def _guild_payload(self, guild: Guild) -> dict[str, Any]:
        return {
            "id": str(guild.id),
            "name": guild.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(guild.owner_id),
            "features": [],
            "roles": [r.payload() for r in guild.roles.values()],
            "emojis": [],
            "stickers": [],
            "afk_channel_id": None,
            "afk_timeout": 300,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "max_members": 500000,
            "application_id": None,
            "vanity_url_code": None,
        }

    async def _dispatch_guild_create(self, guild_id: int) -> None:
        await self.gateway.dispatch(
            "GUILD_CREATE",
            lambda s: (
                self.guild_create_payload(guild_id, s) if s.has_intent(INTENT_GUILDS) else None
            ),
            guild_id=guild_id,
        )

    def _store_attachment(
        self,
        channel_id: int,
        filename: str,
        data: bytes,
        content_type: str,
        description: str | None = None,
    ) -> dict[str, Any]:
        aid = self.ids.next()
        self.attachment_blobs[aid] = (data, content_type)
        url = f"{self.base_url}/attachments/{channel_id}/{aid}/{quote(filename)}"
        att: dict[str, Any] = {
            "id": str(aid),
            "filename": filename,
            "size": len(data),
            "url": url,
            "proxy_url": url,
            "content_type": content_type,
        }
        if description is not None:
            att["description"] = description
        return att

    def _store_message(self, msg: MessageRecord) -> None:
        msg.timestamp = iso(snowflake_time(msg.id))
        msg.record_state(time.monotonic())
        self.messages[msg.id] = msg
        channel = self.channels.get(msg.channel_id)
        if channel is not None and not msg.ephemeral:
            channel.last_message_id = msg.id
            channel.message_count += 1
        self.notify_change()

    def _reference_payload(self, ref: MessageRecord) -> dict[str, Any]:
        data = {"type": 0, "message_id": str(ref.id), "channel_id": str(ref.channel_id)}
        if ref.guild_id is not None:
            data["guild_id"] = str(ref.guild_id)
        return data

    def _message_payload(
        self, msg: MessageRecord, *, gateway: bool, with_reference: bool = True
    ) -> dict[str, Any]:
        """The message object as Discord sends it; gateway copies add guild_id and member."""
        author = self.users.get(msg.author_id) or self.bot_user
        guild = self.guilds.get(msg.guild_id) if msg.guild_id is not None else None
        mentions = []
        for uid in msg.mentions:
            user = self.users.get(uid)
            if user is None:
                continue
            mention = user.payload()
            if gateway and guild is not None and uid in guild.members:
                mention["member"] = guild.members[uid].payload(None)
            mentions.append(mention)
        data: dict[str, Any] = {
            "id": str(msg.id),
            "channel_id": str(msg.channel_id),
            "author": author.payload(),
            "content": msg.content,
            "timestamp": msg.timestamp,
            "edited_timestamp": msg.edited_timestamp,
            "tts": msg.tts,
            "mention_everyone": msg.mention_everyone,
            "mentions": mentions,
            "mention_roles": [str(r) for r in msg.mention_roles],
            "attachments": list(msg.attachments),
            "embeds": list(msg.embeds),
            "pinned": msg.pinned,
            "type": msg.type,
            "flags": msg.flags,
            "components": list(msg.components),
        }
        if msg.nonce is not None:
            data["nonce"] = msg.nonce
        if msg.reactions:
            data["reactions"] = [
                {
                    "emoji": {"id": None, "name": emoji},
                    "count": len(users),
                    "count_details": {"burst": 0, "normal": len(users)},
                    "me": self.bot_user.id in users,
                    "me_burst": False,
                    "burst_colors": [],
                }
                for emoji, users in msg.reactions.items()
                if users
            ]
        if msg.webhook_id is not None:
            data["webhook_id"] = str(msg.webhook_id)
            data["application_id"] = str(self.application_id)
        if msg.interaction_id is not None:
            rec = self.interactions.get(msg.interaction_id)
            if rec is not None:
                meta: dict[str, Any] = {
                    "id": str(rec.id),
                    "type": rec.type,
                    "user": self.users[rec.user_id].payload(),
                    "authorizing_integration_owners": rec.payload.get(
                        "authorizing_integration_owners", {}
                    ),
                }
                if rec.type == INTERACTION_COMMAND:
                    meta["name"] = rec.name
                if msg.id != rec.original_id and rec.original_id is not None:
                    meta["original_response_message_id"] = str(rec.original_id)
                data["interaction_metadata"] = meta
        if msg.message_reference is not None:
            data["message_reference"] = msg.message_reference
            if with_reference:
                ref = self.messages.get(msg.referenced_message_id or 0)
                data["referenced_message"] = (
                    self._message_payload(ref, gateway=False, with_reference=False)
                    if ref is not None and not ref.deleted
                    else None
                )
        if gateway and guild is not None:
            data["guild_id"] = str(guild.id)
            member = guild.members.get(msg.author_id)
            if member is not None and msg.webhook_id is None:
                data["member"] = member.payload(None)
        return data

    async def _dispatch_message_event(
        self, event: str, msg: MessageRecord, *, session_ids: Collection[str] | None = None
    ) -> list[str]:
        """MESSAGE_CREATE/UPDATE, filtered like Discord (intents, visibility, content)."""
        if msg.ephemeral:
            return []
        if msg.from_bot and not self.dispatch_own_messages:
            return []
        channel = self.channels.get(msg.channel_id)
        if (
            channel is not None
            and channel.guild_id is not None
            and not self._bot_permissions(channel) & PERM_VIEW_CHANNEL
        ):
            return []
        payload = self._message_payload(msg, gateway=True)
        is_dm = msg.guild_id is None
        intent = INTENT_DIRECT_MESSAGES if is_dm else INTENT_GUILD_MESSAGES
        content_visible = (
            is_dm or msg.author_id == self.bot_user.id or self.bot_user.id in msg.mentions
        )

        def for_session(session: GatewaySession) -> dict[str, Any]:
            if content_visible or session.has_intent(INTENT_MESSAGE_CONTENT):
                return payload
            blank = dict(payload)
            blank.update(content="", embeds=[], attachments=[], components=[])
            blank.pop("poll", None)
            return blank

        delivered = await self.gateway.dispatch(
            event, for_session, guild_id=msg.guild_id, intent=intent, session_ids=session_ids
        )
        if event == "MESSAGE_CREATE":
            msg.delivered_to = delivered
        return delivered

    async def _delete_message(self, msg: MessageRecord) -> None:
        msg.deleted = True
        msg.deleted_at = time.monotonic()
        self.notify_change()
        if msg.ephemeral:
            return
        data: dict[str, Any] = {"id": str(msg.id), "channel_id": str(msg.channel_id)}
        if msg.guild_id is not None:
            data["guild_id"] = str(msg.guild_id)
        intent = INTENT_DIRECT_MESSAGES if msg.guild_id is None else INTENT_GUILD_MESSAGES
        await self.gateway.dispatch("MESSAGE_DELETE", data, guild_id=msg.guild_id, intent=intent)

    def _message_in(self, channel_id: int, message_id: int) -> MessageRecord:
        msg = self.messages.get(message_id)
        if msg is None or msg.channel_id != channel_id or msg.deleted or msg.ephemeral:
            raise unknown("Message", 10008)
        return msg

    def _attachments_from(
        self,
        channel_id: int,
        body: dict[str, Any],
        uploads: list[_Upload],
        existing: list[dict[str, Any]] | None,
    ) -> list[dict[str, Any]] | None:
        """Resolve ``attachments`` + ``files[n]`` into attachment objects.

        Returns None when the request leaves attachments unchanged (edit without either).
        """
        by_field = {u.field: u for u in uploads}
        listed = body.get("attachments")
        if listed is None and not uploads:
            return None
        result: list[dict[str, Any]] = []
        used: set[str] = set()
        if listed is None:
            result = list(existing or [])
        else:
            old = {str(a["id"]): a for a in existing or []}
            for entry in listed:
                key = str(entry.get("id"))
                if key in old:
                    result.append(old[key])
                    continue
                upload = by_field.get(f"files[{key}]")
                if upload is None:
                    errs = FormErrors()
                    errs.add(["attachments", key], "ATTACHMENT_NOT_FOUND", "Unknown attachment")
                    errs.raise_if_any()
                    continue
                used.add(upload.field)
                result.append(
                    self._store_attachment(
                        channel_id,
                        entry.get("filename") or upload.filename,
                        upload.data,
                        upload.content_type,
                        entry.get("description"),
                    )
                )
        for upload in uploads:
            if upload.field not in used:
                result.append(
                    self._store_attachment(
                        channel_id, upload.filename, upload.data, upload.content_type
                    )
                )
        if any(a["size"] > ATTACHMENT_SIZE_LIMIT for a in result):
            raise ApiError(413, 40005, "Request entity too large")
        return result

    def _new_bot_message(
        self,
        channel: Channel,
        body: dict[str, Any],
        uploads: list[_Upload],
        *,
        flags: int = 0,
        msg_type: int = MESSAGE_DEFAULT,
        webhook_id: int | None = None,
        interaction_id: int | None = None,
        allow_empty: bool = False,
    ) -> MessageRecord:
        """Validate a create payload and build (not store) the bot's message."""
        validate_message_fields(body)
        attachments = self._attachments_from(channel.id, body, uploads, None) or []
        content = body.get("content") or ""
        embeds = list(body.get("embeds") or [])
        components = list(body.get("components") or [])
        if not allow_empty and is_empty_message(
            content,
            embeds,
            attachments,
            components,
            stickers=body.get("sticker_ids"),
            poll=body.get("poll"),
        ):
            raise EMPTY_MESSAGE
        msg = MessageRecord(
            self.ids.next(),
            channel.id,
            channel.guild_id,
            self.bot_user.id,
            content=content,
            embeds=embeds,
            attachments=attachments,
            components=components,
            flags=flags,
            type=msg_type,
            tts=bool(body.get("tts", False)),
            from_bot=True,
            webhook_id=webhook_id,
            interaction_id=interaction_id,
            nonce=body.get("nonce"),
        )
        allowed = body.get("allowed_mentions")
        msg.allowed_mentions.append(allowed)
        ref_body = body.get("message_reference")
        replied_user: int | None = None
        if ref_body:
            ref_id = int(ref_body.get("message_id", 0))
            ref = self.messages.get(ref_id)
            ref_channel = int(ref_body.get("channel_id") or channel.id)
            if ref is None or ref.deleted or ref.channel_id != ref_channel:
                if ref_body.get("fail_if_not_exists", True):
                    errs = FormErrors()
                    errs.add(
                        ["message_reference"],
                        "MESSAGE_REFERENCE_UNKNOWN_MESSAGE",
                        "Unknown message",
                    )
                    errs.raise_if_any()
            else:
                msg.type = MESSAGE_REPLY if msg_type == MESSAGE_DEFAULT else msg_type
                msg.referenced_message_id = ref.id
                msg.message_reference = self._reference_payload(ref)
                replied_user = ref.author_id
        self._apply_mentions(msg, allowed, replied_user)
        return msg

    def _apply_mentions(
        self, msg: MessageRecord, allowed: dict[str, Any] | None, replied_user: int | None
    ) -> None:
        known = (
            list(self.guilds[msg.guild_id].members)
            if msg.guild_id is not None
            else list(self.users)
        )
        msg.mentions, msg.mention_roles, msg.mention_everyone = parse_mentions(
            msg.content,
            allowed,
            known_users=known,
            known_roles=self._role_ids(msg.guild_id),
            replied_user=replied_user,
        )

    def _apply_edit(self, msg: MessageRecord, body: dict[str, Any], uploads: list[_Upload]) -> None:
        """Validate and apply a PATCH; keeps history and allowed_mentions per request."""
        validate_message_fields(body)
        attachments = self._attachments_from(msg.channel_id, body, uploads, msg.attachments)
        content = msg.content
        if "content" in body:
            content = body["content"] or ""
        embeds = msg.embeds
        if "embeds" in body:
            embeds = list(body["embeds"] or [])
        components = msg.components
        if "components" in body:
            components = list(body["components"] or [])
        new_attachments = msg.attachments if attachments is None else attachments
        if is_empty_message(content, embeds, new_attachments, components):
            raise EMPTY_MESSAGE
        msg.content = content
        msg.embeds = embeds
        msg.components = components
        msg.attachments = new_attachments
        if "flags" in body and body["flags"] is not None:
            keep = msg.flags & FLAG_EPHEMERAL
            msg.flags = (int(body["flags"]) & ALLOWED_CREATE_FLAGS) | keep
        msg.flags &= ~FLAG_LOADING
        allowed = body.get("allowed_mentions")
        msg.allowed_mentions.append(allowed)
        replied = (
            self.messages[msg.referenced_message_id].author_id
            if msg.referenced_message_id
            else None
        )
        self._apply_mentions(msg, allowed, replied)
        msg.edited_timestamp = iso()

    # ----------------------------------------------------------------------------------
    # REST handlers: users, application, gateway
    # ----------------------------------------------------------------------------------

    async def _get_me(self, ctx: _Ctx) -> Any:
        user = self.bot_user.payload()
        user.update({"verified": True, "mfa_enabled": False, "email": None, "locale": "en-US"})
        return user

    async def _get_user(self, ctx: _Ctx) -> Any:
        user = self.users.get(ctx.int_param("user_id", "User", 10013))
        if user is None:
            raise unknown("User", 10013)
        return user.payload()

    async def _create_dm(self, ctx: _Ctx) -> Any:
        recipient = ctx.body().get("recipient_id")
        try:
            user_id = int(recipient)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ApiError(
                400, 50035, "Invalid Form Body", {"recipient_id": {"_errors": []}}
            ) from None
        if user_id not in self.users or user_id == self.bot_user.id:
            raise unknown("User", 10013)
        return self.channels[self.open_dm(user_id)].payload(self.users)

    async def _get_application(self, ctx: _Ctx) -> Any:
        return {
            "id": str(self.application_id),
            "name": self.bot_user.username,
            "icon": None,
            "description": "Discord stand-in application",
            "summary": "",
            "type": None,
            "hook": True,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": "0" * 64,
            "owner": self.owner_user.payload(),
            "team": None,
            "flags": self.application_flags,
            "bot": self.bot_user.payload(),
            "rpc_origins": [],
            "tags": [],
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "approximate_guild_count": len(self.guilds),
        }

    async def _get_gateway(self, ctx: _Ctx) -> Any:
        return {"url": self.gateway_url}

    async def _get_gateway_bot(self, ctx: _Ctx) -> Any:
        return {
            "url": self.gateway_url,
            "shards": self.shard_count,
            "session_start_limit": {
                "total": 1000,
                "remaining": 1000,
                "reset_after": 0,
                "max_concurrency": 1,
            },
        }

    # ----------------------------------------------------------------------------------
    # REST handlers: channels and messages
    # ----------------------------------------------------------------------------------

    async def _get_channel(self, ctx: _Ctx) -> Any:
        channel = self._channel(ctx.int_param("channel_id", "Channel", 10003))
        self._require_view(channel)
        return channel.payload(self.users)

    async def _list_messages(self, ctx: _Ctx) -> Any:
        channel = self._channel(ctx.int_param("channel_id", "Channel", 10003))
        self._require_view(channel)
        query = ctx.request.query
        limit = max(1, min(100, int(query.get("limit", "50"))))
        msgs = [m for m in self.messages_in(channel.id) if not m.ephemeral]
        if "around" in query:
            around = int(query["around"])
            older = [m for m in msgs if m.id <= around][-(limit // 2 + limit % 2) :]
            newer = [m for m in msgs if m.id > around][: limit // 2]
            chosen = older + newer
        elif "after" in query:
            chosen = [m for m in msgs if m.id > int(query["after"])][:limit]
        else:
            if "before" in query:
                msgs = [m for m in msgs if m.id < int(query["before"])]
            chosen = msgs[-limit:]
        return [self._message_payload(m, gateway=False) for m in reversed(chosen)]

    async def _get_message(self, ctx: _Ctx) -> Any:
        channel = self._channel(ctx.int_param("channel_id", "Channel", 10003))
        self._require_view(channel)
        msg = self._message_in(channel.id, ctx.int_param("message_id", "Message", 10008))
        return self._message_payload(msg, gateway=False)

    async def _create_message(self, ctx: _Ctx) -> Any:
        channel = self._channel(ctx.int_param("channel_id", "Channel", 10003))
        if channel.type == CHANNEL_CATEGORY:
            raise ApiError(400, 50008, "Cannot send messages in a non-text channel")
        if channel.type == CHANNEL_DM:
            if any(u in self.dm_blocked for u in channel.recipients):
                raise ApiError(403, 50007, "Cannot send messages to this user")
        else:
            perms = self._bot_permissions(channel)
            if not perms & PERM_VIEW_CHANNEL:
                raise ApiError(403, 50001, "Missing Access")
            needed = PERM_SEND_MESSAGES_IN_THREADS if channel.is_thread else PERM_SEND_MESSAGES
            if not perms & needed or (ctx.uploads and not perms & PERM_ATTACH_FILES):
                raise ApiError(403, 50013, "Missing Permissions")
            if channel.is_thread and (channel.archived or channel.locked):
                raise ApiError(400, 50083, "Thread is archived")
        body = ctx.body()
        flags = int(body.get("flags") or 0) & ALLOWED_CREATE_FLAGS
        msg = self._new_bot_message(channel, body, ctx.uploads, flags=flags)
        self._store_message(msg)
        await self._dispatch_message_event("MESSAGE_CREATE", msg)
        return self._message_payload(msg, gateway=False)

    async def _edit_message(self, ctx: _Ctx) -> Any:
        channel = self._channel(ctx.int_param("channel_id", "Channel", 10003))
        self._require_view(channel)
        msg = self._message_in(channel.id, ctx.int_param("message_id", "Message", 10008))
        body = ctx.body()
        if msg.author_id != self.bot_user.id:
            only_flags = set(body) <= {"flags"}
            if not only_flags:
                raise ApiError(403, 50005, "Cannot edit a message authored by another user")
        self._apply_edit(msg, body, ctx.uploads)
        msg.record_state(time.monotonic())
        self.notify_change()
        await self._dispatch_message_event("MESSAGE_UPDATE", msg)
        return self._message_payload(msg, gateway=False)

    async def _delete_message_route(self, ctx: _Ctx) -> Any:
        channel = self._channel(ctx.int_param("channel_id", "Channel", 10003))
        self._require_view(channel)
        msg = self._message_in(channel.id, ctx.int_param("message_id", "Message", 10008))
        if (
            msg.author_id != self.bot_user.id
            and not self._bot_permissions(channel) & PERM_MANAGE_MESSAGES
        ):
            raise ApiError(403, 50013, "Missing Permissions")
        await self._delete_message(msg)
        return None

    async def _typing(self, ctx: _Ctx) -> Any:
        channel = self._channel(ctx.int_param("channel_id", "Channel", 10003))
        if channel.guild_id is not None:
            self._require_view(channel)
        self.typing.append((time.monotonic(), channel.id))
        return None

    async def _add_reaction(self, ctx: _Ctx) -> Any:
        channel = self._channel(ctx.int_param("channel_id", "Channel", 10003))
        self._require_view(channel)
        msg = self._message_in(channel.id, ctx.int_param("message_id", "Message", 10008))
        msg.reactions.setdefault(ctx.params["emoji"], set()).add(self.bot_user.id)
        return None

    async def _remove_reaction(self, ctx: _Ctx) -> Any:
        channel = self._channel(ctx.int_param("channel_id", "Channel", 10003))
        msg = self._message_in(channel.id, ctx.int_param("message_id", "Message", 10008))
        msg.reactions.get(ctx.params["emoji"], set()).discard(self.bot_user.id)
        return None

    async def _thread_from_message(self, ctx: _Ctx) -> Any:
        channel = self._channel(ctx.int_param("channel_id", "Channel", 10003))
        msg = self._message_in(channel.id, ctx.int_param("message_id", "Message", 10008))
        if any(c.id == msg.id for c in self.channels.values()):
            raise ApiError(400, 160004, "A thread has already been created for this message")
        name = str(ctx.body().get("name") or "")
        if not 1 <= len(name) <= 100:
            raise ApiError(400, 50035, "Invalid Form Body", {"name": {"_errors": []}})
        tid = self.add_thread(channel.id, name, thread_id=msg.id, owner_id=self.bot_user.id)
        await self.flush()
        return self.channels[tid].payload()

    async def _thread_without_message(self, ctx: _Ctx) -> Any:
        channel = self._channel(ctx.int_param("channel_id", "Channel", 10003))
        body = ctx.body()
        name = str(body.get("name") or "")
        if not 1 <= len(name) <= 100:
            raise ApiError(400, 50035, "Invalid Form Body", {"name": {"_errors": []}})
        ttype = int(body.get("type") or 12)
        tid = self.add_thread(channel.id, name, owner_id=self.bot_user.id, type=ttype)
        await self.flush()
        return self.channels[tid].payload()

    # ----------------------------------------------------------------------------------
    # REST handlers: guilds
    # ----------------------------------------------------------------------------------

    def _guild_for(self, ctx: _Ctx) -> Guild:
        guild = self.guilds.get(ctx.int_param("guild_id", "Guild", 10004))
        if guild is None:
            raise unknown("Guild", 10004)
        return guild

    async def _get_guild(self, ctx: _Ctx) -> Any:
        guild = self._guild_for(ctx)
        data = self._guild_payload(guild)
        data["approximate_member_count"] = len(guild.members)
        return data

    async def _get_guild_channels(self, ctx: _Ctx) -> Any:
        guild = self._guild_for(ctx)
        return [
            self.channels[c].payload() for c in guild.channel_ids if not self.channels[c].is_thread
        ]

    async def _get_guild_roles(self, ctx: _Ctx) -> Any:
        return [r.payload() for r in self._guild_for(ctx).roles.values()]

    async def _get_member(self, ctx: _Ctx) -> Any:
        guild = self._guild_for(ctx)
        member = guild.members.get(ctx.int_param("user_id", "Member", 10007))
        if member is None:
            raise unknown("Member", 10007)
        return member.payload(self.users[member.user_id])

    # ----------------------------------------------------------------------------------
    # REST handlers: application commands
    # ----------------------------------------------------------------------------------

    def _command_scope(self, ctx: _Ctx) -> int | None:
        if ctx.params["application_id"] != str(self.application_id):
            raise ApiError(403, 50001, "Missing Access")
        if "guild_id" not in ctx.params:
            return None
        guild_id = ctx.int_param("guild_id", "Guild", 10004)
        if guild_id not in self.guilds:
            raise ApiError(403, 50001, "Missing Access")
        return guild_id

    async def _get_commands(self, ctx: _Ctx) -> Any:
        return self.synced_commands(self._command_scope(ctx))

    async def _put_commands(self, ctx: _Ctx) -> Any:
        scope = self._command_scope(ctx)
        commands = ctx.json
        validate_commands(commands)
        stored: list[dict[str, Any]] = []
        for cmd in commands:
            ctype = int(cmd.get("type", 1))
            key = (scope, cmd["name"], ctype)
            cid = self._command_ids.setdefault(key, self.ids.next())
            echoed = {
                "description": "",
                "options": [],
                "default_member_permissions": None,
                "dm_permission": True,
                "nsfw": False,
                "contexts": None,
                "integration_types": [0],
                **cmd,
                "id": str(cid),
                "application_id": str(self.application_id),
                "version": str(self.ids.next()),
                "type": ctype,
            }
            if scope is not None:
                echoed["guild_id"] = str(scope)
            stored.append(echoed)
        self.commands[scope] = stored
        self.command_syncs.append((time.monotonic(), scope, stored))
        return stored

    def _find_command(
        self, name: str, guild_id: int | None
    ) -> tuple[dict[str, Any] | None, int | None]:
        """The synced command a user would see: guild-scoped first, then global."""
        if guild_id is not None:
            for cmd in self.commands.get(guild_id, []):
                if cmd["name"] == name and cmd["type"] == 1:
                    return cmd, guild_id
        for cmd in self.commands.get(None, []):
            if cmd["name"] == name and cmd["type"] == 1:
                return cmd, None
        return None, None

    # ----------------------------------------------------------------------------------
    # REST handlers: interactions and their webhooks
    # ----------------------------------------------------------------------------------

    def _token_alive(self, rec: InteractionRecord) -> bool:
        return not rec.expired and time.monotonic() - rec.created <= self.interaction_token_ttl

    async def _interaction_callback(self, ctx: _Ctx) -> Any:
        rec = self.interactions.get(ctx.int_param("webhook_id", "interaction", 10062))
        if rec is None or rec.token != ctx.params["webhook_token"] or not self._token_alive(rec):
            raise unknown("interaction", 10062)
        now = time.monotonic()
        body = ctx.body()
        ctype = int(body.get("type") or 0)
        data = body.get("data") or {}
        if rec.callback is not None:
            rec.rejected_callbacks.append(CallbackRecord(ctype, data, now))
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        if self.ack_deadline is not None and now - rec.created > self.ack_deadline:
            raise unknown("interaction", 10062)
        if ctype not in ALLOWED_CALLBACKS.get(rec.type, set()):
            errs = FormErrors()
            errs.add(
                ["type"], "INTERACTION_RESPONSE_TYPE_INVALID", "Invalid interaction response type"
            )
            errs.raise_if_any()
        channel = self._channel(rec.channel_id)
        msg: MessageRecord | None = None
        loading = False
        msg_type = (
            MESSAGE_CHAT_INPUT_COMMAND if rec.type == INTERACTION_COMMAND else MESSAGE_DEFAULT
        )
        if ctype == 4:
            flags = int(data.get("flags") or 0) & (ALLOWED_CREATE_FLAGS | FLAG_EPHEMERAL)
            msg = self._new_bot_message(
                channel,
                data,
                ctx.uploads,
                flags=flags,
                msg_type=msg_type,
                webhook_id=self.application_id,
                interaction_id=rec.id,
            )
        elif ctype == 5:
            loading = True
            flags = FLAG_LOADING | (int(data.get("flags") or 0) & FLAG_EPHEMERAL)
            msg = self._new_bot_message(
                channel,
                {},
                [],
                flags=flags,
                msg_type=msg_type,
                webhook_id=self.application_id,
                interaction_id=rec.id,
                allow_empty=True,
            )
        elif ctype == 7:
            source = self.messages.get(rec.source_message_id or 0)
            if source is None:
                raise unknown("Message", 10008)
            self._apply_edit(source, data, ctx.uploads)
        elif ctype == 8:
            validate_choices(data)
        elif ctype == 9:
            validate_modal(data)
        rec.callback = CallbackRecord(ctype, data, now)
        if msg is not None:
            msg.interaction_id = rec.id
            rec.original_id = msg.id
            self._store_message(msg)
            await self._dispatch_message_event("MESSAGE_CREATE", msg)
        if ctype == 7:
            source = self.messages[rec.source_message_id or 0]
            source.record_state(time.monotonic())
            await self._dispatch_message_event("MESSAGE_UPDATE", source)
        self.notify_change()
        if ctx.request.query.get("with_response", "").lower() not in ("1", "true"):
            return None
        interaction: dict[str, Any] = {
            "id": str(rec.id),
            "type": rec.type,
            "response_message_loading": loading,
            "response_message_ephemeral": bool(msg and msg.ephemeral),
        }
        result: dict[str, Any] = {"interaction": interaction}
        if msg is not None:
            interaction["response_message_id"] = str(msg.id)
            result["resource"] = {
                "type": ctype,
                "message": self._message_payload(msg, gateway=False),
            }
        elif ctype == 7:
            source = self.messages[rec.source_message_id or 0]
            interaction["response_message_id"] = str(source.id)
            result["resource"] = {
                "type": ctype,
                "message": self._message_payload(source, gateway=False),
            }
        return result

    def _webhook_interaction(self, ctx: _Ctx) -> InteractionRecord:
        """The interaction behind ``/webhooks/{app}/{token}``; Unknown Webhook otherwise."""
        token = ctx.params["webhook_token"]
        rec = next((r for r in self.interactions.values() if r.token == token), None)
        if (
            rec is None
            or ctx.params["webhook_id"] != str(self.application_id)
            or rec.callback is None
            or not self._token_alive(rec)
        ):
            raise unknown("Webhook", 10015)
        return rec

    def _webhook_message(self, ctx: _Ctx, rec: InteractionRecord) -> MessageRecord:
        raw = ctx.params["message_id"]
        mid = rec.original_id if raw == "@original" else _int_or_none(raw)
        if mid is None or (mid != rec.original_id and mid not in rec.followup_ids):
            raise unknown("Message", 10008)
        msg = self.messages.get(mid)
        if msg is None or msg.deleted:
            raise unknown("Message", 10008)
        return msg

    async def _followup(self, ctx: _Ctx) -> Any:
        rec = self._webhook_interaction(ctx)
        body = ctx.body()
        original = rec.original
        wait = ctx.request.query.get("wait", "").lower() in ("1", "true")
        if (
            rec.response_type == 5
            and original is not None
            and original.loading
            and not original.deleted
        ):
            # Discord: the first followup after a defer edits the "thinking" message and
            # keeps its ephemeral state (documented backwards-compatibility behaviour).
            self._apply_edit(original, body, ctx.uploads)
            original.record_state(time.monotonic())
            self.notify_change()
            await self._dispatch_message_event("MESSAGE_UPDATE", original)
            return self._message_payload(original, gateway=False) if wait else None
        channel = self._channel(rec.channel_id)
        flags = int(body.get("flags") or 0) & (ALLOWED_CREATE_FLAGS | FLAG_EPHEMERAL)
        msg = self._new_bot_message(
            channel,
            body,
            ctx.uploads,
            flags=flags,
            webhook_id=self.application_id,
            interaction_id=rec.id,
        )
        rec.followup_ids.append(msg.id)
        self._store_message(msg)
        await self._dispatch_message_event("MESSAGE_CREATE", msg)
        return self._message_payload(msg, gateway=False) if wait else None

    async def _get_webhook_message(self, ctx: _Ctx) -> Any:
        rec = self._webhook_interaction(ctx)
        return self._message_payload(self._webhook_message(ctx, rec), gateway=False)

    async def _edit_webhook_message(self, ctx: _Ctx) -> Any:
        rec = self._webhook_interaction(ctx)
        msg = self._webhook_message(ctx, rec)
        self._apply_edit(msg, ctx.body(), ctx.uploads)
        msg.record_state(time.monotonic())
        self.notify_change()
        await self._dispatch_message_event("MESSAGE_UPDATE", msg)
        return self._message_payload(msg, gateway=False)

    async def _delete_webhook_message(self, ctx: _Ctx) -> Any:
        rec = self._webhook_interaction(ctx)
        msg = self._webhook_message(ctx, rec)
        await self._delete_message(msg)
        return None


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def _bucket_hash(route_key: str) -> str:
    """A stable per-route bucket id; distinct routes must not share one in discord.py."""
    return hashlib.sha1(route_key.encode()).hexdigest()[:32]


def _ceil_ms(seconds: float) -> float:
    """Round up to the millisecond so clients never wake a hair before the reset."""
    return max(0.001, math.ceil(seconds * 1000) / 1000)


def _int_or_none(raw: str) -> int | None:
    try:
        return int(raw)
    except ValueError:
        return None


def _guess_type(filename: str) -> str:
    import mimetypes

    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def _infer_option_type(value: Any) -> int:
    if isinstance(value, bool):
        return 5
    if isinstance(value, int):
        return 4
    if isinstance(value, float):
        return 10
    return 3


def _iter_inputs(components: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for comp in components:
        if comp.get("type") == 1:
            yield from _iter_inputs(comp.get("components") or [])
        elif comp.get("type") == 18 and comp.get("component"):
            yield comp["component"]
        else:
            yield comp


def _submitted(component: dict[str, Any], values: dict[str, str | list[str]]) -> dict[str, Any]:
    """One input as a modal submit reports it: ``value`` for text, ``values`` for selects."""
    ctype = component.get("type", 4)
    custom_id = component.get("custom_id")
    value = values.get(custom_id or "", "")
    out: dict[str, Any] = {"type": ctype, "custom_id": custom_id}
    if "id" in component:
        out["id"] = component["id"]
    if ctype == 4:
        out["value"] = value if isinstance(value, str) else "".join(value)
    else:
        out["values"] = [value] if isinstance(value, str) else list(value)
    return out


def _modal_submit_components(
    modal: dict[str, Any] | None, values: dict[str, str | list[str]]
) -> list[dict[str, Any]]:
    """The ``components`` of a modal submit, shaped like the modal that was shown.

    Text inputs (type 4) report ``value``; select menus report ``values``.  Rows (type 1)
    and labels (type 18) are mirrored; text-only components are left out, as Discord does.
    """
    if modal is None:
        return [
            {"type": 1, "components": [_submitted({"type": 4, "custom_id": cid}, values)]}
            for cid in values
        ]
    unknown_ids = set(values) - {
        c.get("custom_id") for c in _iter_inputs(modal.get("components") or [])
    }
    if unknown_ids:
        raise KeyError(f"modal {modal.get('custom_id')!r} has no inputs {sorted(unknown_ids)}")
    out: list[dict[str, Any]] = []
    for comp in modal.get("components") or []:
        if comp.get("type") == 1:
            inner = [_submitted(c, values) for c in comp.get("components") or []]
            out.append({"type": 1, "components": inner})
        elif comp.get("type") == 18 and comp.get("component"):
            label: dict[str, Any] = {"type": 18, "component": _submitted(comp["component"], values)}
            if "id" in comp:
                label["id"] = comp["id"]
            out.append(label)
    return out
