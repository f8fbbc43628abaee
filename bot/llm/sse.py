"""Incremental Server-Sent Events parsing, plus the OpenAI chat-chunk layer on top.

Pure code: no I/O, no asyncio. The network hands us bytes cut anywhere (inside a line,
inside a multi-byte UTF-8 character, between the CR and LF of a CRLF); `SSEParser.feed`
turns them into whole SSE events, and `ChatChunkParser` turns each event's JSON payload
into typed chat events (text delta, finish reason, usage, model, error, done).

Line handling follows the SSE spec (https://html.spec.whatwg.org/#event-stream-interpretation):
lines end in CRLF, LF or CR; lines starting with ":" are comments (keep-alive pings);
`data:` with or without one space; several data lines join with "\\n"; a blank line
dispatches the event. Only CR and LF end a line: JSON strings may legally contain
U+2028 and friends, which `str.splitlines` would wrongly treat as line breaks.

Cost per byte is constant: an unfinished line is kept as a list of pieces and joined
once, when its end arrives, so a huge line delivered in tiny chunks is not re-copied.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ChatChunkParser",
    "ChatEvent",
    "Done",
    "Finish",
    "Malformed",
    "ModelName",
    "ReasoningDelta",
    "SSEEvent",
    "SSEParser",
    "StreamError",
    "TextDelta",
    "ToolCallDelta",
    "Usage",
    "parse_payload",
]

_EOL = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched SSE event: the joined data lines, the event type and the last id."""

    data: str
    event: str = "message"
    id: str | None = None


class SSEParser:
    """Incremental SSE decoder: `feed(bytes) -> list[SSEEvent]`, then `close()` at the end."""

    __slots__ = (
        "_data",
        "_decoder",
        "_event_type",
        "_has_data",
        "_last_id",
        "_partial",
        "_skip_lf",
        "_started",
    )

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial: list[str] = []  # pieces of the line not yet terminated
        self._skip_lf = False  # the last text ended in CR: a leading LF belongs to it
        self._started = False  # a leading BOM is dropped once
        self._data: list[str] = []
        self._has_data = False
        self._event_type = ""
        self._last_id: str | None = None

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Parse the next bytes; return the events they completed (often none or one)."""
        return self._feed_text(self._decoder.decode(data))

    def close(self) -> list[SSEEvent]:
        """End of stream: flush a final unterminated line and a final undispatched event.

        The spec drops an event that never saw its blank line; real servers sometimes end
        with `data: [DONE]` and no newline at all, so we are lenient and dispatch it.
        """
        events = self._feed_text(self._decoder.decode(b"", True))
        if self._partial:
            line = "".join(self._partial)
            self._partial.clear()
            self._line(line, events)
        self._line("", events)
        return events

    def _feed_text(self, text: str) -> list[SSEEvent]:
        events: list[SSEEvent] = []
        if not text:
            return events
        if not self._started:
            self._started = True
            if text[0] == "\ufeff":
                text = text[1:]
                if not text:
                    return events
        if self._skip_lf:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
        if not text:
            return events
        start = 0
        for match in _EOL.finditer(text):
            piece = text[start : match.start()]
            if self._partial:
                self._partial.append(piece)
                piece = "".join(self._partial)
                self._partial.clear()
            self._line(piece, events)
            start = match.end()
        if start < len(text):
            self._partial.append(text[start:])
        elif text[-1] == "\r":
            self._skip_lf = True
        return events

    def _line(self, line: str, events: list[SSEEvent]) -> None:
        if not line:
            if self._has_data:
                events.append(
                    SSEEvent("\n".join(self._data), self._event_type or "message", self._last_id)
                )
            self._data.clear()
            self._has_data = False
            self._event_type = ""
            return
        if line[0] == ":":
            return  # comment, e.g. ": ping - 2024-01-01 00:00:00"
        field, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if field == "data":
            self._data.append(value)
            self._has_data = True
        elif field == "event":
            self._event_type = value
        elif field == "id" and "\0" not in value:
            self._last_id = value
        # "retry" and unknown fields are ignored, as the spec says.


# --- OpenAI chat chunks -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """Thinking from a reasoning field (`reasoning_content`, `reasoning`,
    `reasoning_details`); inline `<think>` tags arrive as `TextDelta`s."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call: the first of an `index` usually carries `id` and
    `name`, later ones only more `arguments` text (see `bot.llm.toolcalls`)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class Finish:
    reason: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts the server reported for one call."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class ModelName:
    name: str


@dataclass(frozen=True, slots=True)
class StreamError:
    """An `error` object the server put inside the stream."""

    message: str
    code: str | None = None
    type: str | None = None


@dataclass(frozen=True, slots=True)
class Malformed:
    """A data line that is not valid JSON (or not a JSON object)."""

    detail: str


@dataclass(frozen=True, slots=True)
class Done:
    """The `data: [DONE]` sentinel."""


ChatEvent = (
    TextDelta
    | ReasoningDelta
    | ToolCallDelta
    | Finish
    | Usage
    | ModelName
    | StreamError
    | Malformed
    | Done
)

_DONE = Done()


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _stream_error(err: Any) -> StreamError:
    if isinstance(err, dict):
        message = err.get("message")
        code = err.get("code")
        etype = err.get("type")
        return StreamError(
            message=str(message) if message is not None else _short(json.dumps(err)),
            code=str(code) if code is not None else None,
            type=str(etype) if etype is not None else None,
        )
    return StreamError(message=_short(str(err)))


def _reasoning(delta: dict[str, Any]) -> str:
    """Thinking text of one delta, wherever the server put it.

    OpenRouter sends the same text in `reasoning` and `reasoning_details`: the latter is
    read only when the former is missing (summaries count; encrypted entries do not).
    """
    for key in ("reasoning_content", "reasoning"):
        value = delta.get(key)
        if isinstance(value, str) and value:
            return value
    details = delta.get("reasoning_details")
    if not isinstance(details, list):
        return ""
    texts = []
    for item in details:
        if isinstance(item, dict):
            text = item.get("text", item.get("summary"))
            if isinstance(text, str):
                texts.append(text)
    return "".join(texts)


def _tool_call_deltas(calls: Any) -> list[ToolCallDelta]:
    """`delta.tool_calls` (or a whole message's `tool_calls`), read defensively."""
    out: list[ToolCallDelta] = []
    for pos, call in enumerate(calls if isinstance(calls, list) else ()):
        if not isinstance(call, dict):
            continue
        index = _as_int(call.get("index"))
        fn = call.get("function")
        fn = fn if isinstance(fn, dict) else {}
        call_id, name, args = call.get("id"), fn.get("name"), fn.get("arguments")
        if isinstance(args, dict | list):  # a few servers send the arguments as JSON
            args = json.dumps(args)
        out.append(
            ToolCallDelta(
                index=pos if index is None else index,
                id=call_id if isinstance(call_id, str) and call_id else None,
                name=name if isinstance(name, str) and name else None,
                arguments=args if isinstance(args, str) else "",
            )
        )
    return out


def parse_payload(data: str, event: str = "message") -> list[ChatEvent]:
    """Turn one SSE event's data into chat events. Never raises on bad input."""
    stripped = data.strip()
    if stripped == "[DONE]":
        return [_DONE]
    if not stripped:
        return []
    try:
        obj = json.loads(data)
    except ValueError as exc:
        return [Malformed(f"invalid JSON in a data line ({exc}): {_short(data)!r}")]
    if event == "error":
        return [_stream_error(obj.get("error", obj) if isinstance(obj, dict) else obj)]
    if not isinstance(obj, dict):
        return [Malformed(f"data line is JSON but not an object: {_short(data)!r}")]
    err = obj.get("error")
    if err:
        return [_stream_error(err)]

    out: list[ChatEvent] = []
    model = obj.get("model")
    if isinstance(model, str) and model:
        out.append(ModelName(model))
    choices = obj.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if not isinstance(choice, dict) or choice.get("index", 0) not in (0, None):
                continue
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                delta = choice.get("message")  # a few servers send message-shaped chunks
            if isinstance(delta, dict):
                reasoning = _reasoning(delta)
                if reasoning:
                    out.append(ReasoningDelta(reasoning))
                content = delta.get("content")
                if isinstance(content, str) and content:
                    out.append(TextDelta(content))
                out.extend(_tool_call_deltas(delta.get("tool_calls")))
            else:
                text = choice.get("text")  # legacy completions shape
                if isinstance(text, str) and text:
                    out.append(TextDelta(text))
            reason = choice.get("finish_reason")
            if isinstance(reason, str) and reason:
                out.append(Finish(reason))
    usage = obj.get("usage")
    if isinstance(usage, dict):
        prompt = _as_int(usage.get("prompt_tokens"))
        completion = _as_int(usage.get("completion_tokens"))
        if prompt is not None and completion is not None:
            out.append(Usage(prompt, completion))
    return out


class ChatChunkParser:
    """Bytes in, chat events out: SSE framing plus OpenAI chunk decoding.

    `ModelName` is reported only when it first appears or changes, not once per chunk.
    """

    __slots__ = ("_model", "_sse")

    def __init__(self) -> None:
        self._sse = SSEParser()
        self._model: str | None = None

    def feed(self, data: bytes) -> list[ChatEvent]:
        return self._convert(self._sse.feed(data))

    def close(self) -> list[ChatEvent]:
        return self._convert(self._sse.close())

    def _convert(self, events: list[SSEEvent]) -> list[ChatEvent]:
        out: list[ChatEvent] = []
        for ev in events:
            for item in parse_payload(ev.data, ev.event):
                if isinstance(item, ModelName):
                    if item.name == self._model:
                        continue
                    self._model = item.name
                out.append(item)
        return out
