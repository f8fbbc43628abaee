"""The process-wide Discord request budget shared by every streaming reply.

Every Discord request of every stream (send, edit, typing) takes a grant from it first,
so the bot stays under the global request rate and under each route's bucket, and never
sits blocked inside the HTTP library (where a waiting request would hold stale text).
When grants are scarce they go to the stream whose visible text is the oldest, so 200
parallel replies all advance.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

Clock = Callable[[], float]
_T = TypeVar("_T")

DISCORD_GLOBAL_RATE = 50.0  # requests per second per bot
DEFAULT_BURST = 5.0


def head_start_for(rate: float, burst: float = DEFAULT_BURST) -> float:
    """Extra grants a reply's first message may take, up to Discord's 50/s.

    Replies that start together (many channels at once) each need one create before
    anything is visible: at 40/s with a burst of 5 (and a head start of 5), ten first
    messages go out at once instead of five, then one every 25 ms. Only first messages
    get it: a burst of 10 for every request let the bucket refill to 10 whenever the
    streams' edits waited for their channels, and the bunched requests earned global
    429s at 200 channels. Pair it with `per_second` and tracked requests (`release`):
    a cap on grants alone did not stop global 429s when 200 replies started together,
    because a busy event loop sends requests granted over more than a second within one.
    """
    return max(0.0, DISCORD_GLOBAL_RATE - rate - burst)


class _Waiter:
    __slots__ = ("bucket", "first", "fut", "priority", "tracked")

    def __init__(
        self,
        bucket: str,
        priority: float,
        fut: asyncio.Future[None],
        first: bool = False,
        tracked: bool = False,
    ) -> None:
        self.bucket = bucket
        self.priority = priority
        self.fut = fut
        self.first = first
        self.tracked = tracked


class _Bucket:
    """Pacing state of one rate-limit bucket."""

    __slots__ = ("learned", "recent", "remaining", "reset_at")

    def __init__(self, limit: int) -> None:
        self.recent: deque[float] = deque(maxlen=limit)  # grant times, for the static rule
        self.learned = False
        self.remaining = 0
        self.reset_at = 0.0


class RateBudget:
    """Process-wide request budget shared by all reply streams.

    * Global: a token bucket of `rate` grants/s with `burst` tokens, so any 1-second
      window holds at most ``rate + burst`` requests (Discord allows 50/s per bot).
      A reply's first message (``first=True``) may also spend `head_start` tokens
      beyond the bucket (see `head_start_for`). `per_second` caps what can reach
      Discord in any second, counting tracked requests until they end (`release`).
    * Per bucket: at most `bucket_limit` grants per `bucket_period` seconds (sliding
      window) for buckets Discord has not told us about; once `observe` has seen a
      bucket's headers, its remaining count and reset time rule instead, and
      ``remaining == 0`` holds the bucket until the reset.
    * Order: waiters are served by `priority`, lowest first. Streams pass the arrival
      time of their oldest text not yet visible, typing passes the time it started
      waiting, so the stalest stream goes first. A waiter whose bucket is closed does
      not hold up the others.

    A single dispatcher (`pump`, run on requests, observations and one timer) hands out
    grants; nothing polls. `clock` is injectable for tests; with a fake clock call
    `pump()` after moving it.
    """

    def __init__(
        self,
        rate: float = 40.0,
        *,
        burst: float = 5.0,
        bucket_limit: int = 5,
        bucket_period: float = 5.0,
        margin: float = 0.05,
        clock: Clock = time.monotonic,
        head_start: float = 0.0,
        per_second: float | None = None,
    ) -> None:
        if rate <= 0 or burst < 1 or bucket_limit < 1 or bucket_period <= 0:
            raise ValueError("rate, burst, bucket_limit and bucket_period must be positive")
        self.rate = rate
        self.burst = burst
        self.bucket_limit = bucket_limit
        self.bucket_period = bucket_period
        self.margin = margin  # slack for request latency jitter between grant and Discord
        self.clock = clock
        self.granted = 0  # total grants, for tests and metrics
        self.head_start = head_start
        self._tokens = burst
        # `per_second`: requests that may have reached Discord within the last second,
        # counted as those in flight (granted, `release` not called yet) plus those that
        # ended (or, untracked, were granted) less than a second ago. A request reaches
        # Discord before it ends, so this bounds what Discord counts however late
        # granted requests actually go out (a busy event loop bunches them).
        self.per_second = per_second
        self.in_flight = 0
        self._second: deque[float] = deque()
        self._stamp = clock()
        self._hold_until = 0.0
        self._ready: list[tuple[float, int, _Waiter]] = []  # by priority
        self._parked: list[tuple[float, int, _Waiter]] = []  # bucket closed: by reopen time
        self._buckets: dict[str, _Bucket] = {}
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    @property
    def waiting(self) -> int:
        """Number of requests waiting for a grant (including cancelled, not yet pruned)."""
        return len(self._ready) + len(self._parked)

    @property
    def contended(self) -> bool:
        """True while requests queue for the shared rate itself (not for their own
        bucket's reset): grants are scarce and the budget sets every stream's pace."""
        return any(not w.fut.done() for _, _, w in self._ready)

    async def acquire(
        self,
        bucket: str,
        priority: float | None = None,
        *,
        first: bool = False,
        tracked: bool = False,
    ) -> None:
        """Wait for a grant to make one request in `bucket` (`first`: a reply's first
        message, which may use the head start; `tracked`: the caller calls `release`
        once the request has ended, sent or not)."""
        now = self.clock()
        if priority is None:
            priority = now
        if not self._ready and self._take(bucket, now, first, tracked):
            return  # fast path: nobody waiting, no future needed
        fut = self.request(bucket, priority, first=first, tracked=tracked)
        try:
            await fut
        except asyncio.CancelledError:
            if tracked and fut.done() and not fut.cancelled():
                self.release()  # granted, but the caller will never send it
            raise

    def request(
        self, bucket: str, priority: float, *, first: bool = False, tracked: bool = False
    ) -> asyncio.Future[None]:
        """A future resolved when the grant is given; cancel it to withdraw the request.
        With `tracked`, call `release` once a granted request has ended."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        seq = next(self._seq)
        waiter = _Waiter(bucket, priority, fut, first, tracked)
        heapq.heappush(self._ready, (priority, seq, waiter))
        self.pump()
        return fut

    def release(self) -> None:
        """A tracked request has ended (answered, failed, or not sent after all)."""
        self.in_flight -= 1
        if self.per_second is not None:
            self._second.append(self.clock())
        if self._ready:
            self.pump()

    def observe(self, bucket: str, remaining: int, reset_after: float) -> None:
        """Learn a bucket's state from Discord's X-RateLimit-Remaining / -Reset-After."""
        now = self.clock()
        b = self._bucket(bucket)
        reset_at = now + max(reset_after, 0.0) + self.margin
        # A response from a window that opened after the one we know resets much later
        # (a whole period, less latency jitter). Without this check, a request that
        # reached Discord just after the reset was taken for the old window: its fresh
        # `remaining` was min'ed with the old window's 0 and the bucket stayed shut
        # until the *new* reset, a stall of a whole period (5 s for message edits).
        if b.learned and now < b.reset_at and reset_at < b.reset_at + self.bucket_period / 2:
            # Same window: grants made since that response are not counted by it yet.
            b.remaining = min(b.remaining, remaining)
            b.reset_at = max(b.reset_at, reset_at) if remaining <= 0 else reset_at
        else:
            b.learned, b.remaining, b.reset_at = True, remaining, reset_at
        self.pump()

    def observe_global(self, retry_after: float) -> None:
        """A global 429: hold every grant for `retry_after` seconds."""
        self._hold_until = max(self._hold_until, self.clock() + retry_after + self.margin)
        self.pump()

    def pump(self) -> None:
        """Hand out every grant possible now and arm the timer for the next one."""
        now = self.clock()
        self._refill(now)
        parked, ready = self._parked, self._ready
        while parked and parked[0][0] <= now:
            _, seq, w = heapq.heappop(parked)
            if not w.fut.done():
                heapq.heappush(ready, (w.priority, seq, w))
        while ready and now >= self._hold_until:
            _, seq, w = ready[0]
            if w.fut.done():  # cancelled by its owner
                heapq.heappop(ready)
                continue
            opens = self._bucket_opens(w.bucket, now)
            if opens > now:
                heapq.heappop(ready)
                heapq.heappush(parked, (opens, seq, w))
                continue
            if self._tokens < self._floor(w.first) or self._second_full(now):
                break
            heapq.heappop(ready)
            self._grant(w.bucket, now, w.tracked)
            w.fut.set_result(None)
        while ready and ready[0][2].fut.done():
            heapq.heappop(ready)
        wake = math.inf
        if ready:
            floor = self._floor(ready[0][2].first)
            need = (floor - self._tokens) / self.rate if self._tokens < floor else 0.0
            wake = max(self._hold_until, now + need)
            if self._second_full(now) and self._second:
                wake = max(wake, self._second[0] + 1.0)  # else a `release` pumps
        if parked:
            wake = min(wake, max(parked[0][0], self._hold_until))
        self._arm(wake, now)

    def _arm(self, wake: float, now: float) -> None:
        if wake == math.inf:
            return
        if self._timer is not None:
            if self._timer_at <= wake:
                return
            self._timer.cancel()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # observe() outside a loop with nobody waiting: nothing to do
            return
        self._timer_at = wake
        self._timer = loop.call_later(max(wake - now, 0.0) + 1e-4, self._on_timer)

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, math.inf
        self.pump()

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def _floor(self, first: bool) -> float:
        """Tokens needed for a grant: one, or less for a first message's head start."""
        return 1.0 - self.head_start if first else 1.0

    def _take(self, bucket: str, now: float, first: bool = False, tracked: bool = False) -> bool:
        """Grant immediately if allowed (caller checked nobody waits)."""
        if now < self._hold_until:
            return False
        self._refill(now)
        if (
            self._tokens < self._floor(first)
            or self._second_full(now)
            or self._bucket_opens(bucket, now) > now
        ):
            return False
        self._grant(bucket, now, tracked)
        return True

    def _grant(self, bucket: str, now: float, tracked: bool = False) -> None:
        self._tokens -= 1.0
        self.granted += 1
        if tracked:
            self.in_flight += 1
        elif self.per_second is not None:
            self._second.append(now)
        b = self._bucket(bucket)
        b.recent.append(now)
        if b.learned and now < b.reset_at:
            b.remaining -= 1
        if self.granted % 4096 == 0:
            self._prune(now)

    def _second_full(self, now: float) -> bool:
        """True while `per_second` requests may have reached Discord in the last second."""
        if self.per_second is None:
            return False
        s = self._second
        while s and s[0] <= now - 1.0:
            s.popleft()
        return len(s) + self.in_flight >= self.per_second

    def _bucket(self, key: str) -> _Bucket:
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(self.bucket_limit)
        return b

    def _bucket_opens(self, key: str, now: float) -> float:
        """Earliest time a request in bucket `key` may be granted."""
        b = self._buckets.get(key)
        if b is None:
            return now
        if b.learned and now < b.reset_at:
            return now if b.remaining > 0 else b.reset_at
        if len(b.recent) >= self.bucket_limit:
            return b.recent[0] + self.bucket_period + self.margin
        return now

    def _prune(self, now: float) -> None:
        """Forget idle buckets so thousands of channels do not accumulate."""
        horizon = self.bucket_period + self.margin
        for key in [
            k
            for k, b in self._buckets.items()
            if (not b.learned or b.reset_at < now)
            and (not b.recent or b.recent[-1] + horizon < now)
        ]:
            del self._buckets[key]
