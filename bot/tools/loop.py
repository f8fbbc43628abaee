"""The tool loop of one reply: model -> tool calls -> results -> model, shown step by step.

Why it looks like this: the conversation engine opens the first model stream as always
(so every failure before the first token is raised where it always was), then hands it
here. `ToolRun.run` yields the answer text of every stream; when a stream ends with tool
calls, the calls run (in parallel, each with its server's time-out, results capped),
the call and its results are appended to the messages, and the next stream opens. After
`mcp.max_steps` rounds the model is asked once more, with `tool_choice: "none"`, to answer
with what it has. Every way a call can fail (malformed arguments, an unknown tool, a
server that hangs, crashes or floods) becomes an error result for the model and a ✗ on
the person's step line, never a failed reply.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bot.config import MCPConfig
from bot.errors import ToolStepsExhausted
from bot.llm.client import ChatStream
from bot.llm.thinking import StreamDelta
from bot.llm.tokens import TokenCounter
from bot.llm.toolcalls import ToolCall
from bot.ops.metrics import Metrics
from bot.tools.mcp import ToolInfo, ToolManager, ToolResult, cap

log = logging.getLogger(__name__)

# More calls than this in one round get an error result instead of running.
MAX_CALLS_PER_STEP = 8
# The step lines shown above a reply: at most this many, each argument this long.
MAX_STEP_LINES = 10
NAME_SHOWN_CHARS = 32
ARG_SHOWN_CHARS = 60
NOTE_SHOWN_CHARS = 60
# Rough characters per token, to turn the context left into a result size.
CHARS_PER_TOKEN = 3

# Opens (and enters) the next model stream: messages, tools, tool_choice.
OpenStream = Callable[
    [list[dict[str, Any]], list[dict[str, Any]], str | None], Awaitable[ChatStream]
]


@dataclass(slots=True)
class ToolStep:
    """One call as the person sees it: `state` is "running", "ok" or "error"."""

    name: str
    args: str
    state: str = "running"
    note: str = ""


@dataclass(frozen=True, slots=True)
class UsedTool:
    """One finished call, for the history note."""

    name: str
    arguments: str
    ok: bool
    result: str


def shown_args(arguments: str) -> str:
    """A call's arguments for one short, inert line: the value of a single argument,
    else `key=value` pairs; no backticks or line breaks, cut to `ARG_SHOWN_CHARS`."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        text = arguments
    else:
        if isinstance(value, dict) and len(value) == 1:
            (only,) = value.values()
            text = only if isinstance(only, str) else json.dumps(only, ensure_ascii=False)
        elif isinstance(value, dict):
            text = ", ".join(
                f"{k}={v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}"
                for k, v in value.items()
            )
        else:
            text = json.dumps(value, ensure_ascii=False)
    text = " ".join(text.replace("`", "'").split())
    return text if len(text) <= ARG_SHOWN_CHARS else text[: ARG_SHOWN_CHARS - 1] + "…"


def step_line(step: ToolStep) -> str:
    """`-# 🔧 search: `query` ✓` (Discord's small text)."""
    mark = {"running": "…", "ok": "✓"}.get(step.state, "✗")
    name = "".join(c if c.isalnum() or c in "_-." else "_" for c in step.name)[:NAME_SHOWN_CHARS]
    line = f"-# 🔧 {name}"
    if step.args:
        line += f": `{step.args}`"
    line += f" {mark}"
    if step.note:
        note = " ".join(step.note.replace("`", "'").split())
        line += f" {note[:NOTE_SHOWN_CHARS]}"
    return line


def steps_header(steps: list[ToolStep]) -> str:
    """The step lines shown above the answer (the newest ones when there are many)."""
    lines = [step_line(s) for s in steps]
    if len(lines) > MAX_STEP_LINES:
        hidden = len(lines) - MAX_STEP_LINES + 1
        lines = [f"-# 🔧 … {hidden} earlier calls", *lines[-(MAX_STEP_LINES - 1) :]]
    return "\n".join(lines)


class ToolRun:
    """The loop for one reply. Iterate `run(first_stream)` for answer text deltas."""

    def __init__(
        self,
        *,
        manager: ToolManager,
        tools: list[ToolInfo],
        config: MCPConfig,
        messages: list[dict[str, Any]],
        open_stream: OpenStream,
        counter: TokenCounter,
        context_left: int,
        spec_tokens: int = 0,
        metrics: Metrics | None = None,
        on_steps: Callable[[list[ToolStep]], None] | None = None,
    ) -> None:
        self.manager = manager
        self.tools = {t.name: t for t in tools}
        self.specs = [t.spec() for t in tools]
        self.config = config
        self.messages = list(messages)
        self.open_stream = open_stream
        self.counter = counter
        # Tokens the prompt may grow by beyond the history (context minus reply reserve
        # minus the history prompt); the specs and every round's messages use it up.
        self.context_left = context_left
        self.on_steps = on_steps
        self.metrics = metrics
        self.streams: list[ChatStream] = []
        # Prompt tokens each request had beyond the history (estimates): the tool specs,
        # then the calls and results of earlier rounds.
        self.extra_prompt: list[int] = []
        self.steps: list[ToolStep] = []
        self.used: list[UsedTool] = []
        self._texts: list[str] = []
        self._added = spec_tokens
        self._ids: set[str] = set()

    @property
    def text(self) -> str:
        """The answer: the text of every stream, in order."""
        return "".join(self._texts)

    @property
    def last(self) -> ChatStream:
        return self.streams[-1]

    async def run(self, first: ChatStream) -> AsyncIterator[StreamDelta]:
        """Typed deltas of every stream (thinking passes through, the answer is kept)."""
        stream = first
        rounds = 0
        while True:
            self.streams.append(stream)
            self.extra_prompt.append(self._added)
            fresh = True
            async for delta in stream.deltas():
                if delta.thinking:
                    yield delta
                    continue
                text = delta.text
                if fresh and self._texts and not self.text.endswith("\n"):
                    text = "\n\n" + text  # the words after a tool round: a new paragraph
                fresh = False
                self._texts.append(text)
                yield StreamDelta("answer", text)
            calls = stream.tool_calls
            if not calls:
                return
            if stream.tools is None or stream.tool_choice == "none":
                # The model was told to answer now and called tools anyway.
                if self.text.strip():
                    return
                raise ToolStepsExhausted(detail=f"{len(calls)} calls after {rounds} rounds")
            rounds += 1
            await self._round(stream, calls)
            final = rounds >= self.config.max_steps
            stream = await self.open_stream(self.messages, self.specs, "none" if final else None)

    async def _round(self, stream: ChatStream, calls: list[ToolCall]) -> None:
        """Run one round of calls and append the call and its results to the messages."""
        for call in calls:  # ids a server left out (or reused) must differ in one history
            if call.id in self._ids:
                call.id = f"{call.id}_{len(self._ids)}"
            self._ids.add(call.id)
        steps = [ToolStep(c.name or "?", shown_args(c.arguments)) for c in calls]
        self.steps.extend(steps)
        self._show()
        room = max(self.context_left - self._added, 0) * CHARS_PER_TOKEN // max(len(calls), 1)
        max_chars = max(min(self.config.max_result_chars, room), 200)
        results = await asyncio.gather(
            *(self._one(c, i, max_chars) for i, c in enumerate(calls)), return_exceptions=True
        )
        echoed: list[dict[str, Any]] = []
        replies: list[dict[str, Any]] = []
        for call, step, result in zip(calls, steps, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                log.error("tool call %s crashed", call.name, exc_info=result)
                result = ToolResult("Error: the tool call failed.", ok=False, note="failed")
            step.state, step.note = ("ok" if result.ok else "error"), result.note
            if self.metrics is not None:
                self.metrics.tool_call(result.ok)
            part = call.as_message_part()
            try:
                call.parsed_arguments()
            except ValueError:
                part["function"]["arguments"] = "{}"  # servers may reject invalid JSON here
            echoed.append(part)
            replies.append({"role": "tool", "tool_call_id": call.id, "content": result.text})
            self.used.append(UsedTool(call.name, call.arguments, result.ok, result.text))
        self._show()
        assistant = {"role": "assistant", "content": stream.text or None, "tool_calls": echoed}
        self.messages += [assistant, *replies]
        self._added += self.counter.count(json.dumps(echoed)) + sum(
            self.counter.count_message(m) for m in [assistant, *replies]
        )
        log.debug(
            "tool round: %s",
            ", ".join(
                f"{c.name}={'ok' if s.state == 'ok' else 'error'}"
                for c, s in zip(calls, steps, strict=True)
            ),
        )

    async def _one(self, call: ToolCall, position: int, max_chars: int) -> ToolResult:
        if position >= MAX_CALLS_PER_STEP:
            return ToolResult(
                f"Error: at most {MAX_CALLS_PER_STEP} tool calls run at once; call this again.",
                ok=False,
                note="too many calls at once",
            )
        tool = self.tools.get(call.name)
        if tool is None:
            names = ", ".join(self.tools) or "none"
            return ToolResult(
                f"Error: there is no tool called {call.name!r}. Available tools: {names}.",
                ok=False,
                note="unknown tool",
            )
        try:
            arguments = call.parsed_arguments()
        except ValueError as exc:
            return ToolResult(
                f"Error: {exc}. Call {call.name} again with a JSON object as arguments.",
                ok=False,
                note="malformed arguments",
            )
        return await self.manager.call(tool, arguments, max_chars)

    def _show(self) -> None:
        if self.on_steps is None:
            return
        try:
            self.on_steps([ToolStep(s.name, s.args, s.state, s.note) for s in self.steps])
        except Exception:
            log.exception("tool step observer failed")

    def history_note(self, keep_results: bool) -> str | None:
        """What the stored answer remembers of the tools: names and arguments, and with
        `keep_results` their (capped) results too."""
        if not self.used:
            return None
        if not keep_results:
            calls = "; ".join(
                f"{u.name}({shown_args(u.arguments)}){'' if u.ok else ' failed'}" for u in self.used
            )
            return f"[tools used: {calls}]"
        return "\n".join(
            f"[tool {u.name}({shown_args(u.arguments)}) returned: "
            f"{cap(u.result, self.config.max_result_chars)}]"
            for u in self.used
        )
