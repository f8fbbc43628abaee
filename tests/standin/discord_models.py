"""Data records, ids, permissions and payload validation for the Discord stand-in.

Kept apart from the server so the rules that make the stand-in "strict like Discord"
(length limits, empty messages, permission maths) can be read in one place and tested
without sockets.  Everything here is plain data: no event loop, no aiohttp.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

DISCORD_EPOCH_MS = 1_420_070_400_000

# Gateway intents the stand-in honours (bit positions as documented by Discord).
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15
INTENT_GUILD_PRESENCES = 1 << 8
PRIVILEGED_INTENTS = INTENT_GUILD_MEMBERS | INTENT_GUILD_PRESENCES | INTENT_MESSAGE_CONTENT
ALL_KNOWN_INTENTS = (1 << 26) - 1

# Permission bits (subset the stand-in reasons about; values are Discord's).
PERM_ADMINISTRATOR = 1 << 3
PERM_ADD_REACTIONS = 1 << 6
PERM_VIEW_CHANNEL = 1 << 10
PERM_SEND_MESSAGES = 1 << 11
PERM_MANAGE_MESSAGES = 1 << 13
PERM_EMBED_LINKS = 1 << 14
PERM_ATTACH_FILES = 1 << 15
PERM_READ_MESSAGE_HISTORY = 1 << 16
PERM_MENTION_EVERYONE = 1 << 17
PERM_USE_EXTERNAL_EMOJIS = 1 << 18
PERM_CHANGE_NICKNAME = 1 << 26
PERM_USE_APPLICATION_COMMANDS = 1 << 31
PERM_CREATE_PUBLIC_THREADS = 1 << 35
PERM_SEND_MESSAGES_IN_THREADS = 1 << 38
ALL_PERMISSIONS = (1 << 53) - 1

#: What @everyone gets unless a test says otherwise: enough for a chat bot to work.
DEFAULT_EVERYONE_PERMISSIONS = (
    PERM_ADD_REACTIONS
    | PERM_VIEW_CHANNEL
    | PERM_SEND_MESSAGES
    | PERM_EMBED_LINKS
    | PERM_ATTACH_FILES
    | PERM_READ_MESSAGE_HISTORY
    | PERM_USE_EXTERNAL_EMOJIS
    | PERM_CHANGE_NICKNAME
    | PERM_USE_APPLICATION_COMMANDS
    | PERM_CREATE_PUBLIC_THREADS
    | PERM_SEND_MESSAGES_IN_THREADS
)

# Channel types.
CHANNEL_TEXT = 0
CHANNEL_DM = 1
CHANNEL_CATEGORY = 4
CHANNEL_NEWS = 5
CHANNEL_NEWS_THREAD = 10
CHANNEL_PUBLIC_THREAD = 11
CHANNEL_PRIVATE_THREAD = 12
THREAD_TYPES = frozenset({CHANNEL_NEWS_THREAD, CHANNEL_PUBLIC_THREAD, CHANNEL_PRIVATE_THREAD})

# Message flags.
FLAG_SUPPRESS_EMBEDS = 1 << 2
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7

# Message types.
MESSAGE_DEFAULT = 0
MESSAGE_REPLY = 19
MESSAGE_CHAT_INPUT_COMMAND = 20

MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_EMBED_TOTAL = 6000
EMBED_LIMITS = {"title": 256, "description": 4096, "footer.text": 2048, "author.name": 256}
MAX_EMBED_FIELDS = 25
MAX_FIELD_NAME = 256
MAX_FIELD_VALUE = 1024

ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024


def iso(ts: float | None = None) -> str:
    """ISO-8601 timestamp in the format Discord sends (UTC, microseconds, offset)."""
    when = dt.datetime.now(dt.UTC) if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC)
    return when.isoformat()


def snowflake_time(snowflake: int) -> float:
    """Unix time (seconds) encoded in a snowflake."""
    return ((snowflake >> 22) + DISCORD_EPOCH_MS) / 1000.0


class SnowflakeGenerator:
    """Makes unique, increasing snowflakes.

    Each id gets its own millisecond (at least one past the previous id), so ids made in
    a burst still differ in their timestamp bits; that spreads guilds over shards the way
    ``(guild_id >> 22) % shard_count`` expects, like real guilds created at different times.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._increment = 0

    def next(self) -> int:
        with self._lock:
            now_ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
            self._last_ms = max(now_ms, self._last_ms + 1)
            self._increment = (self._increment + 1) & 0xFFF
            return (self._last_ms << 22) | (1 << 17) | (1 << 12) | self._increment


# --------------------------------------------------------------------------------------
# World model
# --------------------------------------------------------------------------------------


@dataclass
class User:
    """A Discord user (the bot itself is one too)."""

    id: int
    username: str
    bot: bool = False
    global_name: str | None = None
    discriminator: str = "0"
    avatar: str | None = None

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "username": self.username,
            "discriminator": self.discriminator,
            "global_name": self.global_name,
            "avatar": self.avatar,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
        }
        if self.bot:
            data["bot"] = True
        return data


@dataclass
class Role:
    """A guild role; the @everyone role has the guild's id."""

    id: int
    guild_id: int
    name: str
    permissions: int = 0
    position: int = 0
    mentionable: bool = False
    hoist: bool = False
    managed: bool = False
    color: int = 0

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "color": self.color,
            "colors": {
                "primary_color": self.color,
                "secondary_color": None,
                "tertiary_color": None,
            },
            "hoist": self.hoist,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(self.permissions),
            "managed": self.managed,
            "mentionable": self.mentionable,
            "flags": 0,
        }


@dataclass
class Overwrite:
    """A channel permission overwrite (type 0 = role, 1 = member)."""

    id: int
    type: int
    allow: int = 0
    deny: int = 0

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "type": self.type,
            "allow": str(self.allow),
            "deny": str(self.deny),
        }


@dataclass
class Channel:
    """A guild channel, category, thread or DM channel."""

    id: int
    type: int
    guild_id: int | None = None
    name: str = ""
    position: int = 0
    parent_id: int | None = None
    topic: str | None = None
    nsfw: bool = False
    overwrites: list[Overwrite] = field(default_factory=list)
    recipients: list[int] = field(default_factory=list)
    owner_id: int | None = None
    archived: bool = False
    locked: bool = False
    rate_limit_per_user: int = 0
    last_message_id: int | None = None
    message_count: int = 0

    @property
    def is_thread(self) -> bool:
        return self.type in THREAD_TYPES

    def payload(self, users: dict[int, User] | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "type": self.type,
            "last_message_id": str(self.last_message_id) if self.last_message_id else None,
        }
        if self.type == CHANNEL_DM:
            data["recipients"] = [
                users[u].payload() for u in self.recipients if users and u in users
            ]
            data["flags"] = 0
            return data
        data.update(
            {
                "guild_id": str(self.guild_id) if self.guild_id is not None else None,
                "name": self.name,
                "flags": 0,
                "rate_limit_per_user": self.rate_limit_per_user,
                "parent_id": str(self.parent_id) if self.parent_id is not None else None,
            }
        )
        if self.is_thread:
            data.update(
                {
                    "owner_id": str(self.owner_id or 0),
                    "message_count": self.message_count,
                    "total_message_sent": self.message_count,
                    "member_count": 1,
                    "thread_metadata": {
                        "archived": self.archived,
                        "auto_archive_duration": 1440,
                        "archive_timestamp": iso(snowflake_time(self.id)),
                        "locked": self.locked,
                        "create_timestamp": iso(snowflake_time(self.id)),
                    },
                }
            )
            return data
        data.update(
            {
                "position": self.position,
                "permission_overwrites": [o.payload() for o in self.overwrites],
                "nsfw": self.nsfw,
            }
        )
        if self.type in (CHANNEL_TEXT, CHANNEL_NEWS):
            data["topic"] = self.topic
            data["default_auto_archive_duration"] = 1440
        return data


@dataclass
class Member:
    """A user's membership of a guild.

    ``permissions_override`` forces the permission bitfield sent in interactions for this
    member (handy for "admin-only command" tests) instead of the value computed from roles.
    """

    user_id: int
    guild_id: int
    roles: list[int] = field(default_factory=list)
    nick: str | None = None
    joined_at: str = field(default_factory=iso)
    permissions_override: int | None = None

    def payload(self, user: User | None, *, permissions: int | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "roles": [str(r) for r in self.roles],
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "joined_at": self.joined_at,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
        }
        if user is not None:
            data["user"] = user.payload()
        if permissions is not None:
            data["permissions"] = str(permissions)
        return data


@dataclass
class Guild:
    """A guild with its roles, channel ids and members (keyed by user id)."""

    id: int
    name: str
    owner_id: int
    roles: dict[int, Role] = field(default_factory=dict)
    channel_ids: list[int] = field(default_factory=list)
    members: dict[int, Member] = field(default_factory=dict)
    joined_at: str = field(default_factory=iso)


# --------------------------------------------------------------------------------------
# Records for assertions
# --------------------------------------------------------------------------------------


class MessageEdit(NamedTuple):
    """One visible state of a message: when it was acknowledged, and what it showed."""

    time: float
    content: str
    embeds: list[dict[str, Any]]


@dataclass
class MessageRecord:
    """A message as the stand-in stores it, with everything tests like to assert on.

    ``history`` starts with the creation and gets one entry per accepted edit;
    ``allowed_mentions`` gets one entry (possibly ``None``) per create/edit request.
    """

    id: int
    channel_id: int
    guild_id: int | None
    author_id: int
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    flags: int = 0
    type: int = MESSAGE_DEFAULT
    tts: bool = False
    pinned: bool = False
    mentions: list[int] = field(default_factory=list)
    mention_roles: list[int] = field(default_factory=list)
    mention_everyone: bool = False
    message_reference: dict[str, Any] | None = None
    referenced_message_id: int | None = None
    from_bot: bool = False
    webhook_id: int | None = None
    interaction_id: int | None = None
    created: float = field(default_factory=time.monotonic)
    timestamp: str = field(default_factory=iso)
    edited_timestamp: str | None = None
    history: list[MessageEdit] = field(default_factory=list)
    allowed_mentions: list[dict[str, Any] | None] = field(default_factory=list)
    deleted: bool = False
    deleted_at: float | None = None
    reactions: dict[str, set[int]] = field(default_factory=dict)
    nonce: str | int | None = None
    #: Gateway session ids MESSAGE_CREATE went to (empty: no bot was listening).
    delivered_to: list[str] = field(default_factory=list)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & FLAG_LOADING)

    @property
    def edits(self) -> list[MessageEdit]:
        """History entries after the creation."""
        return self.history[1:]

    def record_state(self, when: float) -> None:
        self.history.append(MessageEdit(when, self.content, [dict(e) for e in self.embeds]))


@dataclass
class RequestRecord:
    """One REST request as the stand-in saw and answered it."""

    received: float
    method: str
    path: str
    route: str | None
    query: dict[str, str]
    json: Any
    files: list[tuple[str, str, bytes]] = field(default_factory=list)
    authorized: bool = False
    responded: float = 0.0
    status: int = 0
    response: Any = None
    rate_limited: bool = False
    scope: str | None = None
    bucket: str | None = None
    injected: bool = False

    @property
    def duration(self) -> float:
        return self.responded - self.received


class CallbackRecord(NamedTuple):
    """An interaction callback: its type (4, 5, 6, 7, 8 or 9), data and receipt time."""

    type: int
    data: dict[str, Any]
    time: float


@dataclass
class IdentifyRecord:
    """What a gateway connection sent in IDENTIFY (or RESUME)."""

    time: float
    op: int
    token: str
    intents: int | None
    shard: tuple[int, int] | None
    session_id: str
    payload: dict[str, Any]


# --------------------------------------------------------------------------------------
# Errors and validation
# --------------------------------------------------------------------------------------


class ApiError(Exception):
    """Raised by handlers to answer with a Discord-shaped JSON error."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        errors: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.body: dict[str, Any] = {"message": message, "code": code}
        if errors is not None:
            self.body["errors"] = errors


def unknown(kind: str, code: int) -> ApiError:
    return ApiError(404, code, f"Unknown {kind}")


class FormErrors:
    """Collects Discord's nested ``errors`` object for a 50035 Invalid Form Body."""

    def __init__(self) -> None:
        self.errors: dict[str, Any] = {}

    def add(self, path: Iterable[str | int], code: str, message: str) -> None:
        node = self.errors
        for part in path:
            node = node.setdefault(str(part), {})
        node.setdefault("_errors", []).append({"code": code, "message": message})

    def raise_if_any(self) -> None:
        if self.errors:
            raise ApiError(400, 50035, "Invalid Form Body", self.errors)


def _max_len(errs: FormErrors, path: list[str | int], value: Any, limit: int) -> None:
    if isinstance(value, str) and len(value) > limit:
        errs.add(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")


def _embed_size(embed: dict[str, Any]) -> int:
    total = len(embed.get("title") or "") + len(embed.get("description") or "")
    total += len((embed.get("footer") or {}).get("text") or "")
    total += len((embed.get("author") or {}).get("name") or "")
    for fld in embed.get("fields") or []:
        total += len(fld.get("name") or "") + len(fld.get("value") or "")
    return total


def validate_embeds(errs: FormErrors, embeds: Any) -> None:
    """Discord's embed limits: 10 embeds, per-field lengths, 25 fields, 6000 in total."""
    if embeds is None:
        return
    if not isinstance(embeds, list):
        errs.add(["embeds"], "BASE_TYPE_ARRAY", "Must be an array.")
        return
    if len(embeds) > MAX_EMBEDS:
        errs.add(["embeds"], "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_EMBEDS} or fewer in length.")
    total = 0
    for i, embed in enumerate(embeds):
        if not isinstance(embed, dict):
            errs.add(["embeds", i], "MODEL_TYPE_CONVERT", "Only dictionaries may be used.")
            continue
        _max_len(errs, ["embeds", i, "title"], embed.get("title"), EMBED_LIMITS["title"])
        _max_len(
            errs,
            ["embeds", i, "description"],
            embed.get("description"),
            EMBED_LIMITS["description"],
        )
        footer = embed.get("footer") or {}
        _max_len(errs, ["embeds", i, "footer", "text"], footer.get("text"), 2048)
        author = embed.get("author") or {}
        _max_len(errs, ["embeds", i, "author", "name"], author.get("name"), 256)
        fields = embed.get("fields") or []
        if len(fields) > MAX_EMBED_FIELDS:
            errs.add(
                ["embeds", i, "fields"],
                "BASE_TYPE_MAX_LENGTH",
                f"Must be {MAX_EMBED_FIELDS} or fewer in length.",
            )
        for j, fld in enumerate(fields):
            for key, limit in (("name", MAX_FIELD_NAME), ("value", MAX_FIELD_VALUE)):
                value = fld.get(key)
                if value is None or value == "":
                    errs.add(
                        ["embeds", i, "fields", j, key],
                        "BASE_TYPE_REQUIRED",
                        "This field is required",
                    )
                else:
                    _max_len(errs, ["embeds", i, "fields", j, key], value, limit)
        total += _embed_size(embed)
    if total > MAX_EMBED_TOTAL:
        errs.add(
            ["embeds"],
            "MAX_EMBED_SIZE_EXCEEDED",
            f"Embed size exceeds maximum size of {MAX_EMBED_TOTAL}",
        )


def validate_allowed_mentions(errs: FormErrors, allowed: Any) -> None:
    """``parse: ["users"]`` together with a ``users`` list is rejected by Discord."""
    if allowed is None:
        return
    if not isinstance(allowed, dict):
        errs.add(["allowed_mentions"], "MODEL_TYPE_CONVERT", "Only dictionaries may be used.")
        return
    parse = allowed.get("parse") or []
    for kind in ("users", "roles"):
        if kind in parse and allowed.get(kind):
            errs.add(
                ["allowed_mentions", "parse"],
                "SET_TYPE_ALREADY_CONTAINS_VALUE",
                f'parse:["{kind}"] and {kind}: [ids...] are mutually exclusive.',
            )
    for kind in ("users", "roles"):
        if len(allowed.get(kind) or []) > 100:
            errs.add(["allowed_mentions", kind], "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer.")


def validate_message_fields(body: dict[str, Any]) -> None:
    """Length and shape rules shared by create, edit, followups and callbacks."""
    errs = FormErrors()
    content = body.get("content")
    if content is not None and not isinstance(content, str):
        errs.add(["content"], "BASE_TYPE_STRING", "Must be a string.")
    else:
        _max_len(errs, ["content"], content, MAX_CONTENT)
    validate_embeds(errs, body.get("embeds"))
    validate_allowed_mentions(errs, body.get("allowed_mentions"))
    components = body.get("components")
    if isinstance(components, list) and len(components) > 40:
        errs.add(["components"], "BASE_TYPE_MAX_LENGTH", "Must be 40 or fewer in length.")
    errs.raise_if_any()


def is_empty_message(
    content: str | None,
    embeds: list[Any] | None,
    attachments: list[Any] | None,
    components: list[Any] | None = None,
    *,
    stickers: list[Any] | None = None,
    poll: Any = None,
) -> bool:
    """Discord rejects a message with nothing visible in it (whitespace counts as nothing)."""
    return not (
        (content and content.strip())
        or embeds
        or attachments
        or components
        or stickers
        or poll is not None
    )


EMPTY_MESSAGE = ApiError(400, 50006, "Cannot send an empty message")

_COMMAND_NAME = re.compile(r"^[-_\w]{1,32}$")


def validate_commands(commands: Any) -> None:
    """The checks Discord applies to a bulk overwrite of application commands."""
    errs = FormErrors()
    if not isinstance(commands, list):
        raise ApiError(400, 50035, "Invalid Form Body", {"_errors": [{"code": "BASE_TYPE_ARRAY"}]})
    if len(commands) > 100:
        errs.add([], "BASE_TYPE_MAX_LENGTH", "Must be 100 or fewer in length.")
    seen: set[tuple[str, int]] = set()
    for i, cmd in enumerate(commands):
        ctype = int(cmd.get("type", 1))
        name = cmd.get("name") or ""
        if (name, ctype) in seen:
            errs.add([i, "name"], "APPLICATION_COMMANDS_DUPLICATE_NAME", f"Duplicate name {name}")
        seen.add((name, ctype))
        if ctype == 1:
            _check_name(errs, [i, "name"], name)
            _check_description(errs, [i, "description"], cmd.get("description"))
            _validate_options(errs, [i, "options"], cmd.get("options") or [])
        elif not 1 <= len(name) <= 32:
            errs.add([i, "name"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32 in length.")
    errs.raise_if_any()


def _check_name(errs: FormErrors, path: list[str | int], name: Any) -> None:
    if not isinstance(name, str) or not _COMMAND_NAME.match(name) or name != name.lower():
        errs.add(path, "APPLICATION_COMMAND_INVALID_NAME", f"Command name is invalid: {name!r}")


def _check_description(errs: FormErrors, path: list[str | int], desc: Any) -> None:
    if not isinstance(desc, str) or not 1 <= len(desc) <= 100:
        errs.add(path, "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")


def _validate_options(errs: FormErrors, path: list[str | int], options: list[Any]) -> None:
    if len(options) > 25:
        errs.add(path, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
    seen_optional = False
    for j, opt in enumerate(options):
        _check_name(errs, [*path, j, "name"], opt.get("name"))
        _check_description(errs, [*path, j, "description"], opt.get("description"))
        otype = int(opt.get("type", 3))
        if otype in (1, 2):
            _validate_options(errs, [*path, j, "options"], opt.get("options") or [])
            continue
        if opt.get("required"):
            if seen_optional:
                errs.add(
                    [*path, j, "required"],
                    "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                    "Required options must be placed before non-required options",
                )
        else:
            seen_optional = True
        choices = opt.get("choices") or []
        if len(choices) > 25:
            errs.add([*path, j, "choices"], "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer.")
        if choices and opt.get("autocomplete"):
            errs.add(
                [*path, j, "autocomplete"],
                "APPLICATION_COMMAND_OPTION_CHOICES_AUTOCOMPLETE",
                "Autocomplete cannot be set with choices",
            )


def validate_choices(data: dict[str, Any]) -> None:
    """Autocomplete results: at most 25 choices, names 1-100 characters."""
    errs = FormErrors()
    choices = data.get("choices")
    if not isinstance(choices, list):
        errs.add(["data", "choices"], "BASE_TYPE_REQUIRED", "This field is required")
    else:
        if len(choices) > 25:
            errs.add(["data", "choices"], "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
        for i, choice in enumerate(choices):
            name = choice.get("name")
            if not isinstance(name, str) or not 1 <= len(name) <= 100:
                errs.add(
                    ["data", "choices", i, "name"],
                    "BASE_TYPE_BAD_LENGTH",
                    "Must be between 1 and 100 in length.",
                )
            value = choice.get("value")
            if isinstance(value, str) and len(value) > 100:
                errs.add(
                    ["data", "choices", i, "value"],
                    "BASE_TYPE_MAX_LENGTH",
                    "Must be 100 or fewer in length.",
                )
    errs.raise_if_any()


def validate_modal(data: dict[str, Any]) -> None:
    """Modal limits: custom_id up to 100, title up to 45, 1 to 5 top-level components."""
    errs = FormErrors()
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= 100:
        errs.add(["data", "custom_id"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100.")
    title = data.get("title")
    if not isinstance(title, str) or not 1 <= len(title) <= 45:
        errs.add(["data", "title"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 45 in length.")
    components = data.get("components")
    if not isinstance(components, list) or not 1 <= len(components) <= 5:
        errs.add(["data", "components"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5.")
    errs.raise_if_any()


# --------------------------------------------------------------------------------------
# Mentions
# --------------------------------------------------------------------------------------

_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")


def parse_mentions(
    content: str,
    allowed: dict[str, Any] | None,
    *,
    known_users: Iterable[int],
    known_roles: Iterable[int],
    replied_user: int | None = None,
) -> tuple[list[int], list[int], bool]:
    """Which users/roles/@everyone a message pings, after ``allowed_mentions`` filtering.

    Mirrors Discord: with no ``allowed_mentions`` everything in the content pings; with it,
    only what ``parse`` or the explicit id lists allow.  A reply pings its author unless
    ``replied_user`` is false.
    """
    users_known = set(known_users)
    roles_known = set(known_roles)
    users = [int(u) for u in _USER_MENTION.findall(content) if int(u) in users_known]
    roles = [int(r) for r in _ROLE_MENTION.findall(content) if int(r) in roles_known]
    everyone = "@everyone" in content or "@here" in content
    reply_ping = replied_user is not None
    if allowed is not None:
        parse = set(allowed.get("parse") or [])
        allowed_users = {int(u) for u in allowed.get("users") or []}
        allowed_roles = {int(r) for r in allowed.get("roles") or []}
        users = [u for u in users if "users" in parse or u in allowed_users]
        roles = [r for r in roles if "roles" in parse or r in allowed_roles]
        everyone = everyone and "everyone" in parse
        # Discord: `replied_user` defaults to false once `allowed_mentions` is given.
        reply_ping = reply_ping and bool(allowed.get("replied_user", False))
    if reply_ping and replied_user is not None and replied_user not in users:
        users.append(replied_user)
    return list(dict.fromkeys(users)), list(dict.fromkeys(roles)), everyone


# --------------------------------------------------------------------------------------
# Permissions
# --------------------------------------------------------------------------------------


def base_permissions(guild: Guild, user_id: int) -> int:
    """Guild-level permissions: owner and administrators get everything."""
    if user_id == guild.owner_id:
        return ALL_PERMISSIONS
    member = guild.members.get(user_id)
    perms = guild.roles[guild.id].permissions if guild.id in guild.roles else 0
    if member is not None:
        for role_id in member.roles:
            role = guild.roles.get(role_id)
            if role is not None:
                perms |= role.permissions
    if perms & PERM_ADMINISTRATOR:
        return ALL_PERMISSIONS
    return perms


def channel_permissions(guild: Guild, channel: Channel, user_id: int) -> int:
    """Discord's overwrite algorithm: @everyone, then roles (deny, allow), then member."""
    perms = base_permissions(guild, user_id)
    if perms == ALL_PERMISSIONS:
        return perms
    overwrites = {(o.type, o.id): o for o in channel.overwrites}
    member = guild.members.get(user_id)
    everyone = overwrites.get((0, guild.id))
    if everyone is not None:
        perms = (perms & ~everyone.deny) | everyone.allow
    allow = deny = 0
    for role_id in member.roles if member else []:
        ow = overwrites.get((0, role_id))
        if ow is not None:
            allow |= ow.allow
            deny |= ow.deny
    perms = (perms & ~deny) | allow
    own = overwrites.get((1, user_id))
    if own is not None:
        perms = (perms & ~own.deny) | own.allow
    if not perms & PERM_VIEW_CHANNEL:
        return 0
    return perms
