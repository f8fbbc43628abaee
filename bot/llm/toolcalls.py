"""Tool calls as the model streams them, pieced back together (pure code).

Servers stream a call over many chunks: the first piece of an `index` carries its `id`
and function `name`, later pieces only more `arguments` text, cut anywhere (even inside
a JSON string). Some servers (Ollama) instead send each call whole, all at index 0; a
new `id` at an index that already has one therefore starts a new call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from bot.llm.sse import ToolCallDelta


@dataclass(slots=True)
class ToolCall:
    """One call the model asked for. `arguments` is the raw JSON text, maybe malformed."""

    id: str
    name: str
    arguments: str = ""

    def parsed_arguments(self) -> dict[str, Any]:
        """The arguments as an object; ValueError with a short reason when they are not."""
        text = self.arguments.strip()
        if not text:
            return {}  # models send "" for tools without parameters
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"the arguments are not valid JSON ({exc})") from None
        if not isinstance(value, dict):
            raise ValueError("the arguments must be a JSON object")
        return value

    def as_message_part(self) -> dict[str, Any]:
        """The call as the assistant message's `tool_calls` item for the next request."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments or "{}"},
        }


@dataclass
class ToolCallAccumulator:
    """Feed `ToolCallDelta`s in arrival order; `calls` are the finished calls in order."""

    _calls: list[ToolCall] = field(default_factory=list)
    _slot: dict[int, int] = field(default_factory=dict)  # stream index -> position

    def add(self, delta: ToolCallDelta) -> None:
        pos = self._slot.get(delta.index)
        if pos is not None and delta.id and self._calls[pos].id and delta.id != self._calls[pos].id:
            pos = None  # a whole new call re-using the index
        if pos is None:
            pos = self._slot[delta.index] = len(self._calls)
            self._calls.append(ToolCall(id="", name=""))
        call = self._calls[pos]
        if delta.id and not call.id:
            call.id = delta.id
        if delta.name and delta.name != call.name:
            # Sent once normally; repeated whole by some servers, in pieces by a few.
            call.name += delta.name
        call.arguments += delta.arguments

    def __len__(self) -> int:
        return len(self._calls)

    def clear(self) -> None:
        self._calls.clear()
        self._slot.clear()

    @property
    def calls(self) -> list[ToolCall]:
        """The calls so far; calls the server sent without an id get one here."""
        for i, call in enumerate(self._calls):
            if not call.id:
                call.id = f"call_{i}"
        return list(self._calls)
