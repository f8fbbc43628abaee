"""Plain data shared by the core services (no Discord types, so the core tests without it)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class Place:
    """Where a conversation happens: one channel, thread or DM is one conversation."""

    channel_id: int
    channel_name: str = ""
    guild_id: int | None = None
    guild_name: str | None = None
    # A thread's parent channel: the thread inherits its persona.
    parent_id: int | None = None


@dataclass(frozen=True, slots=True)
class Speaker:
    id: int
    name: str


@dataclass(frozen=True, slots=True)
class ImageRef:
    """An image a user turn carries; its bytes live in Redis next to the history."""

    id: str
    name: str
    mime: str
    width: int = 0
    height: int = 0


@dataclass(frozen=True, slots=True)
class Turn:
    """One stored message of a conversation."""

    role: str  # "user" or "assistant"
    content: str
    tokens: int
    at: float
    author_id: int | None = None
    author_name: str | None = None
    message_id: int | None = None
    # Images attached to a user turn (refs only: the bytes are stored separately).
    images: tuple[ImageRef, ...] = ()
    # An answer that used tools: what the next turns should know of them (see bot.tools).
    tool_note: str | None = None
    # An answer the person stopped (Stop button): `content` is what they saw, cut short.
    stopped: bool = False

    def to_json(self) -> str:
        data = asdict(self)
        if not self.images:
            del data["images"]  # text-only turns are stored exactly as before
        if data["tool_note"] is None:
            del data["tool_note"]
        if not self.stopped:
            del data["stopped"]  # the common case stays as compact as before
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Turn:
        data: dict[str, Any] = json.loads(raw)
        return cls(
            role=str(data["role"]),
            content=str(data["content"]),
            tokens=int(data.get("tokens", 0)),
            at=float(data.get("at", 0.0)),
            author_id=data.get("author_id"),
            author_name=data.get("author_name"),
            message_id=data.get("message_id"),
            images=tuple(ImageRef(**i) for i in data.get("images") or ()),
            tool_note=data.get("tool_note"),
            stopped=bool(data.get("stopped", False)),
        )


@dataclass(frozen=True, slots=True)
class StoredPersona:
    """A persona someone set for a channel or server."""

    text: str
    preset: str | None = None
    set_by: int | None = None
    at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> StoredPersona:
        data: dict[str, Any] = json.loads(raw)
        return cls(
            text=str(data["text"]),
            preset=data.get("preset"),
            set_by=data.get("set_by"),
            at=float(data.get("at", 0.0)),
        )


@dataclass(frozen=True, slots=True)
class TokenUsage:
    prompt_tokens: int
    completion_tokens: int
    # True when the provider reported nothing and these are the bot's own counts.
    estimated: bool = False

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Button:
    """A button under a reply message, as data: the Discord glue turns it into a component.

    Its `custom_id` carries everything a press needs (buttons outlive restarts), and a
    cog registers the handler for its pattern.
    """

    custom_id: str
    label: str
    emoji: str | None = None
    style: Literal["primary", "secondary", "success", "danger"] = "secondary"


@dataclass(frozen=True, slots=True)
class Summary:
    """A channel's running summary of the turns that left its stored history."""

    text: str
    tokens: int
    # How many turns it covers in all, and when it was last extended.
    turns: int = 0
    at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Summary:
        data: dict[str, Any] = json.loads(raw)
        return cls(
            text=str(data["text"]),
            tokens=int(data.get("tokens", 0)),
            turns=int(data.get("turns", 0)),
            at=float(data.get("at", 0.0)),
        )
