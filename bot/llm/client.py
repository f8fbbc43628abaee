"""OpenAI-compatible streaming chat client.

Usage::

    async with client.stream(messages) as s:
        async for delta in s:       # non-empty answer pieces, as they arrive
            ...
    s.finish_reason, s.usage, s.text, s.thinking, s.model

    (or `async for d in s.deltas()` for typed `StreamDelta`s: thinking and answer)

Why this shape:
- `__aenter__` sends the request and waits for the first delta (thinking or answer), so
  every failure before the model starts (HTTP errors, retries, the first-token timeout)
  is raised there; afterwards only mid-stream failures (idle/total timeout, cut-off, a
  protocol error) come out of the iteration, with `s.text` still holding what arrived.
- Retries happen only before the first token, so a person never sees text repeated.
- Thinking is separated from the answer here (`bot.llm.thinking`), whatever the server's
  format, and counts as the model being alive for the time-outs.
- One absolute deadline per phase, checked around every await (no timer task per token).
- The API key lives only in the request headers: it is redacted from every error text
  and never logged. Prompt and reply text are never logged at INFO or above.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import random
import re
import time
from collections.abc import AsyncGenerator, Mapping
from types import TracebackType
from typing import Any

import aiohttp

from bot.config import LLMConfig
from bot.errors import (
    LLMAuthError,
    LLMBadRequest,
    LLMContextTooLong,
    LLMCutOff,
    LLMError,
    LLMModelNotFound,
    LLMProtocolError,
    LLMRateLimited,
    LLMServerError,
    LLMTimeout,
    LLMUnreachable,
)
from bot.llm.sse import (
    ChatChunkParser,
    ChatEvent,
    Done,
    Finish,
    Malformed,
    ModelName,
    ReasoningDelta,
    StreamError,
    TextDelta,
    ToolCallDelta,
    Usage,
    parse_payload,
)
from bot.llm.thinking import StreamDelta, ThinkingSplitter
from bot.llm.toolcalls import ToolCall, ToolCallAccumulator

__all__ = ["ChatStream", "LLMClient", "StreamDelta", "Usage", "classify_http_error"]

log = logging.getLogger(__name__)

# An error body is read up to this size (a server could send a huge HTML page).
_MAX_ERROR_BODY = 64 * 1024
_MAX_JSON_BODY = 16 * 1024 * 1024
# After finish_reason, how long to wait for the usage chunk / [DONE] / EOF.
_AFTER_FINISH_WAIT = 2.0

_CONTEXT_RE = re.compile(
    r"context[ _-]?(length|window|size|overflow)|maximum context|exceed_context"
    r"|prompt is too long|too many tokens",
    re.IGNORECASE,
)


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_fields(body: str) -> tuple[str, str | None, str | None]:
    """(message, code, type) from an error body, JSON or plain text, never raising."""
    try:
        obj = json.loads(body)
    except ValueError:
        return body.strip(), None, None
    err = obj.get("error", obj) if isinstance(obj, dict) else obj
    if isinstance(err, str):
        return err, None, None
    if not isinstance(err, dict):
        return body.strip(), None, None
    message = err.get("message") or err.get("detail")
    if not isinstance(message, str):
        message = json.dumps(message) if message else body.strip()
    code, etype = err.get("code"), err.get("type")
    return message, None if code is None else str(code), None if etype is None else str(etype)


def is_context_error(message: str, code: str | None = None, etype: str | None = None) -> bool:
    """Whether an error says the prompt does not fit the model's context window."""
    return (
        code == "context_length_exceeded"
        or etype == "exceed_context_size_error"
        or bool(_CONTEXT_RE.search(message))
    )


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from `Retry-After` (seconds or HTTP date) or `retry-after-ms`; None if absent."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def classify_http_error(
    status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> LLMError:
    """Map a non-2xx answer to the typed error a person should see."""
    text = body.decode("utf-8", "replace")
    message, code, etype = _error_fields(text)
    detail = f"HTTP {status}: {_short(message)}" if message else f"HTTP {status} with an empty body"
    if status in (401, 403):
        return LLMAuthError(detail=detail)
    if status == 429:
        return LLMRateLimited(parse_retry_after(headers or {}), detail=detail)
    if (status in (400, 413, 422) or status >= 500) and is_context_error(message, code, etype):
        return LLMContextTooLong(detail=detail)
    if status == 404:
        return LLMModelNotFound(detail=detail)
    if status >= 500:
        return LLMServerError(detail=detail)
    if 300 <= status < 400:
        return LLMBadRequest(detail=f"HTTP {status} redirect: check llm.base_url")
    return LLMBadRequest(detail=detail)


def _is_retryable(err: LLMError) -> bool:
    return isinstance(err, LLMUnreachable | LLMRateLimited | LLMServerError | LLMCutOff)


# After the first token, let the socket gather chunks for this long between reads.
# Why: servers send every token in its own write, and waking the process per token costs
# far more CPU (a few hundred microseconds) than handling the text; Discord shows new text
# at most once per `edit_interval` (1 s), so reading in 0.1 s batches costs no visible
# latency worth the name and cuts the bot's CPU per streamed token several-fold.
READ_BATCH_S = 0.1


class LLMClient:
    """Talks to one OpenAI-compatible server. The aiohttp session belongs to the caller."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: LLMConfig,
        *,
        backoff_base: float = 0.5,
        backoff_cap: float = 8.0,
        retry_after_cap: float = 30.0,
        read_batch_s: float = READ_BATCH_S,
    ) -> None:
        self.session = session
        self.read_batch_s = read_batch_s
        self.config = config
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.retry_after_cap = retry_after_cap
        base = config.base_url.rstrip("/")
        self._chat_url = f"{base}/chat/completions"
        self._models_url = f"{base}/models"
        headers: dict[str, str] = {}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        headers.update(config.extra_headers)
        self._headers = headers
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=config.connect_timeout, sock_read=None
        )
        # Cleared once if the server rejects `stream_options` (some strict servers do).
        self._send_stream_options = True
        # Set once the model showed that its output starts inside a thinking block
        # (`llm.thinking_starts_open`), so only its first such reply shows thoughts.
        self.learned_starts_open = False

    def __repr__(self) -> str:
        return f"LLMClient(base_url={self.config.base_url!r}, model={self.config.model!r})"

    def stream(
        self,
        messages: list[dict[str, Any]],
        *,
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | None = None,
    ) -> ChatStream:
        """A streamed chat completion; use as `async with client.stream(m) as s`.

        With `tools` (OpenAI function specs) the model may answer with `s.tool_calls`.
        """
        stream = ChatStream(self, messages)
        stream.tools, stream.tool_choice = tools, tool_choice
        return stream

    def payload(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        tool_choice: str | None = None,
    ) -> dict[str, Any]:
        """The JSON body for one streamed chat request."""
        cfg = self.config
        body: dict[str, Any] = {
            "model": cfg.model,
            "messages": messages,
            "temperature": cfg.temperature,
            "max_tokens": cfg.max_tokens,
            "stream": True,
        }
        if self._send_stream_options:
            body["stream_options"] = {"include_usage": True}
        if tools:
            body["tools"] = tools
            if tool_choice:
                body["tool_choice"] = tool_choice
        body.update(cfg.extra_body)
        return body

    async def list_models(self) -> list[str]:
        """Model ids from `GET {base_url}/models` (a cheap health check)."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        budget = min(cfg.total_timeout, cfg.connect_timeout + cfg.first_token_timeout)
        deadline = loop.time() + budget
        resp = await self._request("GET", self._models_url, None, deadline, "total")
        try:
            body = await self._read_body(resp, deadline, "total", _MAX_JSON_BODY)
        finally:
            resp.release()
        if resp.status != 200:
            raise self._redacted(classify_http_error(resp.status, body, resp.headers))
        try:
            obj = json.loads(body)
        except ValueError as exc:
            raise LLMProtocolError(detail="GET /models did not return JSON") from exc
        items = obj.get("data", obj.get("models")) if isinstance(obj, dict) else obj
        names: list[str] = []
        for item in items if isinstance(items, list) else []:
            if isinstance(item, str):
                names.append(item)
            elif isinstance(item, dict):
                name = item.get("id") or item.get("name") or item.get("model")
                if isinstance(name, str):
                    names.append(name)
        return names

    # --- plumbing shared by the stream and list_models -----------------------------------

    def redact(self, text: str) -> str:
        key = self.config.api_key
        return text.replace(key, "***") if key and key in text else text

    def _redacted(self, err: LLMError) -> LLMError:
        if err.detail and self.config.api_key and self.config.api_key in err.detail:
            err.detail = self.redact(err.detail)
            err.args = (err.detail,)
        return err

    async def _request(
        self,
        method: str,
        url: str,
        body: dict[str, Any] | None,
        deadline: float,
        phase: str,
    ) -> aiohttp.ClientResponse:
        """Send one request and return the response once its headers arrived."""
        try:
            async with asyncio.timeout_at(deadline):
                return await self.session.request(
                    method,
                    url,
                    json=body,
                    headers=self._headers,
                    timeout=self._timeout,
                    allow_redirects=False,
                    raise_for_status=False,
                )
        except aiohttp.ServerTimeoutError as exc:  # before TimeoutError: it subclasses it
            raise LLMTimeout(
                "connect", detail=f"no connection within {self.config.connect_timeout:g} s"
            ) from exc
        except TimeoutError:
            raise LLMTimeout(phase, detail=f"no response headers in time ({phase})") from None
        except aiohttp.ClientConnectorError as exc:
            raise self._redacted(LLMUnreachable(detail=f"cannot connect: {exc}")) from exc
        except aiohttp.ClientError as exc:
            raise self._redacted(
                LLMUnreachable(detail=f"connection failed before a response: {exc!r}")
            ) from exc

    async def _read_body(
        self, resp: aiohttp.ClientResponse, deadline: float, phase: str, limit: int
    ) -> bytes:
        """Read a whole (bounded) body before `deadline`; a broken body is returned as is."""
        parts: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout_at(deadline):
                while size < limit:
                    data = await resp.content.readany()
                    if not data:
                        break
                    parts.append(data)
                    size += len(data)
        except TimeoutError:
            raise LLMTimeout(phase, detail="the response body did not arrive in time") from None
        except aiohttp.ClientError:
            pass
        return b"".join(parts)[:limit]


class ChatStream:
    """One streamed chat completion. Results are on the object after the loop."""

    def __init__(self, client: LLMClient, messages: list[dict[str, Any]]) -> None:
        self._client = client
        self._messages = messages
        self._splitter = ThinkingSplitter()
        self._alive = False  # any thinking or answer arrived (ends the first-token phase)
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.model: str = client.config.model
        self.attempts = 0
        # Seconds from the start of the call to the first delta, and to the end.
        self.first_token_s: float | None = None
        self.duration_s: float | None = None
        self._gen: AsyncGenerator[StreamDelta, None] | None = None
        self._pending: StreamDelta | None = None
        self._start = 0.0
        self._total_deadline = 0.0
        self._retry_hint: float | None = None
        self._status: int | None = None  # HTTP status of the last failed attempt, for logs
        # Function calling: what is offered, and the calls the model made (none: no calls).
        self.tools: list[dict[str, Any]] | None = None
        self.tool_choice: str | None = None
        self._tool_calls = ToolCallAccumulator()

    @property
    def tool_calls(self) -> list[ToolCall]:
        """The tool calls the model streamed (complete once the stream finished)."""
        return self._tool_calls.calls

    @property
    def text(self) -> str:
        """All answer text received so far (also after a cut-off); never thinking."""
        return _joined(self._splitter.answer_parts)

    @property
    def thinking(self) -> str:
        """All thinking received so far (kept apart from the answer)."""
        return _joined(self._splitter.thinking_parts)

    def __repr__(self) -> str:
        return (
            f"<ChatStream model={self.model!r} finish_reason={self.finish_reason!r} "
            f"chars={len(self.text)} usage={self.usage!r}>"
        )

    async def __aenter__(self) -> ChatStream:
        if self._gen is not None:
            raise RuntimeError("a ChatStream can be used only once")
        self._gen = self._run()
        try:
            self._pending = await self._gen.__anext__()
        except StopAsyncIteration:
            self._pending = None
        except BaseException:
            await self._gen.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._gen is not None:
            await self._gen.aclose()

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> str:
        while True:
            delta = await self._next_delta()
            if not delta.thinking:
                return delta.text

    async def deltas(self) -> AsyncGenerator[StreamDelta, None]:
        """Typed deltas, thinking and answer, as they arrive (instead of `async for`)."""
        while True:
            try:
                delta = await self._next_delta()
            except StopAsyncIteration:
                return
            yield delta

    async def _next_delta(self) -> StreamDelta:
        if self._gen is None:
            raise RuntimeError("use `async with client.stream(messages) as s:` first")
        if self._pending is not None:
            delta, self._pending = self._pending, None
            return delta
        return await self._gen.__anext__()

    # --- the call --------------------------------------------------------------------------

    async def _run(self) -> AsyncGenerator[StreamDelta, None]:
        client, cfg = self._client, self._client.config
        loop = asyncio.get_running_loop()
        self._start = loop.time()
        self._total_deadline = self._start + cfg.total_timeout
        retries = 0
        log.debug("LLM request: model=%s messages=%d", cfg.model, len(self._messages))
        while True:
            self.attempts += 1
            self._retry_hint = None
            self._status = None
            # Retries happen only before any text, so nothing from a failed attempt stays.
            self.finish_reason, self.usage, self.model = None, None, cfg.model
            self._splitter = ThinkingSplitter(
                starts_open=cfg.thinking_starts_open or client.learned_starts_open
            )
            self._tool_calls.clear()
            try:
                async with contextlib.aclosing(self._attempt(loop)) as deltas:
                    async for delta in deltas:
                        yield delta
                break
            except LLMError as err:
                client._redacted(err)
                if (
                    isinstance(err, LLMBadRequest)
                    and client._send_stream_options
                    and "stream_options" in (err.detail or "")
                ):
                    client._send_stream_options = False
                    log.warning("The LLM server rejects stream_options; retrying without it")
                    continue
                if not _is_retryable(err) or self._alive or retries >= cfg.max_retries:
                    log.info(
                        "LLM call failed: %s%s after %d attempt(s) in %.2f s",
                        err.kind,
                        "" if self._status is None else f" (HTTP {self._status})",
                        self.attempts,
                        loop.time() - self._start,
                    )
                    log.debug("LLM failure detail: %s", err.detail)
                    raise
                retries += 1
                delay = self._backoff(retries, err)
                if delay is None or loop.time() + delay >= self._total_deadline:
                    log.info("LLM call failed: %s; the wait before a retry is too long", err.kind)
                    raise
                # Server texts stay at DEBUG: an error body may quote the request.
                log.warning(
                    "LLM call failed (%s%s); retry %d of %d in %.2f s",
                    err.kind,
                    "" if self._status is None else f", HTTP {self._status}",
                    retries,
                    cfg.max_retries,
                    delay,
                )
                log.debug("LLM failure detail: %s", err.detail)
                await asyncio.sleep(delay)
        self.duration_s = loop.time() - self._start
        log.debug(
            "LLM reply: model=%s finish=%s attempts=%d first_token=%s s duration=%.3f s "
            "chars=%d thinking_chars=%d usage=%s",
            self.model,
            self.finish_reason,
            self.attempts,
            None if self.first_token_s is None else round(self.first_token_s, 3),
            self.duration_s,
            len(self.text),
            len(self.thinking),
            self.usage,
        )

    def _backoff(self, retry: int, err: LLMError) -> float | None:
        """Seconds to wait before retry number `retry`; None if the server asks for too long."""
        client = self._client
        hint = err.retry_after if isinstance(err, LLMRateLimited) else self._retry_hint
        if hint is not None:
            if hint > client.retry_after_cap:
                return None
            return hint + random.uniform(0, 0.1)
        delay = min(client.backoff_cap, client.backoff_base * 2 ** (retry - 1))
        return delay * random.uniform(0.5, 1.0)

    def _limit(self, deadline: float, phase: str) -> tuple[float, str]:
        """The earlier of a phase deadline and the total deadline, with its phase name."""
        if deadline < self._total_deadline:
            return deadline, phase
        return self._total_deadline, "total"

    async def _attempt(self, loop: asyncio.AbstractEventLoop) -> AsyncGenerator[StreamDelta, None]:
        client, cfg = self._client, self._client.config
        first_deadline, first_phase = self._limit(
            loop.time() + cfg.first_token_timeout, "first_token"
        )
        resp = await client._request(
            "POST",
            client._chat_url,
            client.payload(self._messages, self.tools, self.tool_choice),
            first_deadline,
            first_phase,
        )
        try:
            if not 200 <= resp.status < 300:
                body = await client._read_body(resp, first_deadline, first_phase, _MAX_ERROR_BODY)
                self._status = resp.status
                if resp.status in (429, 503):
                    self._retry_hint = parse_retry_after(resp.headers)
                raise classify_http_error(resp.status, body, resp.headers)
            if resp.content_type == "text/html":
                raise LLMProtocolError(
                    detail="the server answered with an HTML page; check llm.base_url"
                )
            # A server that ignores `stream: true` answers with one JSON completion.
            whole_json = resp.content_type == "application/json"
            parser = ChatChunkParser()
            done = False
            while not done:
                if self.finish_reason is not None:
                    wait = min(cfg.idle_timeout, _AFTER_FINISH_WAIT)
                    deadline, phase = self._limit(loop.time() + wait, "idle")
                elif self._alive:
                    deadline, phase = self._limit(loop.time() + cfg.idle_timeout, "idle")
                else:
                    deadline, phase = first_deadline, first_phase
                try:
                    if whole_json:
                        body = await client._read_body(resp, deadline, phase, _MAX_JSON_BODY)
                        events: list[ChatEvent] = parse_payload(body.decode("utf-8", "replace"))
                        done = True
                    else:
                        if self._alive and client.read_batch_s > 0:
                            await _gather_chunks(resp, client.read_batch_s, deadline)
                        async with asyncio.timeout_at(deadline):
                            data = await resp.content.readany()
                        events = parser.feed(data) if data else parser.close()
                        done = not data
                except (TimeoutError, LLMTimeout):
                    if self.finish_reason is not None and phase == "idle":
                        break  # complete; the server just never closed the stream
                    raise LLMTimeout(phase, detail=self._timeout_detail(phase)) from None
                except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
                    if self.finish_reason is not None:
                        break
                    raise LLMCutOff(
                        detail=f"connection lost mid-stream ({type(exc).__name__}) "
                        f"after {len(self.text)} characters"
                    ) from exc
                batch: list[StreamDelta] = []
                failure: LLMError | None = None
                splitter = self._splitter
                for ev in events:
                    if isinstance(ev, TextDelta | ReasoningDelta):
                        if not self._alive:
                            self._alive = True
                            self.first_token_s = loop.time() - self._start
                        if isinstance(ev, TextDelta):
                            _merge(batch, splitter.content(ev.text))
                        else:
                            _merge(batch, splitter.reasoning(ev.text))
                    elif isinstance(ev, ToolCallDelta):
                        if not self._alive:
                            self._alive = True
                            self.first_token_s = loop.time() - self._start
                        self._tool_calls.add(ev)
                    elif isinstance(ev, Finish):
                        self.finish_reason = ev.reason
                    elif isinstance(ev, Usage):
                        self.usage = ev
                    elif isinstance(ev, ModelName):
                        self.model = ev.name
                    elif isinstance(ev, Done):
                        done = True
                        break
                    elif isinstance(ev, StreamError):
                        failure = self._stream_error(ev)
                        break
                    elif isinstance(ev, Malformed):
                        failure = LLMProtocolError(detail=ev.detail)
                        break
                # All text of one read goes up as one delta per kind: one trip through
                # the layers above per read instead of per token.
                for delta in batch:
                    yield delta
                if failure is not None:
                    raise failure
            for delta in self._splitter.close(self.finish_reason):
                yield delta
            if self._splitter.bare_close and not client.learned_starts_open:
                client.learned_starts_open = True
                log.warning(
                    "The model sent </think> without <think>: its replies start inside a "
                    "thinking block, and are read so from now on. Set "
                    "llm.thinking_starts_open = true to have that from the start."
                )
            if self.finish_reason is None:
                raise LLMCutOff(
                    detail=f"the stream ended without a finish_reason after "
                    f"{len(self.text)} characters"
                )
        finally:
            resp.release()

    def _timeout_detail(self, phase: str) -> str:
        cfg = self._client.config
        seconds = {
            "first_token": cfg.first_token_timeout,
            "idle": cfg.idle_timeout,
            "total": cfg.total_timeout,
        }.get(phase)
        return f"{phase} timeout ({seconds:g} s) after {len(self.text)} characters"

    @staticmethod
    def _stream_error(ev: StreamError) -> LLMError:
        detail = f"error inside the stream: {_short(ev.message)}"
        if ev.code:
            detail += f" (code {ev.code})"
        if is_context_error(ev.message, ev.code, ev.type):
            return LLMContextTooLong(detail=detail)
        return LLMProtocolError(detail=detail)


def _joined(parts: list[str]) -> str:
    """The parts as one string, collapsed in place so repeated reads stay cheap."""
    if len(parts) > 1:
        parts[:] = ["".join(parts)]
    return parts[0] if parts else ""


def _merge(batch: list[StreamDelta], deltas: list[StreamDelta]) -> None:
    """Append `deltas`, joining neighbours of the same kind."""
    for d in deltas:
        if batch and batch[-1].kind == d.kind:
            batch[-1] = StreamDelta(d.kind, batch[-1].text + d.text)
        else:
            batch.append(d)


async def _gather_chunks(resp: aiohttp.ClientResponse, seconds: float, deadline: float) -> None:
    """Pause reading the socket for `seconds` (not past `deadline`).

    The kernel buffers what the server sends meanwhile; the next read takes it all at once.
    """
    if resp.content.is_eof():
        return
    connection = resp.connection
    transport = connection.transport if connection is not None else None
    if transport is None or transport.is_closing():
        return
    loop = asyncio.get_running_loop()
    pause = min(seconds, deadline - loop.time())
    if pause <= 0:
        return
    transport.pause_reading()
    try:
        await asyncio.sleep(pause)
    finally:
        if not transport.is_closing():
            transport.resume_reading()
