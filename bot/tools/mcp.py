"""MCP tool servers: started with the bot, kept up, called with a time-out.

Why one task per server: the official SDK's transports and `ClientSession` are anyio
context managers that must be entered and left in the same task, so each configured
server gets a long-lived task that opens the transport and session, publishes the
server's tools, then watches the connection (a crashed process, a failed ping or a call
that saw the connection close) and reconnects with exponential backoff. Calls from any
reply task go through the published session.

Tool results are untrusted text: they are only ever handed to the model as `tool`
messages. Nothing here logs arguments or results above DEBUG, and a stdio server's
stderr is read line by line into the DEBUG log through the bot's redacting log handler,
so secrets in its `env` never reach the logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from bot.config import MCPConfig, MCPServerConfig

log = logging.getLogger(__name__)

# Reconnect delays after a server stopped: first, then doubled up to the cap; a server
# that stayed up this long starts again at the first delay.
BACKOFF_FIRST_S = 1.0
BACKOFF_CAP_S = 60.0
STABLE_AFTER_S = 60.0
# How long start-up waits for the servers' first connection before the bot goes on
# (servers still starting join later), and the time-out of the MCP handshake.
START_WAIT_S = 15.0
HANDSHAKE_TIMEOUT_S = 30.0
# A ping this often notices a dead connection even when no call is running.
PING_INTERVAL_S = 15.0
PING_TIMEOUT_S = 10.0
# A call arriving while its server reconnects waits this long for it.
READY_WAIT_S = 5.0
# The SDK (pydantic, httpx, anyio: about a second of start-up) is imported inside the
# functions that need it, so a bot without `[[mcp.servers]]` never loads it.


@dataclass(frozen=True, slots=True)
class ToolInfo:
    """One tool the model can call: `name` is what the model sees (unique), `remote` the
    server's own name for it."""

    name: str
    server: str
    remote: str
    description: str
    schema: dict[str, Any]

    def spec(self) -> dict[str, Any]:
        """The OpenAI `tools` item."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.schema or {"type": "object", "properties": {}},
            },
        }


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a call gave: `text` goes to the model, `note` (short) to the person."""

    text: str
    ok: bool
    note: str = ""


class ToolFailure(Exception):
    """A call that produced no result; its text is a short reason for model and person."""


def result_text(result: Any) -> str:
    """A `CallToolResult` as plain text: text parts as they are, other parts described."""
    parts: list[str] = []
    for block in getattr(result, "content", None) or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind == "resource":
            res = block.resource
            text = getattr(res, "text", None)
            parts.append(text if isinstance(text, str) else f"[binary resource {res.uri}]")
        elif kind == "resource_link":
            parts.append(f"[resource {block.uri}]")
        else:
            parts.append(f"[{kind} content omitted]")
    if not parts and getattr(result, "structuredContent", None) is not None:
        parts.append(json.dumps(result.structuredContent, ensure_ascii=False))
    return "\n".join(parts)


class MCPServer:
    """One configured server, kept connected by its own task."""

    def __init__(self, config: MCPServerConfig, *, ping_interval: float = PING_INTERVAL_S):
        self.config = config
        self.ping_interval = ping_interval
        self.tools: list[Any] = []  # mcp.types.Tool of the current connection
        self.restarts = 0
        self.state = "starting"
        self._session: Any = None
        self._ready = asyncio.Event()
        self._lost = asyncio.Event()
        self._relist = asyncio.Event()  # the server said its tools changed
        self._stop = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.config.name

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"mcp server {self.name}")

    async def stop(self) -> None:
        """End the session; a stdio server gets its stdin closed, then SIGTERM, SIGKILL."""
        self._stop.set()
        task = self._task
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=10)
        if not done:
            task.cancel()
            await asyncio.wait({task}, timeout=5)

    async def wait_ready(self, timeout: float) -> bool:  # noqa: ASYNC109
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        return self._ready.is_set()

    async def wait_first_attempt(self) -> None:
        await self._first_attempt.wait()

    async def call(self, name: str, arguments: dict[str, Any]) -> Any:
        """Call tool `name`; ToolFailure on a time-out or a connection that broke."""
        from mcp.shared.exceptions import McpError
        from mcp.types import CONNECTION_CLOSED

        timeout = self.config.timeout_s
        if not self._ready.is_set() and not await self.wait_ready(min(timeout, READY_WAIT_S)):
            raise ToolFailure(f"the tool server `{self.name}` is not available right now")
        session = self._session
        try:
            async with asyncio.timeout(timeout):
                return await session.call_tool(name, arguments)
        except TimeoutError:
            raise ToolFailure(f"no answer within {timeout:g} s") from None
        except McpError as exc:
            if exc.error.code == CONNECTION_CLOSED:
                self._connection_lost()
                raise ToolFailure(
                    f"the tool server `{self.name}` stopped during the call"
                ) from None
            raise ToolFailure(f"the tool server refused the call: {exc.error.message}") from None
        except (RuntimeError, ValueError) as exc:
            # A result that fails its output schema, or does not parse.
            raise ToolFailure(
                f"the tool's result was not readable ({type(exc).__name__})"
            ) from None
        except Exception as exc:
            # A broken pipe to a dead process, streams closed under us: reconnect.
            self._connection_lost()
            raise ToolFailure(f"the call failed ({type(exc).__name__})") from None

    def _connection_lost(self) -> None:
        """Calls from now on wait for the reconnection instead of using the dead session."""
        self._ready.clear()
        self._lost.set()

    # --- the connection's life ----------------------------------------------------------

    async def _run(self) -> None:
        delay = BACKOFF_FIRST_S
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                await self._connect_and_serve()
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # anyio task groups raise (Base)ExceptionGroups
                if not isinstance(exc, Exception):
                    raise
                log.warning("MCP server %s failed: %s", self.name, _reason(exc), exc_info=_debug())
            finally:
                self._ready.clear()
                self._session = None
                self.state = "down"
                self._first_attempt.set()
            if self._stop.is_set():
                break
            if time.monotonic() - began > STABLE_AFTER_S:
                delay = BACKOFF_FIRST_S
            log.warning("MCP server %s is down; restarting in %.0f s", self.name, delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()
            delay = min(delay * 2, BACKOFF_CAP_S)
            self.restarts += 1
        self.state = "stopped"

    async def _connect_and_serve(self) -> None:
        from mcp import ClientSession

        self._lost.clear()
        self.state = "starting"
        async with contextlib.AsyncExitStack() as stack:
            read, write = await stack.enter_async_context(self._transport())
            session = await stack.enter_async_context(
                ClientSession(
                    read,
                    write,
                    read_timeout_seconds=timedelta(seconds=3600),
                    message_handler=self._on_message,
                )
            )
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                await session.initialize()
                listed = await session.list_tools()
            self.tools = list(listed.tools)
            self._session = session
            self.state = "ready"
            self._ready.set()
            self._first_attempt.set()
            log.info("MCP server %s ready with %d tools", self.name, len(self.tools))
            await self._watch(session)

    @contextlib.asynccontextmanager
    async def _transport(self) -> AsyncIterator[tuple[Any, Any]]:
        cfg = self.config
        if cfg.url:
            from mcp.client.streamable_http import streamable_http_client
            from mcp.shared._httpx_utils import create_mcp_http_client

            client = create_mcp_http_client(headers=dict(cfg.headers) or None)
            async with client, streamable_http_client(cfg.url, http_client=client) as streams:
                yield streams[0], streams[1]
            return
        from mcp.client.stdio import StdioServerParameters, stdio_client

        params = StdioServerParameters(command=cfg.command, args=list(cfg.args), env=dict(cfg.env))
        async with _stderr_to_log(self.name) as errlog, stdio_client(params, errlog) as streams:
            yield streams

    async def _on_message(self, message: Any) -> None:
        """Server notifications: a changed tool list is fetched again."""
        from mcp.types import ServerNotification, ToolListChangedNotification

        if isinstance(message, ServerNotification) and isinstance(
            message.root, ToolListChangedNotification
        ):
            self._relist.set()

    async def _watch(self, session: Any) -> None:
        """Return when the connection is lost (or the bot stops); keep the tools current."""
        while not self._stop.is_set():
            waits = {
                asyncio.ensure_future(self._stop.wait()),
                asyncio.ensure_future(self._lost.wait()),
                asyncio.ensure_future(self._relist.wait()),
            }
            try:
                await asyncio.wait(
                    waits, timeout=self.ping_interval, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for w in waits:
                    w.cancel()
            if self._stop.is_set():
                return
            if self._lost.is_set():
                log.warning("MCP server %s: the connection was lost", self.name)
                return
            if self._relist.is_set():
                self._relist.clear()
                try:
                    async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                        self.tools = list((await session.list_tools()).tools)
                except Exception as exc:
                    log.warning("MCP server %s: cannot list its tools: %s", self.name, _reason(exc))
                    return
                log.info("MCP server %s now has %d tools", self.name, len(self.tools))
                continue
            try:
                async with asyncio.timeout(PING_TIMEOUT_S):
                    await session.send_ping()
            except Exception as exc:
                log.warning("MCP server %s does not answer pings: %s", self.name, _reason(exc))
                return


@contextlib.asynccontextmanager
async def _stderr_to_log(name: str) -> AsyncIterator[Any]:
    """A pipe for a server's stderr, read into this module's DEBUG log line by line."""
    read_fd, write_fd = os.pipe()
    reader_file = os.fdopen(read_fd, "rb", buffering=0)
    writer_file = os.fdopen(write_fd, "w")
    loop = asyncio.get_running_loop()
    stream = asyncio.StreamReader(limit=1 << 20)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stream), reader_file
    )
    server_log = logging.getLogger(f"{__name__}.{name}")

    async def pump() -> None:
        with contextlib.suppress(Exception):
            while line := await stream.readline():
                server_log.debug("stderr: %s", line.decode("utf-8", "replace").rstrip())

    task = asyncio.create_task(pump(), name=f"mcp stderr {name}")
    try:
        yield writer_file
    finally:
        writer_file.close()  # the child holds its own copy until it exits
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await asyncio.shield(task)
        task.cancel()
        transport.close()


def _reason(exc: BaseException) -> str:
    """A short reason for logs, looking through exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _debug() -> bool:
    return log.isEnabledFor(logging.DEBUG)


class ToolManager:
    """All configured MCP servers: their tools under unique names, and calls to them."""

    def __init__(self, config: MCPConfig, *, ping_interval: float = PING_INTERVAL_S) -> None:
        self.config = config
        self.servers = {s.name: MCPServer(s, ping_interval=ping_interval) for s in config.servers}

    @property
    def configured(self) -> bool:
        return bool(self.servers)

    async def start(self, wait: float = START_WAIT_S) -> None:
        """Start every server and wait (up to `wait` s) for each one's first attempt."""
        for server in self.servers.values():
            server.start()
        if not self.servers:
            return
        firsts = [asyncio.ensure_future(s.wait_first_attempt()) for s in self.servers.values()]
        _, pending = await asyncio.wait(firsts, timeout=wait)
        for p in pending:
            p.cancel()
        slow = [s.name for s in self.servers.values() if s.state != "ready"]
        if slow:
            log.warning("MCP servers not ready yet (they keep trying): %s", ", ".join(slow))

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.servers.values()))

    def tools(self) -> list[ToolInfo]:
        """The tools the config allows of every server that connected once, under unique
        names. A server restarting keeps its tools: a call waits a moment for it."""
        out: list[ToolInfo] = []
        seen: set[str] = set()
        for server in self.servers.values():
            allowed = set(server.config.allowed_tools)
            for tool in server.tools:
                if allowed and tool.name not in allowed:
                    continue
                name = _model_name(tool.name)
                if name in seen:
                    name = _model_name(f"{server.name}_{tool.name}")
                if name in seen:
                    continue
                seen.add(name)
                out.append(
                    ToolInfo(
                        name=name,
                        server=server.name,
                        remote=tool.name,
                        description=(tool.description or "")[:1024],
                        schema=dict(tool.inputSchema or {}),
                    )
                )
        return out

    async def call(self, tool: ToolInfo, arguments: dict[str, Any], max_chars: int) -> ToolResult:
        """Run one call; every failure becomes an error result, never an exception."""
        server = self.servers[tool.server]
        try:
            result = await server.call(tool.remote, arguments)
        except ToolFailure as exc:
            return ToolResult(f"Error: {exc}", ok=False, note=str(exc))
        full = result_text(result)
        text = cap(full, max_chars)
        if getattr(result, "isError", False):
            return ToolResult(f"Error: {text}", ok=False, note="the tool reported an error")
        return ToolResult(text, ok=True, note="" if text is full else "result cut")


def cap(text: str, max_chars: int) -> str:
    """`text` cut to `max_chars` with a note saying how much was left out."""
    if len(text) <= max_chars:
        return text
    return text[:max_chars] + f"\n[… cut: the result had {len(text):,} characters]"


def _model_name(name: str) -> str:
    """A name OpenAI-style function calling accepts: [A-Za-z0-9_-], at most 64."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "_" for c in name)[:64]
