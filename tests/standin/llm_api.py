"""A real loopback HTTP server that speaks the OpenAI chat-completions streaming format.

Tests and benchmarks point the bot's LLM client at it instead of a real model:

    async with LLMStandIn() as llm:           # 127.0.0.1, free port
        llm.push(Behavior(reply="Hi there", ttft=0.2, tps=50))
        ...  LLMConfig(base_url=llm.base_url)
        llm.requests[-1].body["messages"], llm.requests[-1].chunks

Each chat request takes the next `Behavior` from a FIFO queue (or the default one) and
answers like real servers do (see /work/shared/llm-server-notes.md): a role-only first
chunk with `content: null`, content chunks, an empty delta with `finish_reason`, a usage
chunk with `choices: []` when `stream_options.include_usage` was asked for, `data: [DONE]`.
Thinking models: `Behavior(thinking=..., thinking_format=...)` sends thoughts before the
answer in each format real servers use (`reasoning_content`, `reasoning`,
`reasoning_details`, inline `<think>` tags split across chunks, closing tag only).
Faults are switches on `Behavior`: HTTP errors, hangs, dropped connections, malformed JSON,
missing [DONE] / finish_reason / usage, keep-alive comments, an error object mid-stream.

`prompt_tokens` is counted here, independently of the bot's own estimator: words and
punctuation marks of every message's content, plus 4 per message, plus 3.

Summarising requests (the bot's rolling summary: a last user message with `<summary>` and
`<messages>` blocks) are answered apart from the queue: from `push_summary(...)` behaviours,
else `summarizer`, which by default summarises deterministically (`summarize_reply`). They
are listed in `summary_requests`, not in `chat_requests`.

Run alone for benchmarks (prints its base URL as the first line of stdout; SIGTERM stops):
    python -m tests.standin.llm_api --port 0 --ttft 0.2 --tps 30 --reply-tokens 300
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import re
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

DEFAULT_MODEL = "standin-model"

# The two context-overflow shapes real servers send (OpenAI-style and llama.cpp-style).
CONTEXT_LENGTH_OPENAI = {
    "error": {
        "message": "This model's maximum context length is 8192 tokens. However, your "
        "messages resulted in 9000 tokens. Please reduce the length of the messages.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}
CONTEXT_LENGTH_LLAMACPP = {
    "error": {
        "code": 400,
        "message": "the request exceeds the available context size, try increasing it",
        "type": "exceed_context_size_error",
        "n_prompt_tokens": 9000,
        "n_ctx": 8192,
    }
}
# While waiting between chunks, how often to check that the client is still connected.
DISCONNECT_POLL_S = 0.05
STREAM_ERROR = {"error": {"message": "The server had an error while processing your request."}}

_WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "bright",
    "stars",
    "slowly",
    "drift",
    "across",
    "an",
    "endless",
    "violet",
    "sky",
    "and",
    "nobody",
    "minds",
    "at",
    "all",
]
_PIECE = re.compile(r"\s*\S+|\s+")
_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Word-ish pieces (each keeps its leading whitespace); they join back to `text`."""
    return _PIECE.findall(text)


def count_prompt_tokens(messages: Any) -> int:
    """The stand-in's own prompt count: words and punctuation + 4 per message + 3."""
    total = 3
    for msg in messages if isinstance(messages, list) else []:
        total += 4
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
            content = " ".join(
                p.get("text", "")
                for p in content
                if isinstance(p, dict) and p.get("type") == "text"
            )
        if isinstance(content, str):
            total += len(_TOKEN.findall(content))
    return total


def image_urls(body: dict[str, Any]) -> list[list[str]]:
    """The `image_url` URLs of each user message of a request (an empty list for none)."""
    found = []
    for msg in body.get("messages") or []:
        if not isinstance(msg, dict) or msg.get("role") != "user":
            continue
        content = msg.get("content")
        parts = content if isinstance(content, list) else []
        found.append(
            [
                str(p["image_url"]["url"])
                for p in parts
                if isinstance(p, dict) and p.get("type") == "image_url"
            ]
        )
    return found


def lorem(n: int) -> str:
    """Deterministic filler text of exactly `n` word tokens."""
    return " ".join(_WORDS[i % len(_WORDS)] for i in range(n))


def echo_reply(body: dict[str, Any]) -> str:
    """Default reply: "Echo: " plus the last user message's text."""
    for msg in reversed(body.get("messages") or []):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, list):
                content = " ".join(
                    p.get("text", "") for p in content if isinstance(p, dict) and "text" in p
                )
            return f"Echo: {content}"
    return "Echo: (no user message)"


def _last_user_text(body: dict[str, Any]) -> str:
    for msg in reversed(body.get("messages") or []):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            return content if isinstance(content, str) else ""
    return ""


_SUMMARY_BLOCK = re.compile(r"<summary>\n?(.*?)\n?</summary>", re.S)
_MESSAGES_BLOCK = re.compile(r"<messages>\n?(.*?)\n?</messages>", re.S)


def is_summary_request(body: Any) -> bool:
    """The bot's summarising call: its last user message holds both blocks."""
    if not isinstance(body, dict):
        return False
    text = _last_user_text(body)
    return bool(_SUMMARY_BLOCK.search(text) and _MESSAGES_BLOCK.search(text))


def summarize_reply(body: dict[str, Any]) -> str:
    """A deterministic summary: the previous summary's lines, then one "- " line per
    message folded in. The stand-in's own echo replies are left out (they only repeat)."""
    text = _last_user_text(body)
    previous, messages = _SUMMARY_BLOCK.search(text), _MESSAGES_BLOCK.search(text)
    facts = [
        line
        for line in (previous.group(1) if previous else "").splitlines()
        if line.strip() and not line.startswith("(none")
    ]
    for line in (messages.group(1) if messages else "").splitlines():
        if line.strip() and "Echo:" not in line:
            facts.append(f"- {line.strip()}")
    return "\n".join(facts) or "(nothing to remember)"


@dataclass
class Behavior:
    """How the stand-in answers one chat request. Counts `N` are content chunks sent."""

    # What to say: explicit chunks win, then `reply` (text or function of the request
    # body), then `reply_tokens` words of filler, then the echo of the last user message.
    reply: str | Callable[[dict[str, Any]], str] | None = None
    chunks: list[str] | None = None
    reply_tokens: int | None = None
    # Timing: seconds before response headers; from headers to the first content chunk;
    # content chunks per second after that (None: as fast as possible).
    headers_delay: float = 0.0
    ttft: float = 0.0
    tps: float | None = None
    # An HTTP error instead of a stream: status, body (dict -> JSON, str/bytes -> text)
    # and extra headers (also sent on successful streams).
    status: int = 200
    body: dict[str, Any] | str | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # Faults, each "after N content chunks" (0 = before the first content chunk).
    hang_after: int | None = None  # stop sending, keep the connection open
    drop_after: int | None = None  # close the TCP connection (chunked body left unfinished)
    malformed_after: int | None = None  # send a `data:` line with broken JSON, then go on
    error_after: int | None = None  # send `error_object` in the stream, then end it
    error_object: dict[str, Any] = field(default_factory=lambda: dict(STREAM_ERROR))
    empty_body: bool = False  # HTTP 200 + SSE headers, then end with no body at all
    send_done: bool = True  # `data: [DONE]` at the end
    finish_reason: str | None = "stop"  # None: never send a finish_reason
    usage: bool = True  # False: ignore stream_options.include_usage
    usage_extra: dict[str, Any] = field(
        default_factory=lambda: {"prompt_tokens_details": {"cached_tokens": 0}}
    )
    keepalive: float | None = None  # send `: ping - <time>` comments this often while waiting
    role_chunk: bool = True  # the first chunk: {"role": "assistant", "content": null}
    model: str | None = None  # None: echo the requested model
    # Wire format details.
    line_end: str = "\n"  # "\n", "\r\n" or "\r"
    data_prefix: str = "data: "  # or "data:"
    compact_json: bool = False
    write_size: int | None = None  # split every event into writes of this many bytes
    # Thinking before the answer: the thoughts (one chunk per word), where they go
    # ("reasoning_content", "reasoning", "reasoning_details", "inline", "closing_only"),
    # their pace (chunks per second; None: as fast as possible), and `cut_in_thinking`:
    # end after the thoughts (with `finish_reason`, e.g. "length"), never answering.
    thinking: str | None = None
    thinking_format: str = "reasoning_content"
    thinking_tps: float | None = None
    cut_in_thinking: bool = False
    # Function calling: calls streamed after the text, `{"name", "arguments" (str or
    # dict), "id" (optional)}` each, their arguments cut into pieces of `tool_chunk`
    # characters (one chunk each); the finish_reason is then "tool_calls".
    tool_calls: list[dict[str, Any]] | None = None
    tool_chunk: int = 5

    @classmethod
    def error(
        cls,
        status: int,
        body: dict[str, Any] | str | bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Behavior:
        if body is None:
            body = {
                "error": {"message": f"stand-in error {status}", "type": "error", "code": status}
            }
        return cls(status=status, body=body, headers=dict(headers or {}))

    def text_for(self, body: dict[str, Any]) -> str:
        if self.chunks is not None:
            return "".join(self.chunks)
        if callable(self.reply):
            return self.reply(body)
        if self.reply is not None:
            return self.reply
        if self.reply_tokens is not None:
            return lorem(self.reply_tokens)
        return echo_reply(body)

    def pieces_for(self, body: dict[str, Any]) -> list[str]:
        only_calls = self.chunks is None and self.reply is None and self.reply_tokens is None
        if self.tool_calls and only_calls:
            return []  # only tool calls, no text
        return list(self.chunks) if self.chunks is not None else tokenize(self.text_for(body))

    def tool_call_deltas(self) -> list[dict[str, Any]]:
        """The `delta.tool_calls` of every tool-call chunk, in order."""
        out: list[dict[str, Any]] = []
        for i, call in enumerate(self.tool_calls or []):
            args = call.get("arguments", "")
            args = args if isinstance(args, str) else json.dumps(args)
            head = {"index": i, "id": call.get("id", f"call_{i}_standin"), "type": "function"}
            out.append({**head, "function": {"name": call["name"], "arguments": ""}})
            step = max(1, self.tool_chunk)
            for j in range(0, len(args), step):
                out.append({"index": i, "function": {"arguments": args[j : j + step]}})
        return out


@dataclass
class ChunkRecord:
    """One content chunk as sent: when (time.monotonic()) and the text so far."""

    t: float
    text: str


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or None
    raw: bytes
    started: float  # time.monotonic() when the request arrived
    behavior: Behavior | None = None
    status: int = 200
    chunks: list[ChunkRecord] = field(default_factory=list)
    prompt_tokens: int = 0
    thinking: str = ""  # the thoughts sent (not part of `text`)
    thinking_chunks: int = 0
    finished: float | None = None
    summary: bool = False  # a summarising request (see `is_summary_request`)
    # "complete", "error", "hang", "drop", "client_gone", "cancelled", "json", "bad_json"
    outcome: str = ""
    # time.monotonic() when the stand-in saw the client close the connection mid-answer
    # (e.g. the bot's Stop button): noticed within `DISCONNECT_POLL_S` while it waits.
    disconnected: float | None = None

    @property
    def text(self) -> str:
        return self.chunks[-1].text if self.chunks else ""


class _Stop(Exception):
    """Ends a streaming handler early (the connection is gone or was dropped on purpose)."""


class LLMStandIn:
    """The loopback server. `async with LLMStandIn() as llm:`; `llm.base_url`."""

    def __init__(
        self,
        default: Behavior | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        models: list[str] | None = None,
        record: bool = True,
    ) -> None:
        self.default = default or Behavior()
        self.host = host
        self.port = port
        self.models = list(models) if models is not None else [DEFAULT_MODEL]
        self.record = record
        self.behaviors: deque[Behavior] = deque()
        # Summarising requests: queued behaviours first, then `summarizer`.
        self.summary_behaviors: deque[Behavior] = deque()
        self.summarizer = Behavior(reply=summarize_reply)
        self.requests: list[RecordedRequest] = []
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def push(self, *behaviors: Behavior) -> None:
        """Queue behaviours for the next chat requests, in order."""
        self.behaviors.extend(behaviors)

    def push_summary(self, *behaviors: Behavior) -> None:
        """Queue behaviours for the next summarising requests, in order."""
        self.summary_behaviors.extend(behaviors)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions") and not r.summary]

    @property
    def summary_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.summary]

    async def start(self) -> LLMStandIn:
        app = web.Application(client_max_size=64 * 1024 * 1024)  # image parts are large
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock)
        await site.start()
        return self

    async def close(self) -> None:
        """Stop at once, cancelling requests still in flight (hanging ones included)."""
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await asyncio.wait_for(runner.cleanup(), timeout=5.0)

    async def __aenter__(self) -> LLMStandIn:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- handlers ------------------------------------------------------------------------

    def _track(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _new_record(self, request: web.Request, raw: bytes, body: Any) -> RecordedRequest:
        rec = RecordedRequest(
            method=request.method,
            path=request.path,
            headers=dict(request.headers),
            body=body,
            raw=raw,
            started=time.monotonic(),
        )
        if self.record:
            self.requests.append(rec)
        return rec

    async def _models(self, request: web.Request) -> web.Response:
        self._new_record(request, b"", None).outcome = "complete"
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "standin"} for m in self.models
        ]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self._track()
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        rec = self._new_record(request, raw, body)
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            rec.status, rec.outcome, rec.finished = 400, "bad_json", time.monotonic()
            return web.json_response(
                {"error": {"message": "'messages' is required", "type": "invalid_request_error"}},
                status=400,
            )
        if is_summary_request(body):
            rec.summary = True
            beh = self.summary_behaviors.popleft() if self.summary_behaviors else self.summarizer
        else:
            beh = self.behaviors.popleft() if self.behaviors else self.default
        rec.behavior = beh
        rec.prompt_tokens = count_prompt_tokens(body["messages"])
        try:
            if beh.headers_delay:
                await asyncio.sleep(beh.headers_delay)
            if beh.status != 200:
                rec.status, rec.outcome = beh.status, "error"
                return self._error_response(beh)
            if not body.get("stream"):
                rec.outcome = "json"
                return self._json_completion(beh, body, rec)
            return await _Streamer(request, beh, body, rec).run()
        except asyncio.CancelledError:
            rec.outcome = rec.outcome or "cancelled"
            raise
        finally:
            rec.finished = time.monotonic()

    @staticmethod
    def _error_response(beh: Behavior) -> web.Response:
        headers = dict(beh.headers)
        if isinstance(beh.body, dict):
            return web.json_response(beh.body, status=beh.status, headers=headers)
        data = beh.body.encode() if isinstance(beh.body, str) else (beh.body or b"")
        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        return web.Response(body=data, status=beh.status, headers=headers)

    def _json_completion(
        self, beh: Behavior, body: dict[str, Any], rec: RecordedRequest
    ) -> web.Response:
        pieces = beh.pieces_for(body)
        text = "".join(pieces)
        rec.chunks.append(ChunkRecord(time.monotonic(), text))
        result = {
            "id": "chatcmpl-standin",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": beh.model or body.get("model") or DEFAULT_MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": beh.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": rec.prompt_tokens,
                "completion_tokens": len(pieces),
                "total_tokens": rec.prompt_tokens + len(pieces),
            },
        }
        return web.json_response(result, headers=beh.headers)


class _Streamer:
    """Writes one SSE answer according to a Behavior."""

    def __init__(
        self, request: web.Request, beh: Behavior, body: dict[str, Any], rec: RecordedRequest
    ) -> None:
        self.request = request
        self.beh = beh
        self.body = body
        self.rec = rec
        self.model = beh.model or body.get("model") or DEFAULT_MODEL
        self.created = int(time.time())
        self.resp = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                **beh.headers,
            },
        )
        opts = body.get("stream_options")
        self.include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))

    async def run(self) -> web.StreamResponse:
        beh, rec = self.beh, self.rec
        await self.resp.prepare(self.request)
        try:
            if beh.empty_body:
                rec.outcome = "complete"
                await self.resp.write_eof()
                return self.resp
            if beh.role_chunk:
                await self._chunk({"role": "assistant", "content": None})
            pieces = beh.pieces_for(self.body)
            text = ""
            # Chunk i is due at ttft + i/tps after the headers: an absolute schedule, so
            # the pace does not drift with write overhead.
            first_due = asyncio.get_running_loop().time() + beh.ttft
            if beh.thinking is not None:
                first_due = await self._think(first_due)
                if beh.cut_in_thinking:
                    pieces = []
            for i in range(len(pieces) + 1):
                if await self._faults(i):
                    return self.resp
                if i == len(pieces):
                    break
                await self._wait_until(first_due + (i / beh.tps if beh.tps else 0.0))
                await self._chunk({"content": pieces[i]})
                text += pieces[i]
                rec.chunks.append(ChunkRecord(time.monotonic(), text))
            if not pieces:
                await self._wait_until(first_due)
            tool_deltas = beh.tool_call_deltas()
            for part in tool_deltas:
                await self._chunk({"tool_calls": [part]})
            if beh.finish_reason is not None:
                finish = "tool_calls" if tool_deltas and beh.finish_reason == "stop" else None
                await self._chunk({}, finish_reason=finish or beh.finish_reason)
            if self.include_usage and beh.usage:
                n = len(rec.chunks) + rec.thinking_chunks + len(tool_deltas)
                usage = {
                    "prompt_tokens": rec.prompt_tokens,
                    "completion_tokens": n,
                    "total_tokens": rec.prompt_tokens + n,
                    **beh.usage_extra,
                }
                if rec.thinking_chunks:
                    usage["completion_tokens_details"] = {"reasoning_tokens": rec.thinking_chunks}
                await self._event({**self._base(), "choices": [], "usage": usage})
            if beh.send_done:
                await self._send(f"{beh.data_prefix}[DONE]{beh.line_end}{beh.line_end}")
            await self.resp.write_eof()
            rec.outcome = "complete"
        except (_Stop, ConnectionError):
            if not rec.outcome or rec.outcome == "hang":
                rec.outcome = "client_gone"
                rec.disconnected = time.monotonic()
        return self.resp

    async def _think(self, first_due: float) -> float:
        """Send the thoughts in the behaviour's format; returns when the answer is due."""
        beh, rec = self.beh, self.rec
        assert beh.thinking is not None
        words = tokenize(beh.thinking)
        fmt = beh.thinking_format
        before: list[str] = []
        after: list[str] = []
        if fmt == "inline":
            before, after = ["<thi", "nk>\n"], ["\n</th", "ink>\n\n"]
        elif fmt == "closing_only":
            after = ["\n</think>\n\n"]
        elif fmt not in ("reasoning_content", "reasoning", "reasoning_details"):
            raise ValueError(f"unknown thinking_format {fmt!r}")
        if beh.cut_in_thinking:
            after = []
        tps = beh.thinking_tps or beh.tps
        loop = asyncio.get_running_loop()
        for tag in before:
            await self._chunk({"content": tag})
        for i, word in enumerate(words):
            await self._wait_until(first_due + (i / tps if tps else 0.0))
            if fmt == "reasoning_content":
                await self._chunk({"reasoning_content": word})
            elif fmt == "reasoning":
                await self._chunk({"role": "assistant", "content": "", "reasoning": word})
            elif fmt == "reasoning_details":
                detail = {"type": "reasoning.text", "text": word, "format": "unknown", "index": 0}
                await self._chunk(
                    {
                        "role": "assistant",
                        "content": "",
                        "reasoning": word,
                        "reasoning_details": [detail],
                    }
                )
            else:
                await self._chunk({"content": word})
            rec.thinking += word
            rec.thinking_chunks += 1
        for tag in after:
            await self._chunk({"content": tag})
        return loop.time()

    async def _faults(self, i: int) -> bool:
        """Apply the faults due after `i` content chunks; True if the answer ends here."""
        beh, rec = self.beh, self.rec
        if beh.malformed_after == i:
            broken = '{"choices": [{"delta": {"content": "x'
            await self._send(beh.data_prefix + broken + beh.line_end * 2)
        if beh.error_after == i:
            await self._event(beh.error_object)
            await self.resp.write_eof()
            rec.outcome = "complete"
            return True
        if beh.drop_after == i:
            rec.outcome = "drop"
            transport = self.request.transport
            if transport is not None:
                transport.close()
            raise _Stop
        if beh.hang_after == i:
            rec.outcome = "hang"
            await self._wait_until(None)
        return False

    def _base(self) -> dict[str, Any]:
        return {
            "id": "chatcmpl-standin",
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
        }

    async def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> None:
        obj = self._base()
        obj["choices"] = [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        ]
        if self.include_usage and self.beh.usage:
            obj["usage"] = None  # OpenAI sends usage: null on every chunk but the last
        await self._event(obj)

    async def _event(self, obj: dict[str, Any]) -> None:
        beh = self.beh
        sep = (",", ":") if beh.compact_json else (", ", ": ")
        payload = json.dumps(obj, separators=sep, ensure_ascii=False)
        await self._send(f"{beh.data_prefix}{payload}{beh.line_end}{beh.line_end}")

    async def _send(self, text: str) -> None:
        data = text.encode()
        size = self.beh.write_size
        transport = self.request.transport
        if transport is None or transport.is_closing():
            raise _Stop
        if not size:
            await self.resp.write(data)
            return
        for i in range(0, len(data), size):
            await self.resp.write(data[i : i + size])

    async def _wait_until(self, end: float | None) -> None:
        """Sleep to loop time `end` (None: forever), sending keep-alive comments if asked."""
        interval = self.beh.keepalive
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + interval if interval else math.inf
        while end is None or loop.time() < end:
            step = min(next_ping, end if end is not None else math.inf) - loop.time()
            await asyncio.sleep(max(min(step, DISCONNECT_POLL_S), 0.0))
            transport = self.request.transport
            if transport is None or transport.is_closing():
                raise _Stop  # the client went away while we waited
            if loop.time() < next_ping:
                continue
            next_ping = loop.time() + (interval or math.inf)
            if interval and (end is None or loop.time() < end):
                stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
                await self._send(f": ping - {stamp}{self.beh.line_end}{self.beh.line_end}")


# --- command line (benchmarks) ----------------------------------------------------------


async def _serve(args: argparse.Namespace) -> None:
    default = Behavior(
        reply=args.reply,
        reply_tokens=args.reply_tokens,
        ttft=args.ttft,
        tps=args.tps or None,
        keepalive=args.keepalive,
    )
    await serve_until_signalled(LLMStandIn(default, host=args.host, port=args.port, record=False))


async def serve_until_signalled(llm: LLMStandIn) -> None:
    """Start `llm`, print its base URL on stdout, serve until SIGTERM/SIGINT, then close."""
    await llm.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    print(llm.base_url, flush=True)
    try:
        await stop.wait()
    finally:
        await llm.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="OpenAI-compatible stand-in LLM server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ttft", type=float, default=0.0, help="seconds to the first token")
    parser.add_argument("--tps", type=float, default=0.0, help="tokens per second (0: no limit)")
    parser.add_argument("--reply-tokens", type=int, default=None, help="filler reply length")
    parser.add_argument("--reply", default=None, help="fixed reply text")
    parser.add_argument("--keepalive", type=float, default=None, help="ping comment interval")
    args = parser.parse_args(argv)
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
