"""Conversation memory in Redis (a single server or a Redis Cluster).

Why it looks like this:
- One turn of conversation costs two round trips: `load()` (lock + persona + history +
  today's usage in one pipeline) and `commit()` (the channel's commit script plus the
  user's and server's usage counters). On a single server both are one request each;
  on a cluster each is one request per node involved, sent concurrently (see README,
  "Scaling out").
- The rolling summary of turns that left the history sits next to it (`load()` reads it
  too). `fold()` swaps the oldest turns for the summary covering them in one Lua call,
  guarded like the commit by the reset epoch, so no turn is lost or duplicated.
- Every key of a channel carries the hash tag `{c<id>}` so a channel's keys share one
  Redis Cluster slot; server keys use `{g<id>}` and user keys `{u<id>}`. Every multi-key
  command and script stays inside one slot: the channel's commit (history, epoch, lock
  release, channel usage) is one Lua script in the channel's slot; the user's and the
  server's counters are one script each in theirs. Each of them is idempotent, guarded by
  a per-turn key set with NX in its own slot, so a retried write never counts twice.
- The per-channel lock lives in Redis, so several bot processes sharing one Redis never
  interleave a channel's history. It is fair across processes: every turn takes a ticket
  in the channel's queue (ordered by its Discord message id, i.e. arrival order) and the
  lock goes to the oldest ticket only. Tickets and the lock have leases that their holders
  renew (waiters by polling, the holder in the background while it streams), so a crashed
  process frees its channels and its place in line by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster

from bot.errors import MemoryUnavailable
from bot.models import Place, StoredPersona, Summary, TokenUsage, Turn
from bot.ops.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
# Take a ticket in the channel's queue (or renew it) and take the lock if it is free and
# this ticket is the oldest one. Tickets sort by member (zero-padded order, then token),
# all with score 0; a second sorted set holds each ticket's lease expiry, so tickets of a
# process that died (it stopped polling) leave the line by themselves.
# KEYS: lock, queue, leases. ARGV: token, ticket, lock lease ms, ticket lease ms.
# Returns 1 when this turn holds the lock.
_ACQUIRE = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('zrangebyscore', KEYS[3], '-inf', now)
for _, m in ipairs(dead) do redis.call('zrem', KEYS[2], m) end
if #dead > 0 then redis.call('zremrangebyscore', KEYS[3], '-inf', now) end
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then return 1 end
if not holder and redis.call('exists', KEYS[2]) == 0 then
  redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[3])  -- nobody waits: no ticket needed
  return 1
end
local lease = tonumber(ARGV[4])
redis.call('zadd', KEYS[2], 0, ARGV[2])
redis.call('zadd', KEYS[3], now + lease, ARGV[2])
redis.call('pexpire', KEYS[2], 2 * lease)
redis.call('pexpire', KEYS[3], 2 * lease)
if holder then return 0 end
if redis.call('zrange', KEYS[2], 0, 0)[1] ~= ARGV[2] then return 0 end
redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[3])
redis.call('zrem', KEYS[2], ARGV[2])
redis.call('zrem', KEYS[3], ARGV[2])
return 1
"""
# A waiter that gives up (timeout, cancellation) leaves the line. KEYS: queue, leases.
_LEAVE = """
redis.call('zrem', KEYS[1], ARGV[1])
return redis.call('zrem', KEYS[2], ARGV[1])
"""
# The channel's side of a commit, atomic and idempotent: append a turn's messages unless
# the channel was reset since the turn loaded its history (the epoch changed: a /reset
# while a reply streams must not be undone by its commit), trim, refresh the TTL, count the
# channel's usage and release the lock. An epoch key that expired since (a day after the
# reset) counts as unchanged. A retry of a commit that already ran (its guard key exists)
# changes nothing.
# The summary (if any) gets the history's TTL too: it lives as long as the history it
# continues.
# KEYS: history, epoch, lock, guard, channel usage, summary.
# ARGV: epoch at load ("" if none), max turns, TTL s (0: keep), lock token, guard TTL s,
#       usage TTL s, number of turns N, N turns, then usage field/increment pairs.
_COMMIT = """
if not redis.call('set', KEYS[4], '1', 'NX', 'EX', ARGV[5]) then
  if redis.call('get', KEYS[3]) == ARGV[4] then redis.call('del', KEYS[3]) end
  return {tonumber(redis.call('get', KEYS[4]) or '1'), redis.call('llen', KEYS[1])}
end
local n = tonumber(ARGV[7])
local epoch = redis.call('get', KEYS[2])
local appended = 0
if not (epoch and epoch ~= ARGV[1]) then
  for i = 8, 7 + n do redis.call('rpush', KEYS[1], ARGV[i]) end
  redis.call('ltrim', KEYS[1], -tonumber(ARGV[2]), -1)
  if tonumber(ARGV[3]) > 0 then
    redis.call('expire', KEYS[1], ARGV[3])
  else
    redis.call('persist', KEYS[1])
  end
  appended = 1
else
  redis.call('set', KEYS[4], '0', 'KEEPTTL')
end
if tonumber(ARGV[3]) > 0 then
  redis.call('expire', KEYS[6], ARGV[3])
else
  redis.call('persist', KEYS[6])
end
for i = 8 + n, #ARGV, 2 do redis.call('hincrby', KEYS[5], ARGV[i], ARGV[i + 1]) end
if #ARGV >= 8 + n then redis.call('expire', KEYS[5], ARGV[6]) end
if redis.call('get', KEYS[3]) == ARGV[4] then redis.call('del', KEYS[3]) end
return {appended, redis.call('llen', KEYS[1])}
"""
# One scope's usage counters for one turn, idempotent. KEYS: usage hash, guard, and for a
# server its per-user totals of the day. ARGV: usage TTL s, guard TTL s, user id and tokens
# for those totals ("" and 0 without), then field/increment pairs. Returns 1 if it counted.
_COUNT = """
if not redis.call('set', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then return 0 end
for i = 5, #ARGV, 2 do redis.call('hincrby', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('expire', KEYS[1], ARGV[1])
if KEYS[3] and ARGV[3] ~= '' then
  redis.call('hincrby', KEYS[3], ARGV[3], ARGV[4])
  redis.call('expire', KEYS[3], ARGV[1])
end
return 1
"""
# Replace the channel's latest answer (Regenerate) only if the exchange read at load time
# is still the last one, byte for byte, and the channel was not reset since.
# KEYS: history, epoch. ARGV: epoch at load, expected question, expected answer, new answer,
# TTL s (0: keep).
_REPLACE = """
local epoch = redis.call('get', KEYS[2])
if epoch and epoch ~= ARGV[1] then
  return {0, redis.call('llen', KEYS[1])}
end
if redis.call('lindex', KEYS[1], -2) ~= ARGV[2] or redis.call('lindex', KEYS[1], -1) ~= ARGV[3] then
  return {0, redis.call('llen', KEYS[1])}
end
redis.call('lset', KEYS[1], -1, ARGV[4])
if tonumber(ARGV[5]) > 0 then
  redis.call('expire', KEYS[1], ARGV[5])
end
return {1, redis.call('llen', KEYS[1])}
"""
# Store a turn's images next to the history (unless the channel was reset, as above) and
# drop images no stored turn refers to any more (trimmed away). Runs right after _COMMIT
# in the same MULTI (on a cluster: the same request to the channel's node, and repeated
# with it if that fails), so a turn and its images are written together.
# KEYS: images, history, epoch. ARGV: epoch at load, TTL s (0: keep), id, data, id, data...
_IMAGES = """
local epoch = redis.call('get', KEYS[3])
if epoch and epoch ~= ARGV[1] then return 0 end
for i = 3, #ARGV, 2 do redis.call('hset', KEYS[1], ARGV[i], ARGV[i + 1]) end
if redis.call('exists', KEYS[1]) == 0 then return 0 end
local used = {}
for _, raw in ipairs(redis.call('lrange', KEYS[2], 0, -1)) do
  if string.find(raw, '"images"', 1, true) then
    local ok, turn = pcall(cjson.decode, raw)
    if ok and type(turn.images) == 'table' then
      for _, img in ipairs(turn.images) do used[img.id] = true end
    end
  end
end
local dropped = 0
for _, id in ipairs(redis.call('hkeys', KEYS[1])) do
  if not used[id] then redis.call('hdel', KEYS[1], id); dropped = dropped + 1 end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('expire', KEYS[1], ARGV[2])
else
  redis.call('persist', KEYS[1])
end
return dropped
"""
# Replace the oldest turns by the summary that covers them, in one step, only if nothing
# changed since they were read: same reset epoch, same summary, and the history still
# starts with exactly those turns. So a concurrent reply (it appends at the end), a /reset
# or another process's summary can neither lose nor duplicate a turn.
# KEYS: history, summary, epoch. ARGV: epoch seen ("" if none), summary seen ("" if none),
# new summary, TTL s (0: keep), then the turns to drop, oldest first.
_FOLD = """
if (redis.call('get', KEYS[3]) or '') ~= ARGV[1] then return 0 end
if (redis.call('get', KEYS[2]) or '') ~= ARGV[2] then return 0 end
local n = #ARGV - 4
local head = redis.call('lrange', KEYS[1], 0, n - 1)
if #head ~= n then return 0 end
for i = 1, n do
  if head[i] ~= ARGV[4 + i] then return 0 end
end
redis.call('ltrim', KEYS[1], n, -1)
redis.call('set', KEYS[2], ARGV[3])
if tonumber(ARGV[4]) > 0 then redis.call('expire', KEYS[2], ARGV[4]) end
return 1
"""
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""

DAY = 86_400
# Discord's epoch (2015-01-01), for ordering turns that have no message id like messages.
DISCORD_EPOCH_MS = 1_420_070_400_000
# Usage counters outlive the longest /usage window (30 days) with some slack.
USAGE_TTL = 40 * DAY
# How long a turn's "already written here" guards live: far longer than any retry.
GUARD_TTL = 3600
# How long a cluster round trip is tried again while a failed primary is being replaced.
FAILOVER_WAIT_S = 2.0
# A waiting ticket leaves the line this long after its process stopped polling.
TICKET_LEASE_MS = 5000
# The longest pause between two polls of a waiting turn (a local release wakes it at once).
MAX_POLL_S = 0.25
# Errors that mean "Redis (or a cluster node) cannot answer now": during a failover the
# cluster client raises the cluster ones once its own retries are used up.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterError,
    redis.exceptions.RedisClusterException,
    redis.exceptions.TryAgainError,
    redis.exceptions.MasterDownError,
    OSError,
)


class Keys:
    """All key names in one place."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def history(self, channel_id: int) -> str:
        return f"{self.prefix}:{{c{channel_id}}}:history"

    def images(self, channel_id: int) -> str:
        """Hash: image id -> base64 bytes of the images the history's turns refer to."""
        return f"{self.prefix}:{{c{channel_id}}}:images"

    def lock(self, channel_id: int) -> str:
        return f"{self.prefix}:{{c{channel_id}}}:lock"

    def chat_mode(self, channel_id: int) -> str:
        return f"{self.prefix}:{{c{channel_id}}}:chat"

    def epoch(self, channel_id: int) -> str:
        """A counter bumped by /reset (no text), so a turn can tell it was reset."""
        return f"{self.prefix}:{{c{channel_id}}}:epoch"

    def summary(self, channel_id: int) -> str:
        """The running summary of the turns that left the history."""
        return f"{self.prefix}:{{c{channel_id}}}:summary"

    def summarizing(self, channel_id: int) -> str:
        """Held (with a lease) by the process writing the channel's next summary."""
        return f"{self.prefix}:{{c{channel_id}}}:summarizing"

    def channel_persona(self, channel_id: int) -> str:
        return f"{self.prefix}:{{c{channel_id}}}:persona"

    def guild_persona(self, guild_id: int) -> str:
        return f"{self.prefix}:{{g{guild_id}}}:persona"

    def tools(self, scope: str, ident: int) -> str:
        """Whether tools are on ("1") or off ("0") in a channel or server; absent: default."""
        tag = "g" if scope == "server" else "c"
        return f"{self.prefix}:{{{tag}{ident}}}:tools"

    def usage(self, scope: str, ident: int, day: str) -> str:
        tag = {"user": "u", "channel": "c", "server": "g"}[scope]
        return f"{self.prefix}:{{{tag}{ident}}}:usage:{day}"

    def usage_users(self, guild_id: int, day: str) -> str:
        """Tokens per user in one server on one day (for /usage scope: server)."""
        return f"{self.prefix}:{{g{guild_id}}}:usage_users:{day}"

    def channel_model(self, channel_id: int) -> str:
        return f"{self.prefix}:{{c{channel_id}}}:model"

    def guild_model(self, guild_id: int) -> str:
        return f"{self.prefix}:{{g{guild_id}}}:model"

    def thoughts(self, channel_id: int, key: str) -> str:
        """A reply's thinking, for its "Show thinking" button (not part of the history)."""
        return f"{self.prefix}:{{c{channel_id}}}:thoughts:{key}"

    def queue(self, channel_id: int) -> str:
        """The channel's waiting tickets, in arrival order."""
        return f"{self.prefix}:{{c{channel_id}}}:queue"

    def leases(self, channel_id: int) -> str:
        """When each waiting ticket expires unless its process keeps polling."""
        return f"{self.prefix}:{{c{channel_id}}}:leases"

    def done(self, scope: str, ident: int, turn_id: str) -> str:
        """Guard: this turn's writes in that scope's slot are done (retries skip them)."""
        tag = {"user": "u", "channel": "c", "server": "g"}[scope]
        return f"{self.prefix}:{{{tag}{ident}}}:done:{turn_id}"


def utc_day(ts: float | None = None) -> str:
    return time.strftime("%Y%m%d", time.gmtime(time.time() if ts is None else ts))


@dataclass(frozen=True, slots=True)
class PersonaLayers:
    """The stored personas that apply to a place, most specific first."""

    channel: StoredPersona | None
    parent: StoredPersona | None
    guild: StoredPersona | None


@dataclass(frozen=True, slots=True)
class ModelLayers:
    """The model names chosen with /model that apply to a place, most specific first."""

    channel: str | None
    parent: str | None
    guild: str | None


@dataclass(frozen=True, slots=True)
class Loaded:
    history: list[Turn]
    personas: PersonaLayers
    user_tokens_today: int
    summary: Summary | None = None
    # The last two history entries exactly as stored: Regenerate replaces the answer only
    # if they are unchanged (see `Store.replace_latest`).
    tail: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A channel's history, summary and reset epoch, read together (for summarising)."""

    raw_history: list[str]
    raw_summary: str
    epoch: str

    @property
    def history(self) -> list[Turn]:
        return [Turn.from_json(r) for r in self.raw_history]

    @property
    def summary(self) -> Summary | None:
        return Summary.from_json(self.raw_summary) if self.raw_summary else None


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """What one reply cost, attributed to a user, channel and server."""

    user_id: int
    channel_id: int
    guild_id: int | None
    model: str
    usage: TokenUsage
    # "reply", or "summary" (a background summarising call: counted for the channel and
    # server, apart from replies, and not against the user's quota).
    kind: str = "reply"


class Store:
    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        *,
        prefix: str,
        max_turns: int,
        retention_days: int,
        lock_lease_s: float = 30.0,
        metrics: Metrics | None = None,
    ) -> None:
        # Typed as the plain client: the cluster client offers the same commands.
        self.redis: aioredis.Redis = client  # type: ignore[assignment]
        self.cluster = isinstance(client, RedisCluster)
        self.metrics = metrics
        self.keys = Keys(prefix)
        self.max_turns = max_turns
        self.retention_s = retention_days * DAY
        self.lock_lease_ms = int(lock_lease_s * 1000)
        self.ticket_lease_ms = min(TICKET_LEASE_MS, self.lock_lease_ms)
        self._release = self.redis.register_script(_RELEASE)
        self._renew = self.redis.register_script(_RENEW)
        self._fold = self.redis.register_script(_FOLD)
        # Turns of this process waiting per channel: a release here wakes them at once
        # (waiters of other processes poll). The order itself is the Redis queue's.
        self._waiters: dict[int, _Waiters] = {}
        # Ticket order for turns with no message id: increasing within this process.
        self._last_order = 0
        # Channel locks this process holds no more but could not release (Redis was down):
        # the next turn in the channel frees them first instead of waiting out the lease.
        self._unreleased: dict[int, str] = {}
        # Usage writes of a cluster commit whose node was unreachable, retried in the
        # background (they are idempotent).
        self._retries: set[asyncio.Task[None]] = set()
        self.round_trips = 0  # counted for tests and benchmarks

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis round trip, turning connection trouble into MemoryUnavailable.

        On a cluster, a node that went away is usually replaced by its replica within
        seconds, so the round trip is tried again for up to FAILOVER_WAIT_S first (every
        store operation is safe to repeat: the writes are idempotent or guarded).
        """
        self.round_trips += 1
        give_up = time.monotonic() + (FAILOVER_WAIT_S if self.cluster else 0.0)
        delay = 0.1
        while True:
            try:
                return await fn()
            except UNAVAILABLE as exc:
                if time.monotonic() + delay < give_up:
                    log.debug("Redis node unavailable (%s); trying again", type(exc).__name__)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 0.5)
                    continue
                # BusyLoadingError (Redis still reading its AOF) is a ConnectionError too.
                if self.metrics is not None:
                    self.metrics.redis_error()
                log.warning("Redis unavailable: %s", type(exc).__name__)
                raise MemoryUnavailable(detail=str(exc)) from exc

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except (redis.exceptions.RedisError, OSError):
            return False

    # --- one conversation turn ----------------------------------------------------------

    def _next_order(self, order: int | None) -> int:
        """The ticket's place in line: the Discord message id (a snowflake, so arrival
        order across processes), or for a turn with no message a snowflake of now."""
        if order is None:
            order = max((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22, self._last_order + 1)
            self._last_order = order
        return order

    @contextlib.asynccontextmanager
    async def turn(
        self, place: Place, user_id: int, *, max_wait: float = 600.0, order: int | None = None
    ) -> AsyncIterator[tuple[Loaded, TurnLock]]:
        """Hold the channel for one turn: wait in line, then load everything it needs.

        `order` (the message id) decides the place in line: the message that reached
        Discord first is answered first, whichever process received it.
        """
        entry = self._waiters.get(place.channel_id)
        if entry is None:
            entry = self._waiters[place.channel_id] = _Waiters()
        entry.users += 1
        try:
            token = secrets.token_hex(8)
            lock = TurnLock(self, place.channel_id, token)
            lock.ticket = f"{self._next_order(order):020d}:{token}"
            loaded = await self._acquire_and_load(place, user_id, lock, max_wait, entry)
            lock.start_renewing()
            try:
                yield loaded, lock
            finally:
                await lock.release()
                entry.wake()
        finally:
            entry.users -= 1
            if entry.users == 0:
                # Drop idle entries so a bot in thousands of channels keeps no garbage.
                del self._waiters[place.channel_id]

    async def _acquire_and_load(
        self, place: Place, user_id: int, lock: TurnLock, max_wait: float, entry: _Waiters
    ) -> Loaded:
        try:
            return await self._wait_in_line(place, user_id, lock, max_wait, entry)
        except BaseException:
            if not lock.held:  # leave the line rather than block it for a ticket lease
                with contextlib.suppress(redis.exceptions.RedisError, OSError):
                    await self.redis.eval(
                        _LEAVE,
                        2,
                        self.keys.queue(place.channel_id),
                        self.keys.leases(place.channel_id),
                        lock.ticket,
                    )
            raise

    async def _wait_in_line(
        self, place: Place, user_id: int, lock: TurnLock, max_wait: float, entry: _Waiters
    ) -> Loaded:
        k = self.keys
        cid = place.channel_id
        deadline = time.monotonic() + max_wait
        delay = 0.02
        first = True
        while True:
            stale = self._unreleased.get(cid)
            woken = entry.changed

            async def load(stale: str | None = stale) -> list[Any]:
                async with self.redis.pipeline(transaction=False) as pipe:
                    if stale is not None:  # only deletes the lock if it is still that one
                        pipe.eval(_RELEASE, 1, k.lock(cid), stale)
                    pipe.eval(
                        _ACQUIRE,
                        3,
                        k.lock(cid),
                        k.queue(cid),
                        k.leases(cid),
                        lock.token,
                        lock.ticket,
                        self.lock_lease_ms,
                        self.ticket_lease_ms,
                    )
                    pipe.lrange(k.history(cid), 0, -1)
                    pipe.hmget(k.usage("user", user_id, utc_day()), "prompt", "completion")
                    pipe.get(k.epoch(cid))
                    pipe.get(k.summary(cid))
                    self._queue_personas(pipe, place)
                    return await pipe.execute()

            if first:
                # Turns of this process take their tickets one after another, so their
                # requests cannot overtake each other on the way to Redis.
                async with entry.entering:
                    results = await self._call(load)
                first = False
            else:
                results = await self._call(load)
            if stale is not None:
                results = results[1:]
                if self._unreleased.get(cid) == stale:
                    del self._unreleased[cid]
            got, raw_history, usage, epoch, summary, *personas = results
            if got:
                lock.held = True
                lock.epoch = epoch or ""
                return Loaded(
                    history=[Turn.from_json(r) for r in raw_history],
                    personas=self._parse_personas(personas, place),
                    user_tokens_today=sum(int(v or 0) for v in usage),
                    summary=Summary.from_json(summary) if summary else None,
                    tail=tuple(raw_history[-2:]),
                )
            # An earlier message is being answered (here or by another process): wait for
            # it, in order. A release in this process wakes us at once; others are polled.
            if time.monotonic() > deadline:
                raise MemoryUnavailable(
                    "This channel is still busy with an earlier answer. Try again shortly."
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), delay)
            delay = min(delay * 1.5, MAX_POLL_S)

    async def commit(
        self,
        place: Place,
        turns: list[Turn],
        usage: UsageRecord,
        lock: TurnLock,
        images: Mapping[str, str] | None = None,
    ) -> int:
        """Append the turns, trim, count usage, refresh TTLs and release the lock.

        One round trip. On a single server it is one MULTI/EXEC, all or nothing. On a
        cluster the channel's part (history, epoch, channel usage, lock release) is one
        atomic script in the channel's slot, sent together with the user's and server's
        counter scripts to their nodes; if only a counter's node fails, that counter is
        retried in the background (idempotent: each write is guarded by the turn's id).
        `images` (id -> base64) are the bytes of images the turns refer to; None (no
        images here at all) skips storing them and pruning those of trimmed turns.
        Returns the history length after trimming.
        """
        k = self.keys
        cid = place.channel_id
        fields = self._usage_fields(usage)

        def channel_part(pipe: Any) -> None:
            pipe.eval(
                _COMMIT,
                6,
                k.history(cid),
                k.epoch(cid),
                k.lock(cid),
                k.done("channel", cid, lock.token),
                k.usage("channel", cid, fields.day),
                k.summary(cid),
                lock.epoch,
                self.max_turns,
                self.retention_s,
                lock.token,
                GUARD_TTL,
                USAGE_TTL,
                len(turns),
                *(t.to_json() for t in turns),
                *fields.pairs,
            )

        channel_results = 1 if images is None else 2

        async def write() -> list[Any]:
            async with self.redis.pipeline(transaction=not self.cluster) as pipe:
                channel_part(pipe)
                if images is not None:
                    pipe.eval(
                        _IMAGES,
                        3,
                        k.images(cid),
                        k.history(cid),
                        k.epoch(cid),
                        lock.epoch,
                        self.retention_s,
                        *(part for pair in images.items() for part in pair),
                    )
                for scope, ident in self._other_scopes(usage):
                    self._queue_count(pipe, scope, ident, lock.token, fields)
                results: list[Any] = await pipe.execute(raise_on_error=not self.cluster)
            for outcome in results[:channel_results]:
                if isinstance(outcome, Exception):
                    raise outcome  # the channel's part decides (repeating it is safe)
            return results

        result = await self._call(write)
        lock.held = False
        failed = [
            scope
            for scope, outcome in zip(
                self._other_scopes(usage), result[channel_results:], strict=True
            )
            if isinstance(outcome, Exception)
        ]
        if failed:
            self._retry_counts(failed, lock.token, fields)
        appended, length = result[0]
        if not int(appended):
            log.info("channel=%s was reset while answering: the exchange is not kept", cid)
        return int(length)

    async def replace_latest(
        self, place: Place, expected: tuple[str, ...], answer: Turn, lock: TurnLock
    ) -> tuple[bool, int]:
        """Put `answer` in place of the channel's latest answer and release the lock,
        atomically, if the last exchange is still `expected` (as loaded under `lock`).

        Returns (replaced, history length). Only the channel's own keys are touched (one
        Cluster slot); the caller counts usage with `record_usage`.
        """
        k = self.keys
        hist = k.history(place.channel_id)
        if len(expected) != 2:
            raise ValueError("expected must be the last question and answer as stored")

        async def write() -> list[Any]:
            # One slot: a transaction on a single server; the script alone is atomic.
            async with self.redis.pipeline(transaction=not self.cluster) as pipe:
                pipe.eval(
                    _REPLACE,
                    2,
                    hist,
                    k.epoch(place.channel_id),
                    lock.epoch,
                    expected[0],
                    expected[1],
                    answer.to_json(),
                    self.retention_s,
                )
                pipe.eval(_RELEASE, 1, k.lock(place.channel_id), lock.token)
                return await pipe.execute()

        result = await self._call(write)
        lock.held = False
        replaced, length = result[0]
        if not int(replaced):
            log.info(
                "channel=%s changed while regenerating: the answer is not replaced",
                place.channel_id,
            )
        return bool(int(replaced)), int(length)

    async def record_usage(self, usage: UsageRecord, lock: TurnLock | None = None) -> None:
        """Count tokens of a reply that failed part-way: they were spent all the same.

        With the turn's lock, a commit that did count them already (its reply was lost
        in a failover) is not counted twice.
        """
        turn_id = lock.token if lock is not None else secrets.token_hex(8)
        fields = self._usage_fields(usage)
        scopes = [("channel", usage.channel_id), *self._other_scopes(usage)]

        async def write() -> None:
            async with self.redis.pipeline(transaction=not self.cluster) as pipe:
                for scope, ident in scopes:
                    self._queue_count(pipe, scope, ident, turn_id, fields)
                await pipe.execute()

        await self._call(write)

    @staticmethod
    def _other_scopes(rec: UsageRecord) -> list[tuple[str, int]]:
        """The usage scopes outside the channel's slot (a summary is not the user's)."""
        scopes = [] if rec.kind == "summary" else [("user", rec.user_id)]
        if rec.guild_id:
            scopes.append(("server", rec.guild_id))
        return scopes

    def _queue_count(
        self, pipe: Any, scope: str, ident: int, turn_id: str, fields: _UsageFields
    ) -> None:
        keys = [self.keys.usage(scope, ident, fields.day), self.keys.done(scope, ident, turn_id)]
        user: tuple[str | int, int] = ("", 0)
        if scope == "server" and fields.user_id is not None:  # top users of the server
            keys.append(self.keys.usage_users(ident, fields.day))
            user = (fields.user_id, fields.tokens)
        pipe.eval(_COUNT, len(keys), *keys, USAGE_TTL, GUARD_TTL, *user, *fields.pairs)

    def _retry_counts(
        self, scopes: list[tuple[str, int]], turn_id: str, fields: _UsageFields
    ) -> None:
        async def retry() -> None:
            delay = 0.5
            for _ in range(6):
                await asyncio.sleep(delay)
                try:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for scope, ident in scopes:
                            self._queue_count(pipe, scope, ident, turn_id, fields)
                        await pipe.execute()
                    return
                except UNAVAILABLE:
                    delay = min(delay * 2, 10)
            log.warning("usage of one reply could not be counted: Redis stayed unavailable")

        log.warning("usage counters unreachable after a commit; retrying in the background")
        task = asyncio.create_task(retry(), name="usage retry")
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    @staticmethod
    def _usage_fields(rec: UsageRecord) -> _UsageFields:
        est = "est_" if rec.usage.estimated else ""
        counts: tuple[str | int, ...] = ("requests", 1)
        if rec.kind == "summary":  # also in the totals; these say how much of them
            counts = (
                "summary_prompt", rec.usage.prompt_tokens,
                "summary_completion", rec.usage.completion_tokens,
                "summary_requests", 1,
            )  # fmt: skip
        pairs = (
            "prompt", rec.usage.prompt_tokens,
            "completion", rec.usage.completion_tokens,
            *counts,
            f"{est}prompt|{rec.model}", rec.usage.prompt_tokens,
            f"{est}completion|{rec.model}", rec.usage.completion_tokens,
        )  # fmt: skip
        user = None if rec.kind == "summary" else rec.user_id
        return _UsageFields(utc_day(), pairs, user, rec.usage.total)

    # --- reset, personas, chat mode ----------------------------------------------------

    async def history(self, channel_id: int) -> list[Turn]:
        raw = await self._call(lambda: self.redis.lrange(self.keys.history(channel_id), 0, -1))
        return [Turn.from_json(r) for r in raw]

    async def reset(self, channel_id: int) -> int:
        """Forget a channel's conversation (its persona stays). Returns turns removed."""
        hist, epoch = self.keys.history(channel_id), self.keys.epoch(channel_id)

        async def clear() -> list[Any]:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.llen(hist)
                pipe.delete(hist, self.keys.summary(channel_id))
                # A reply streaming now will see the new epoch and not write its turns back.
                pipe.incr(epoch)
                pipe.expire(epoch, DAY)
                pipe.delete(self.keys.images(channel_id))
                return await pipe.execute()

        return int((await self._call(clear))[0])

    async def images(self, channel_id: int, ids: list[str]) -> dict[str, str]:
        """Stored images (base64) by id; ids whose image is gone are left out."""
        if not ids:
            return {}
        key = self.keys.images(channel_id)
        values = await self._call(lambda: self.redis.hmget(key, ids))
        return {i: _s(v) for i, v in zip(ids, values, strict=True) if v}

    # --- rolling summary ---------------------------------------------------------------

    async def snapshot(self, channel_id: int) -> Snapshot:
        """History, summary and epoch as of one instant (one MULTI, one slot)."""
        k = self.keys

        async def load() -> list[Any]:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.lrange(k.history(channel_id), 0, -1)
                pipe.get(k.summary(channel_id))
                pipe.get(k.epoch(channel_id))
                return await pipe.execute()

        raw_history, raw_summary, epoch = await self._call(load)
        return Snapshot(list(raw_history), raw_summary or "", epoch or "")

    async def fold(self, channel_id: int, seen: Snapshot, count: int, summary: Summary) -> bool:
        """Drop the oldest `count` turns of `seen` and store `summary` in their place,
        atomically, if the channel is still as `seen`. False: it changed; nothing written.
        """
        k = self.keys
        dropped = seen.raw_history[:count]
        if count <= 0 or len(dropped) != count:
            raise ValueError(f"cannot fold {count} of {len(seen.raw_history)} turns")
        keys = [k.history(channel_id), k.summary(channel_id), k.epoch(channel_id)]
        args: list[str | int] = [
            seen.epoch,
            seen.raw_summary,
            summary.to_json(),
            self.retention_s,
            *dropped,
        ]
        done = await self._call(lambda: self._fold(keys=keys, args=args))
        if done:
            await self._drop_images(channel_id, dropped)
        return bool(done)

    async def _drop_images(self, channel_id: int, raw_turns: list[str]) -> None:
        """Images of turns that left the history go with them."""
        ids = [
            ref.id for raw in raw_turns if '"images"' in raw for ref in Turn.from_json(raw).images
        ]
        if ids:
            key = self.keys.images(channel_id)
            await self._call(lambda: self.redis.hdel(key, *ids))

    async def claim_summarizing(self, channel_id: int, token: str, lease_s: float) -> bool:
        """Take the channel's summarising lease, so two processes don't both do the work."""
        key = self.keys.summarizing(channel_id)
        got = await self._call(
            lambda: self.redis.set(key, token, nx=True, px=max(1, int(lease_s * 1000)))
        )
        return bool(got)

    async def release_summarizing(self, channel_id: int, token: str) -> None:
        key = self.keys.summarizing(channel_id)
        await self._call(lambda: self._release(keys=[key], args=[token]))

    def _persona_key(self, scope: str, ident: int) -> str:
        if scope == "server":
            return self.keys.guild_persona(ident)
        return self.keys.channel_persona(ident)

    async def get_persona(self, scope: str, ident: int) -> StoredPersona | None:
        key = self._persona_key(scope, ident)
        return _persona(await self._call(lambda: self.redis.get(key)))

    async def set_persona(self, scope: str, ident: int, persona: StoredPersona) -> None:
        key = self._persona_key(scope, ident)
        await self._call(lambda: self.redis.set(key, persona.to_json()))

    async def clear_persona(self, scope: str, ident: int) -> bool:
        key = self._persona_key(scope, ident)
        return bool(await self._call(lambda: self.redis.delete(key)))

    async def persona_layers(self, place: Place) -> PersonaLayers:
        async def load() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                self._queue_personas(pipe, place)
                return await pipe.execute()

        return self._parse_personas(await self._call(load), place)

    def _queue_personas(self, pipe: Any, place: Place) -> None:
        pipe.get(self.keys.channel_persona(place.channel_id))
        if place.parent_id:
            pipe.get(self.keys.channel_persona(place.parent_id))
        if place.guild_id:
            pipe.get(self.keys.guild_persona(place.guild_id))

    @staticmethod
    def _parse_personas(raw: list[Any], place: Place) -> PersonaLayers:
        values = iter(raw)
        channel = _persona(next(values))
        parent = _persona(next(values)) if place.parent_id else None
        guild = _persona(next(values)) if place.guild_id else None
        return PersonaLayers(channel=channel, parent=parent, guild=guild)

    async def chat_mode(self, channel_id: int) -> bool:
        """Whether the bot answers every message in this channel (not only mentions)."""
        key = self.keys.chat_mode(channel_id)
        return bool(await self._call(lambda: self.redis.exists(key)))

    async def set_chat_mode(self, channel_id: int, on: bool) -> None:
        key = self.keys.chat_mode(channel_id)
        await self._call(lambda: self.redis.set(key, "1") if on else self.redis.delete(key))

    async def tools_flags(self, place: Place) -> list[bool | None]:
        """The /tools switches that apply to a place, most specific first (None: unset):
        channel, parent channel (threads), server."""
        k = self.keys
        keys = [k.tools("channel", place.channel_id)]
        if place.parent_id:
            keys.append(k.tools("channel", place.parent_id))
        if place.guild_id:
            keys.append(k.tools("server", place.guild_id))

        async def load() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:  # one GET per key: they live in different cluster slots
                    pipe.get(key)
                return await pipe.execute()

        return [None if v is None else _s(v) == "1" for v in await self._call(load)]

    async def set_tools_flag(self, scope: str, ident: int, on: bool) -> None:
        key = self.keys.tools(scope, ident)
        await self._call(lambda: self.redis.set(key, "1" if on else "0"))

    # --- model choice (/model) ----------------------------------------------------------

    def _model_key(self, scope: str, ident: int) -> str:
        if scope == "server":
            return self.keys.guild_model(ident)
        return self.keys.channel_model(ident)

    async def set_model(self, scope: str, ident: int, name: str) -> None:
        key = self._model_key(scope, ident)
        await self._call(lambda: self.redis.set(key, name))

    async def clear_model(self, scope: str, ident: int) -> bool:
        key = self._model_key(scope, ident)
        return bool(await self._call(lambda: self.redis.delete(key)))

    async def model_layers(self, place: Place) -> ModelLayers:
        """One round trip for the channel's, its parent's and its server's choice."""
        k = self.keys
        keys = [k.channel_model(place.channel_id)]
        if place.parent_id:
            keys.append(k.channel_model(place.parent_id))
        if place.guild_id:
            keys.append(k.guild_model(place.guild_id))

        async def load() -> list[Any]:
            # Separate GETs, not MGET: the keys live in different cluster slots.
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.get(key)
                return await pipe.execute()

        values = iter([_s(v) if v else None for v in await self._call(load)])
        return ModelLayers(
            channel=next(values),
            parent=next(values) if place.parent_id else None,
            guild=next(values) if place.guild_id else None,
        )

    async def usage_users(self, guild_id: int, days: list[str]) -> dict[int, int]:
        """Tokens per user in a server, summed over `days`."""

        async def load() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for day in days:
                    pipe.hgetall(self.keys.usage_users(guild_id, day))
                return await pipe.execute()

        totals: dict[int, int] = {}
        for row in await self._call(load):
            for user, tokens in row.items():
                totals[int(_s(user))] = totals.get(int(_s(user)), 0) + int(tokens)
        return totals

    async def keep_thoughts(self, channel_id: int, key: str, text: str, ttl_s: int) -> None:
        name = self.keys.thoughts(channel_id, key)
        await self._call(lambda: self.redis.set(name, text, ex=ttl_s))

    async def thoughts(self, channel_id: int, key: str) -> str | None:
        name = self.keys.thoughts(channel_id, key)
        raw = await self._call(lambda: self.redis.get(name))
        return None if raw is None else _s(raw)

    async def usage_days(self, scope: str, ident: int, days: list[str]) -> list[dict[str, int]]:
        """Raw per-day usage hashes for one user, channel or server."""

        async def load() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for day in days:
                    pipe.hgetall(self.keys.usage(scope, ident, day))
                return await pipe.execute()

        rows = await self._call(load)
        return [{_s(k): int(v) for k, v in row.items()} for row in rows]


@dataclass(slots=True)
class _Waiters:
    """This process's turns in one channel, and an event that a release here sets."""

    users: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    entering: asyncio.Lock = field(default_factory=asyncio.Lock)

    def wake(self) -> None:
        old, self.changed = self.changed, asyncio.Event()
        old.set()


@dataclass(frozen=True, slots=True)
class _UsageFields:
    """One reply's usage as hash field/increment pairs, for the UTC day it counts in."""

    day: str
    pairs: tuple[str | int, ...]
    user_id: int | None  # whose tokens they are (None: a summary, nobody's)
    tokens: int


class TurnLock:
    """The Redis lease on one channel; renewed in the background while a reply streams."""

    def __init__(self, store: Store, channel_id: int, token: str) -> None:
        self.store = store
        self.channel_id = channel_id
        self.key = store.keys.lock(channel_id)
        self.token = token  # also the turn's id in its idempotency guards
        self.ticket = ""  # its place in the channel's queue
        self.held = False
        self.epoch = ""  # the channel's reset epoch when the turn loaded its history
        self._renewer: asyncio.Task[None] | None = None

    def start_renewing(self) -> None:
        self._renewer = asyncio.create_task(self._renew_loop(), name=f"renew {self.key}")

    async def _renew_loop(self) -> None:
        interval = self.store.lock_lease_ms / 3000
        while self.held:
            await asyncio.sleep(interval)
            try:
                ok = await self.store._renew(
                    keys=[self.key], args=[self.token, self.store.lock_lease_ms]
                )
            except (redis.exceptions.RedisError, OSError) as exc:
                log.warning("could not renew channel lock %s: %s", self.key, type(exc).__name__)
                continue
            if not ok and self.held:
                log.warning("channel lock %s was lost while answering", self.key)
                return

    async def release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if self.held:
            self.held = False
            try:
                await self.store._release(keys=[self.key], args=[self.token])
            except (redis.exceptions.RedisError, OSError) as exc:
                # Nothing is lost: the next turn here frees it, else the lease expires.
                log.warning("could not release channel lock %s: %s", self.key, type(exc).__name__)
                unreleased = self.store._unreleased
                if len(unreleased) < 10_000:
                    unreleased[self.channel_id] = self.token


def _s(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _persona(raw: str | bytes | None) -> StoredPersona | None:
    return StoredPersona.from_json(raw) if raw else None
