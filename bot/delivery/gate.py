"""Deciding whether a message gets an answer, and flood control.

Pure logic over plain facts about a message, so the rules (which are what admins
configure) are tested without Discord. The chat cog gathers the facts.
"""

from __future__ import annotations

import enum
import time
import unicodedata
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.config import DiscordConfig


class Verdict(enum.Enum):
    IGNORE = "ignore"
    ANSWER = "answer"
    # Addressed to the bot, but with nothing to read (only an attachment or sticker).
    NO_TEXT = "no_text"


@dataclass(frozen=True, slots=True)
class MessageFacts:
    author_is_bot: bool
    is_dm: bool
    guild_id: int | None = None
    channel_id: int = 0
    # A thread's parent channel and a channel's category also match channel lists.
    parent_id: int | None = None
    category_id: int | None = None
    role_ids: frozenset[int] = frozenset()
    mentions_bot: bool = False
    replies_to_bot: bool = False
    has_text: bool = True


# Characters that render as nothing although they are not whitespace: the Hangul and
# Halfwidth Hangul fillers and the blank Braille pattern (format characters such as
# zero-width spaces, joiners and bidi controls are found by their category, Cf).
_BLANKS = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def has_visible_text(text: str) -> bool:
    """Whether `text` shows anything: not only whitespace, zero-width or bidi controls."""
    return any(not (c.isspace() or c in _BLANKS or unicodedata.category(c) == "Cf") for c in text)


def is_allowed_place(facts: MessageFacts, config: DiscordConfig) -> bool:
    """The id allow/deny lists: deny wins; an empty allow list allows everything."""
    if facts.is_dm:
        return config.allow_dms
    channels = {c for c in (facts.channel_id, facts.parent_id, facts.category_id) if c}
    if facts.guild_id in config.denied_guilds or channels & set(config.denied_channels):
        return False
    if facts.role_ids & set(config.denied_roles):
        return False
    if config.allowed_guilds and facts.guild_id not in config.allowed_guilds:
        return False
    if config.allowed_channels and not channels & set(config.allowed_channels):
        return False
    return not (config.allowed_roles and not facts.role_ids & set(config.allowed_roles))


def decide(facts: MessageFacts, config: DiscordConfig, *, chat_mode: bool) -> Verdict:
    """Whether to answer. `chat_mode` is the channel's `/chat on` switch."""
    if facts.author_is_bot or not is_allowed_place(facts, config):
        return Verdict.IGNORE
    addressed = (
        facts.is_dm
        or chat_mode
        or (config.reply_on_mention and facts.mentions_bot)
        or (config.reply_on_reply and facts.replies_to_bot)
    )
    if not addressed:
        return Verdict.IGNORE
    return Verdict.ANSWER if facts.has_text else Verdict.NO_TEXT


def needs_chat_mode(facts: MessageFacts, config: DiscordConfig) -> bool:
    """Whether the answer depends on the channel's switch (saves a Redis call otherwise)."""
    if facts.author_is_bot or facts.is_dm or not is_allowed_place(facts, config):
        return False
    return not (
        (config.reply_on_mention and facts.mentions_bot)
        or (config.reply_on_reply and facts.replies_to_bot)
    )


@dataclass(slots=True)
class _Window:
    hits: deque[float] = field(default_factory=deque)
    warned_until: float = 0.0


class Cooldown:
    """Per-user sliding window: at most `burst` answers per `per_s` seconds.

    In memory on purpose: flood control is about this process's load and a restart
    forgives; it costs no Redis round trip per message.
    """

    def __init__(
        self, burst: int, per_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst = burst
        self.per_s = per_s
        self._clock = clock
        self._users: dict[int, _Window] = {}

    def _now(self) -> float:
        return self._clock()

    def hit(self, user_id: int) -> float | None:
        """Count one message; None if allowed, else seconds until the user may try again."""
        if self.per_s <= 0:
            return None
        now = self._now()
        window = self._users.setdefault(user_id, _Window())
        while window.hits and window.hits[0] <= now - self.per_s:
            window.hits.popleft()
        if len(window.hits) >= self.burst:
            return window.hits[0] + self.per_s - now
        window.hits.append(now)
        self._forget_idle(now)
        return None

    def should_warn(self, user_id: int, retry_after: float) -> bool:
        """Tell a flooding user once per window, not once per message."""
        now = self._now()
        window = self._users.setdefault(user_id, _Window())
        if now < window.warned_until:
            return False
        window.warned_until = now + retry_after
        return True

    def _forget_idle(self, now: float) -> None:
        if len(self._users) < 10_000:
            return
        for uid in [
            u for u, w in self._users.items() if not w.hits or w.hits[-1] < now - self.per_s
        ]:
            del self._users[uid]
