"""Gateway (websocket) half of the Discord stand-in.

discord.py keeps its own gateway state machine (HELLO, heartbeats, IDENTIFY/RESUME,
sequence numbers, compressed transport); this module plays Discord's side of it closely
enough that the real client runs unmodified, including reconnect-and-resume after a drop.
The world (guilds, users) lives in the stand-in; it is reached through ``GatewayHost``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import zlib
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import WSMsgType, web

from .discord_models import (
    ALL_KNOWN_INTENTS,
    PRIVILEGED_INTENTS,
    IdentifyRecord,
)
from .latency import Latency

log = logging.getLogger(__name__)

OP_DISPATCH = 0
OP_HEARTBEAT = 1
OP_IDENTIFY = 2
OP_PRESENCE_UPDATE = 3
OP_VOICE_STATE_UPDATE = 4
OP_RESUME = 6
OP_RECONNECT = 7
OP_REQUEST_GUILD_MEMBERS = 8
OP_INVALID_SESSION = 9
OP_HELLO = 10
OP_HEARTBEAT_ACK = 11

#: How many dispatched events a session keeps so a RESUME can replay them.
REPLAY_BUFFER = 5000

EventData = dict[str, Any] | Callable[["GatewaySession"], dict[str, Any] | None]


class GatewayHost(Protocol):
    """What the gateway needs from the stand-in that owns the world."""

    token: str

    def ready_payload(self, session: GatewaySession) -> dict[str, Any]: ...

    def guild_ids_for(self, session: GatewaySession) -> list[int]: ...

    def guild_create_payload(self, guild_id: int, session: GatewaySession) -> dict[str, Any]: ...

    def member_chunk(self, guild_id: int, request: dict[str, Any]) -> list[dict[str, Any]]: ...

    def notify_change(self) -> None: ...


class GatewayConnection:
    """One websocket.  Owns the transport compressor (one stream per connection)."""

    def __init__(self, ws: web.WebSocketResponse, compress: str | None, path: str) -> None:
        self.ws = ws
        self.compress = compress
        self.path = path
        self.opened = time.monotonic()
        self.session: GatewaySession | None = None
        self.heartbeats = 0
        self.closed = False
        self._lock = asyncio.Lock()
        self._zlib: Any = zlib.compressobj() if compress == "zlib-stream" else None
        self._zstd: Any = None
        if compress == "zstd-stream":
            import zstandard  # only when a client asks for zstd-stream

            self._zstd = zstandard.ZstdCompressor().compressobj()
            self._zstd_flush = zstandard.COMPRESSOBJ_FLUSH_BLOCK

    async def send(self, payload: dict[str, Any]) -> bool:
        """Send one gateway frame; False if the socket is already gone."""
        raw = json.dumps(payload, separators=(",", ":"))
        async with self._lock:
            if self.closed or self.ws.closed:
                return False
            try:
                if self._zlib is not None:
                    data = raw.encode()
                    frame = self._zlib.compress(data) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
                    await self.ws.send_bytes(frame)
                elif self._zstd is not None:
                    data = raw.encode()
                    frame = self._zstd.compress(data) + self._zstd.flush(self._zstd_flush)
                    await self.ws.send_bytes(frame)
                else:
                    await self.ws.send_str(raw)
            except (ConnectionError, RuntimeError):
                self.closed = True
                return False
        return True

    async def close(self, code: int) -> None:
        self.closed = True
        if not self.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.close(code=code)


@dataclass
class GatewaySession:
    """A gateway session: survives its connection so it can be RESUMEd."""

    session_id: str
    token: str
    intents: int
    shard: tuple[int, int] | None
    identify: dict[str, Any]
    seq: int = 0
    connection: GatewayConnection | None = None
    buffer: deque[tuple[int, dict[str, Any]]] = field(
        default_factory=lambda: deque(maxlen=REPLAY_BUFFER)
    )
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    ready: bool = False
    resumes: int = 0
    invalid: bool = False

    @property
    def connected(self) -> bool:
        return self.connection is not None and not self.connection.closed

    def has_intent(self, bit: int) -> bool:
        return bool(self.intents & bit)

    def wants_guild(self, guild_id: int | None) -> bool:
        """Discord's shard routing; DMs go to shard 0."""
        if self.shard is None:
            return True
        shard_id, count = self.shard
        if guild_id is None:
            return shard_id == 0
        return (guild_id >> 22) % count == shard_id

    async def _emit(self, event: str, data: dict[str, Any]) -> None:
        """Assign the next sequence number, buffer for replay, send if connected.

        Caller holds ``self.lock`` so sequence order equals wire order.
        """
        self.seq += 1
        frame = {"op": OP_DISPATCH, "s": self.seq, "t": event, "d": data}
        self.buffer.append((self.seq, frame))
        if self.connection is not None and not self.connection.closed:
            await self.connection.send(frame)


@dataclass
class SentEvent:
    """A dispatch the gateway handed to a session (connected or buffered)."""

    time: float
    session_id: str
    seq: int
    event: str


class Gateway:
    """Accepts gateway websockets and fans events out to sessions."""

    def __init__(
        self,
        host: GatewayHost,
        *,
        heartbeat_interval: float = 41.25,
        privileged_intents_allowed: bool = True,
        delays: Latency | None = None,
    ) -> None:
        self.host = host
        self.delays = delays or Latency()
        self._last_dispatch_at = 0.0
        self.heartbeat_interval = heartbeat_interval
        self.privileged_intents_allowed = privileged_intents_allowed
        self.sessions: dict[str, GatewaySession] = {}
        self.connections: set[GatewayConnection] = set()
        self.identifies: list[IdentifyRecord] = []
        self.sent: list[SentEvent] = []
        self.connection_paths: list[str] = []
        self._closing = False

    # -- websocket endpoint ------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """aiohttp handler for ``/gateway`` and the resume URL."""
        compress = request.query.get("compress") or None
        if request.query.get("encoding", "json") != "json" or compress not in (
            None,
            "zlib-stream",
            "zstd-stream",
        ):
            return web.Response(status=400, text="unsupported encoding or compression")
        ws = web.WebSocketResponse(autoping=True, heartbeat=None, timeout=2.0, max_msg_size=0)
        await ws.prepare(request)
        conn = GatewayConnection(ws, compress, request.path)
        if self._closing:
            await conn.close(1001)
            return ws
        self.connections.add(conn)
        self.connection_paths.append(request.path)
        try:
            await conn.send(
                {
                    "op": OP_HELLO,
                    "s": None,
                    "t": None,
                    "d": {"heartbeat_interval": int(self.heartbeat_interval * 1000)},
                }
            )
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    raw = msg.data if isinstance(msg.data, str) else msg.data.decode()
                    try:
                        payload = json.loads(raw)
                        op = payload["op"]
                    except (ValueError, KeyError, TypeError):
                        await conn.close(4002)  # Decode error
                        break
                    if not await self._on_frame(conn, op, payload.get("d")):
                        break
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            closed_by_client = not conn.closed
            conn.closed = True
            self.connections.discard(conn)
            session = conn.session
            if session is not None and session.connection is conn:
                session.connection = None
                # Discord ends the session when the client closes with 1000/1001.
                if closed_by_client and ws.close_code in (1000, 1001):
                    session.invalid = True
            self.host.notify_change()
        return ws

    async def _on_frame(self, conn: GatewayConnection, op: int, data: Any) -> bool:
        """Handle one client frame; False ends the connection."""
        if op == OP_HEARTBEAT:
            conn.heartbeats += 1
            await conn.send({"op": OP_HEARTBEAT_ACK, "s": None, "t": None, "d": None})
            return True
        if op == OP_IDENTIFY:
            if conn.session is not None:
                await conn.close(4005)  # Already authenticated
                return False
            return await self._identify(conn, data or {})
        if op == OP_RESUME:
            if conn.session is not None:
                await conn.close(4005)
                return False
            return await self._resume(conn, data or {})
        if conn.session is None:
            await conn.close(4003)  # Not authenticated
            return False
        if op == OP_REQUEST_GUILD_MEMBERS:
            await self._request_members(conn.session, data or {})
            return True
        if op in (OP_PRESENCE_UPDATE, OP_VOICE_STATE_UPDATE):
            return True
        await conn.close(4001)  # Unknown opcode
        return False

    async def _identify(self, conn: GatewayConnection, data: dict[str, Any]) -> bool:
        token = str(data.get("token", ""))
        token = token.removeprefix("Bot ")
        intents = data.get("intents")
        shard_raw = data.get("shard")
        shard = (int(shard_raw[0]), int(shard_raw[1])) if shard_raw else None
        session_id = secrets.token_hex(16)
        self.identifies.append(
            IdentifyRecord(time.monotonic(), OP_IDENTIFY, token, intents, shard, session_id, data)
        )
        if token != self.host.token:
            await conn.close(4004)  # Authentication failed
            return False
        if shard is not None and (shard[1] < 1 or not 0 <= shard[0] < shard[1]):
            await conn.close(4010)  # Invalid shard
            return False
        if intents is None or not isinstance(intents, int) or intents & ~ALL_KNOWN_INTENTS:
            await conn.close(4013)  # Invalid intent(s)
            return False
        if intents & PRIVILEGED_INTENTS and not self.privileged_intents_allowed:
            await conn.close(4014)  # Disallowed intent(s)
            return False
        session = GatewaySession(session_id, token, intents, shard, data)
        conn.session = session
        session.connection = conn
        async with session.lock:
            self.sessions[session_id] = session
            await session._emit("READY", self.host.ready_payload(session))
            for guild_id in self.host.guild_ids_for(session):
                await session._emit(
                    "GUILD_CREATE", self.host.guild_create_payload(guild_id, session)
                )
            session.ready = True
        self.host.notify_change()
        return True

    async def _resume(self, conn: GatewayConnection, data: dict[str, Any]) -> bool:
        token = str(data.get("token", "")).removeprefix("Bot ")
        session_id = str(data.get("session_id", ""))
        seq = data.get("seq")
        self.identifies.append(
            IdentifyRecord(time.monotonic(), OP_RESUME, token, None, None, session_id, data)
        )
        if token != self.host.token:
            await conn.close(4004)
            return False
        session = self.sessions.get(session_id)
        oldest = session.buffer[0][0] if session and session.buffer else 1
        seq_int = int(seq) if isinstance(seq, int) else 0
        if session is None or session.invalid or seq_int < oldest - 1 or seq_int > session.seq:
            await conn.send({"op": OP_INVALID_SESSION, "s": None, "t": None, "d": False})
            return True  # the client closes the socket itself
        async with session.lock:
            previous = session.connection
            if previous is not None and previous is not conn:
                await previous.close(4000)
            conn.session = session
            session.connection = conn
            session.resumes += 1
            for frame_seq, frame in list(session.buffer):
                if frame_seq > seq_int:
                    await conn.send(frame)
            await session._emit("RESUMED", {})
        self.host.notify_change()
        return True

    async def _request_members(self, session: GatewaySession, data: dict[str, Any]) -> None:
        guild_ids = data.get("guild_id")
        if not isinstance(guild_ids, list):
            guild_ids = [guild_ids]
        for raw_id in guild_ids:
            guild_id = int(raw_id)
            members = self.host.member_chunk(guild_id, data)
            payload: dict[str, Any] = {
                "guild_id": str(guild_id),
                "members": members,
                "chunk_index": 0,
                "chunk_count": 1,
                "not_found": [],
            }
            if data.get("nonce") is not None:
                payload["nonce"] = data["nonce"]
            async with session.lock:
                await session._emit("GUILD_MEMBERS_CHUNK", payload)

    # -- fan-out -----------------------------------------------------------------------

    def live_sessions(self) -> list[GatewaySession]:
        return [s for s in self.sessions.values() if not s.invalid]

    async def dispatch(
        self,
        event: str,
        data: EventData,
        *,
        guild_id: int | None = None,
        intent: int | None = None,
        session_ids: Collection[str] | None = None,
    ) -> list[str]:
        """Send ``event`` to every session that would get it from Discord.

        ``data`` may be a function of the session (to blank content for a session without
        the message-content intent, say) returning None to skip that session.  Sessions
        whose socket is down still get a sequence number, so a RESUME replays the event.
        ``session_ids`` narrows delivery to those sessions (e.g. two processes that both
        hold a guild's shard, each seeing part of a channel's messages).
        Returns the ids of the sessions the event was given to.
        """
        delivered: list[str] = []
        delay = self.delays.for_dispatch()
        if delay > 0:
            # Events keep their order (as Discord's do): none overtakes an earlier one.
            now = time.monotonic()
            at = self._last_dispatch_at = max(now + delay, self._last_dispatch_at + 1e-4)
            await asyncio.sleep(at - now)
        for session in self.live_sessions():
            if session_ids is not None and session.session_id not in session_ids:
                continue
            if not session.wants_guild(guild_id):
                continue
            if intent is not None and not session.has_intent(intent):
                continue
            payload = data(session) if callable(data) else data
            if payload is None:
                continue
            async with session.lock:
                await session._emit(event, payload)
                self.sent.append(
                    SentEvent(time.monotonic(), session.session_id, session.seq, event)
                )
            delivered.append(session.session_id)
        return delivered

    async def send_op(self, op: int, data: Any, *, session_id: str | None = None) -> None:
        """Send a raw non-dispatch opcode (7 RECONNECT, 9 INVALID_SESSION...)."""
        for session in self.live_sessions():
            if session_id is not None and session.session_id != session_id:
                continue
            conn = session.connection
            if conn is not None:
                await conn.send({"op": op, "s": None, "t": None, "d": data})

    async def close_connections(self, code: int = 4000, *, session_id: str | None = None) -> int:
        """Drop sockets (sessions survive and stay resumable).  Returns how many closed."""
        targets = [
            c
            for c in list(self.connections)
            if session_id is None or (c.session and c.session.session_id == session_id)
        ]
        await asyncio.gather(*(c.close(code) for c in targets))
        return len(targets)

    def invalidate_sessions(self) -> None:
        """Forget all sessions, so the next RESUME gets INVALID_SESSION."""
        for session in self.sessions.values():
            session.invalid = True

    async def close(self) -> None:
        self._closing = True
        await self.close_connections(1001)
