"""How a model's thinking shows in Discord: a live status, a button, a private answer.

Pure logic (no Discord types): the chat cog feeds thinking pieces to `ThinkingStatus`,
which turns them into the renderer's status line; the "Show thinking" button carries
the channel and the key the thoughts were kept under; `thoughts_message` decides
whether the thoughts fit a message or go as a `.md` file.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from bot.delivery.splitter import DISCORD_LIMIT
from bot.models import Button

THINK_PREFIX = "think"
# The button's custom_id: `think:<channel id>:<key of the kept thoughts>`.
THINK_TEMPLATE = rf"{THINK_PREFIX}:(?P<channel>[0-9]+):(?P<key>[0-9a-f]+)"
THINK_LABEL = "Show thinking"
THINK_EMOJI = "💭"
ATTACHED = "💭 The model's thinking is attached (too long for a message)."
FILE_NAME = "thinking.md"


def thinking_button(channel_id: int, key: str) -> Button:
    return Button(f"{THINK_PREFIX}:{channel_id}:{key}", THINK_LABEL, emoji=THINK_EMOJI)


def parse_thinking_id(custom_id: str) -> tuple[int, str] | None:
    match = re.fullmatch(THINK_TEMPLATE, custom_id)
    return (int(match["channel"]), match["key"]) if match else None


def status_text(seconds: float) -> str:
    return (
        f"{THINK_EMOJI} Thinking…" if seconds < 1 else f"{THINK_EMOJI} Thinking… {int(seconds)} s"
    )


class ThinkingStatus:
    """Collects thinking pieces and keeps a status line ("💭 Thinking… 14 s") current.

    `show` is the renderer's `set_status`; it is called only when the text changes (at
    most once a second), and the renderer paces the edits.
    """

    def __init__(
        self, show: Callable[[str | None], None], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._show = show
        self._clock = clock
        self._since: float | None = None
        self._parts: list[str] = []

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def __call__(self, piece: str) -> None:
        self._parts.append(piece)
        if self._since is None and not piece.strip():
            return  # an empty thinking block ("<think>\n\n</think>") is no thinking
        now = self._clock()
        if self._since is None:
            self._since = now
        self._show(status_text(now - self._since))


def thoughts_message(text: str, limit: int = DISCORD_LIMIT) -> tuple[str, bytes | None]:
    """(message, file bytes or None): the thoughts themselves when they fit a message."""
    text = text.strip()
    if len(text) <= limit:
        return text, None
    return ATTACHED, text.encode("utf-8")
