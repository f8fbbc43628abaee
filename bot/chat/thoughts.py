"""Keeping a reply's thinking for a day, for whoever asks to see it.

Why apart from the history: thoughts are never sent back to the model (servers reject
or misread them) and never shown in the channel, but people like to check how a model
reached its answer. So they live under the channel's hash tag (one Cluster slot with
the rest of the channel), capped in size, and expire after a day.
"""

from __future__ import annotations

import secrets

from bot.errors import ThoughtsExpired
from bot.memory.store import DAY, Store

# Longer thoughts are cut: a day of them in a busy channel must not fill Redis.
MAX_THOUGHT_CHARS = 100_000
CUT_NOTE = "\n\n[… the rest of the thinking was cut: it was too long to keep]"
# Characters of a key: short, because it travels in a button's custom_id (100 at most).
KEY_BYTES = 6


class ThoughtsService:
    def __init__(self, store: Store, *, ttl_s: int = DAY, max_chars: int = MAX_THOUGHT_CHARS):
        self.store = store
        self.ttl_s = ttl_s
        self.max_chars = max_chars

    async def keep(self, channel_id: int, text: str) -> str | None:
        """Store `text` for a day; returns its key, or None if there is nothing to keep."""
        text = text.strip()
        if not text:
            return None
        if len(text) > self.max_chars:
            text = text[: self.max_chars - len(CUT_NOTE)] + CUT_NOTE
        key = secrets.token_hex(KEY_BYTES)
        await self.store.keep_thoughts(channel_id, key, text, self.ttl_s)
        return key

    async def get(self, channel_id: int, key: str) -> str:
        """The thoughts; `ThoughtsExpired` once they are gone (or never existed)."""
        text = await self.store.thoughts(channel_id, key)
        if text is None:
            raise ThoughtsExpired()
        return text
