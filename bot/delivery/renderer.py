"""Stream LLM replies into Discord messages by progressive edits, within rate limits.

Pure logic: Discord is reached through a `Sink` the glue implements, so this module is
testable without Discord. One `ReplyRenderer` per reply: `push()` only appends; a
background task shows the newest text (never a queue of stale edits), at most one edit
per message per `edit_interval`, continues in a new message past the length limit, and
on `finish()` / `fail()` leaves every message with its final text and no marker. Every
request takes a grant from the shared `RateBudget` (`bot.delivery.budget`) first.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from bot.delivery.budget import RateBudget
from bot.delivery.splitter import DISCORD_LIMIT, IncrementalSplitter, Part
from bot.models import Button

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class Sink(Protocol):
    """Where a reply is shown; implemented by the Discord glue (one per reply)."""

    async def send(
        self, content: str, reply_to: object | None, buttons: tuple[Button, ...]
    ) -> object:
        """Post a message with `buttons` under it; `reply_to` None means "reply to the
        user's message", else the handle of the previous part. Returns a handle for
        `edit` and later replies."""
        ...

    async def edit(self, handle: object, content: str, buttons: tuple[Button, ...]) -> None:
        """Replace the content and the buttons (none: remove them) of a message this
        sink sent."""
        ...

    async def typing(self) -> None:
        """Show the typing indicator in the reply's channel."""
        ...

    def bucket(self, kind: str) -> str:
        """Rate-limit bucket key for "send", "edit" or "typing" (e.g. "edit:<channel>")."""
        ...


@dataclass
class RenderStats:
    """Counters of Sink calls made (attempts, including failed ones)."""

    sends: int = 0
    edits: int = 0
    typing: int = 0
    failures: int = 0
    handles: list[object] = field(default_factory=list)


@dataclass
class _Message:
    handle: object
    shown: str  # content Discord has (as far as we know)
    next_edit: float  # per-message edit pacing
    buttons: tuple[Button, ...] = ()  # buttons Discord shows under it
    failures: int = 0
    dead: bool = False
    edited: bool = False  # `edit_interval` spaces two edits; a send and one edit are not


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ReplyRenderer:
    """Shows one streamed reply as Discord messages, edited as the text grows.

    `push()` is called by the LLM reader for every token and never waits; a render task
    does all Sink calls, each after a grant from the shared `RateBudget`:

    * the first message as soon as there is text; a typing indicator only when the model
      is slow to start (no text after `typing_delay` s, then every `typing_interval` s),
      sent beside the render loop so a typing request in flight never holds up text;
      later text by edits (newest text only, at most one edit per message per
      `edit_interval`), with `marker` after the in-progress part;
    * past `limit` the reply continues in a new message replying to the previous one
      (split by `plan_split`); earlier parts get one final edit without the marker;
    * `set_buttons` puts buttons under the reply's last message (earlier parts have
      none); a change is shown with the next edit, paced like text;
    * `set_status` shows a line (e.g. "💭 Thinking… 14 s") as the reply while it has no
      text yet, sent and updated like text; the first text replaces it;
    * a failing Sink call is retried with the newest text on a later cycle; after
      `max_failures` consecutive failures that message is given up (a failed send ends
      the stream), so `finish()` and `fail()` always return, at the latest after
      `flush_timeout`.
    """

    def __init__(
        self,
        sink: Sink,
        budget: RateBudget,
        *,
        edit_interval: float = 1.0,
        limit: int = DISCORD_LIMIT,
        marker: str = " ⏳",
        typing_interval: float = 8.0,
        call_timeout: float = 15.0,
        max_failures: int = 3,
        flush_timeout: float = 60.0,
        typing_delay: float = 0.5,
    ) -> None:
        self.sink = sink
        self.budget = budget
        self.edit_interval = edit_interval
        self.limit = limit
        self.marker = marker
        self.typing_interval = typing_interval
        self.call_timeout = call_timeout
        self.max_failures = max_failures
        self.flush_timeout = flush_timeout
        self.typing_delay = typing_delay
        self.stats = RenderStats()
        self._clock = budget.clock
        self._splitter = IncrementalSplitter(limit)
        self._chunks: list[str] = []
        self._length = 0
        self._parts: list[Part] = []
        self._desired: list[str] = []
        self._desired_key: tuple[int, bool, str | None] = (-1, False, None)
        self._msgs: list[_Message] = []
        self._buttons: tuple[Button, ...] = ()
        self._status: str | None = None
        self._closing = False
        self._note: str | None = None
        self._broken = False
        self._send_failures = 0
        self._next_send = 0.0
        self._unseen_since: float | None = None  # arrival of the oldest text not yet shown
        self._since_snapshot: float | None = None  # arrival of the oldest text after a snapshot
        self._waiter: asyncio.Future[None] | None = None
        self._wake_len = 0  # push wakes the task only once the text is longer than this
        self._task: asyncio.Task[None] | None = None
        self._header = ""  # shown above the text in the first message (see set_header)
        # Set by the first text, a status or the end: level-triggered, so no wake-up
        # can be lost.
        self._started = asyncio.Event()
        self._typing_task: asyncio.Task[None] | None = None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # started by the first push/finish/fail
        else:
            self._start()

    # -- public API --

    @property
    def text(self) -> str:
        """Everything pushed so far."""
        return self._text()

    @property
    def contents(self) -> list[str]:
        """What each sent message shows now (as far as Discord acknowledged)."""
        return [m.shown for m in self._msgs]

    @property
    def done(self) -> bool:
        """True once the render task has ended."""
        return self._task is not None and self._task.done()

    def push(self, delta: str) -> None:
        """Append streamed text. Cheap and never waits: the render task picks it up."""
        if not delta or self._closing:
            return
        self._chunks.append(delta)
        self._length += len(delta)
        if self._length == len(delta):
            self._started.set()
        if self._since_snapshot is None:
            now = self._clock()
            self._since_snapshot = now
            if self._unseen_since is None:
                self._unseen_since = now
        w = self._waiter
        if w is not None and self._length > self._wake_len and not w.done():
            w.set_result(None)
        if self._task is None:
            self._start()

    def set_header(self, header: str) -> None:
        """Show `header` (e.g. the tool steps) above the text, at the top of the first
        message; it is not part of `text`. Split and paced like text; ignored once
        finishing."""
        if header == self._header or self._closing:
            return
        old = len(self._header) + 1 if self._header else 0
        self._header = header
        self._length += (len(header) + 1 if header else 0) - old
        # The text no longer extends the previous one: plan the split afresh.
        self._splitter = IncrementalSplitter(self.limit)
        self._desired_key = (-1, *self._desired_key[1:])  # re-plan whatever the key holds
        now = self._clock()
        if self._since_snapshot is None:
            self._since_snapshot = now
        if self._unseen_since is None:
            self._unseen_since = now
        if self._task is None:
            self._start()
        self._wake()

    def set_buttons(self, buttons: tuple[Button, ...]) -> None:
        """Show `buttons` under the reply's last message from the next edit on (also
        once finishing: set the final buttons before `finish()`)."""
        if buttons == self._buttons:
            return
        self._buttons = buttons
        if self._task is None:
            self._start()
        self._wake()

    def set_status(self, text: str | None) -> None:
        """Show `text` as the reply until its first text arrives (None: no status).

        Why: a thinking model can be silent in the channel for minutes; a status
        message shows it is working. Changes go out as ordinary paced edits.
        """
        text = text[: self.limit] if text else None
        if text == self._status:
            return
        self._status = text
        if text is not None:
            self._started.set()  # something is shown: no typing indicator any more
        if self._task is None:
            self._start()
        self._wake()

    async def finish(self) -> None:
        """Flush: every message ends with its final part and no marker."""
        await self._close(None)

    async def fail(self, note: str) -> None:
        """End the reply with `note` (e.g. "⚠️ The model stopped answering.") in place of
        the marker, in a message of its own if it does not fit."""
        await self._close(note.strip() or None)

    # -- internals --

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _close(self, note: str | None) -> None:
        if not self._closing:
            self._closing = True
            self._note = note
        self._started.set()
        if self._task is None:
            self._start()
        task = self._task
        assert task is not None
        self._wake()
        done, _ = await asyncio.wait({task}, timeout=self.flush_timeout)
        if not done:
            log.warning("reply renderer did not flush within %.0f s; giving up", self.flush_timeout)
            task.cancel()
            await asyncio.wait({task})

    def _wake(self) -> None:
        if self._waiter is not None:
            _resolve(self._waiter)

    def _text(self) -> str:
        chunks = self._chunks
        if len(chunks) > 1:
            chunks[:] = ["".join(chunks)]
        return chunks[0] if chunks else ""

    def _plan(self) -> list[str]:
        """Desired content of every message for the newest text (cached per length)."""
        key = (self._length, self._closing, self._status)
        if key == self._desired_key:
            return self._desired
        text = f"{self._header}\n{self._text()}" if self._header else self._text()
        parts = self._parts = self._splitter.split(text)
        out = [p.body for p in parts]
        if not self._closing:
            if not parts and self._status:
                out = [self._status]
            elif parts:
                last = parts[-1]
                out[-1] = self._fit(last.body + last.closer + self.marker, last.body + last.closer)
        elif self._note is not None:
            note = self._note[: self.limit]
            if not parts:
                out = [note]
            else:
                last = parts[-1]
                closed = self._fit(last.body + last.closer)
                joined = closed + "\n\n" + note
                if len(joined) <= self.limit:
                    out[-1] = joined
                else:
                    out[-1] = closed
                    out.append(note)
        self._desired, self._desired_key = out, key
        return out

    def _fit(self, *candidates: str) -> str:
        """First candidate within the limit, else the plain body (always fits)."""
        for c in candidates:
            if len(c) <= self.limit:
                return c
        return self._parts[-1].body

    async def _run(self) -> None:
        if not self._started.is_set():
            self._typing_task = asyncio.get_running_loop().create_task(self._typing())
        try:
            while not self._broken:
                now = self._clock()
                action = self._next_action(now)
                if isinstance(action, tuple):
                    await self._perform(*action)
                    continue
                if self._closing and action == math.inf:
                    break  # everything shown (or given up)
                action, wake_len = self._wake_condition(now, action)
                await self._sleep(action, wake_len)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reply renderer crashed")
        finally:
            if self._typing_task is not None:
                self._typing_task.cancel()

    async def _typing(self) -> None:
        """Typing indicator while the model is slow to start, through the budget.

        Runs beside the render loop: text, a finish or a failure arriving while a typing
        request waits for its grant or is in flight is shown at once (awaiting typing in
        the render loop delayed such replies by `typing_interval`, 8 s). Nothing is sent
        when text comes within `typing_delay`: a typing request then only takes a grant
        from the first messages of other replies.
        """
        due = self._clock() + self.typing_delay
        while await self._before_text(None, due):
            bucket = self.sink.bucket("typing")
            grant = self.budget.request(bucket, self._clock(), tracked=True)
            try:
                if not await self._before_text(grant, math.inf):
                    return
                self.stats.typing += 1
                await self._call(self.sink.typing())
            finally:
                if not grant.done():
                    grant.cancel()
                elif not grant.cancelled():
                    self.budget.release()
            due = self._clock() + self.typing_interval

    async def _before_text(self, fut: asyncio.Future[None] | None, until: float) -> bool:
        """Wait for `fut` or `until`, whichever first; False at once when the reply has
        text or has ended (checked by an Event, so it cannot be missed)."""
        if self._started.is_set():
            return False
        started = asyncio.get_running_loop().create_task(self._started.wait())
        waits: set[asyncio.Future[Any]] = {started} if fut is None else {started, fut}
        timeout = None if until == math.inf else max(until - self._clock(), 0.0)
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            started.cancel()
        return not self._started.is_set()

    def _next_action(self, now: float) -> tuple[str, int] | float:
        """The next request to make now, or the time one becomes possible (inf: none)."""
        desired = self._plan()
        sent = len(self._msgs)
        send_at = math.inf
        if sent < len(desired):
            send_at = self._next_send
            if sent and not self._closing and not self.budget.contended:
                # A continuation part while streaming goes out in the previous message's
                # edit slot, and before that message's final edit. Edits of all parts
                # share the channel's bucket (5 per 5 s, used up by one edit per
                # `edit_interval`): sending at once and finalizing in a slot of its own
                # squeezed an extra edit into the window, and discord.py holds a request
                # that takes a bucket's last slot until the reset, so a send queued
                # behind the final edit waited too; both held up the newest text by up
                # to a second (max visible lag 1.9-2.3 s instead of 1 s for 3000-token
                # replies at 1 and 10 channels).
                # Not when requests queue for the shared budget: then the budget, not
                # the channel's bucket, sets the pace, and the old order (edits first,
                # send at once) measured better (50 channels: p95 lag 3.1 s vs 4.3 s).
                prev = self._msgs[-1]
                if not prev.dead and not self._up_to_date(sent - 1, desired):
                    send_at = max(send_at, prev.next_edit)
                    if now >= send_at:
                        return ("send", sent)
        due = math.inf
        for i, msg in enumerate(self._msgs):
            if msg.dead or self._up_to_date(i, desired):
                continue
            # The final text of a message never edited yet goes out at once (a quick
            # answer is complete one round trip after its first message, not after
            # `edit_interval`); the budget still keeps it within the channel's bucket.
            ready_at = msg.next_edit
            if self._closing and not msg.edited and not msg.failures:
                ready_at = now
            if now >= ready_at:
                return ("edit", i)
            due = min(due, ready_at)
        if now >= send_at:
            return ("send", sent)
        return min(due, send_at)

    def _buttons_for(self, index: int, desired: list[str]) -> tuple[Button, ...]:
        """Buttons belong under the last part only."""
        return self._buttons if index == len(desired) - 1 else ()

    def _up_to_date(self, index: int, desired: list[str]) -> bool:
        msg = self._msgs[index]
        return msg.shown == desired[index] and msg.buttons == self._buttons_for(index, desired)

    def _wake_condition(self, now: float, due: float) -> tuple[float, int]:
        """When to wake up: at `due`, or earlier on text growth that gives work to do.

        Pushes (one per token) only wake the task when it could act on them: when the
        newest message is up to date and may be edited now, or when the text may have
        grown into a new part (sends are not paced per message).
        """
        parts, msgs = self._parts, self._msgs
        if not parts:
            return due, self._length
        last = parts[-1]
        wake_len = last.start + self.limit - len(last.prefix)
        desired = self._desired
        if msgs and len(msgs) == len(desired) and self._up_to_date(len(msgs) - 1, desired):
            if msgs[-1].next_edit <= now:
                wake_len = self._length
            else:
                due = min(due, msgs[-1].next_edit)  # then check for growth
        return due, wake_len

    async def _sleep(self, until: float, wake_len: int) -> None:
        """Wait until `until`, a finish/fail, or the text growing past `wake_len`."""
        loop = asyncio.get_running_loop()
        fut = self._waiter = loop.create_future()
        self._wake_len = wake_len
        handle = None
        if until != math.inf:
            handle = loop.call_later(max(until - self._clock(), 0.0), _resolve, fut)
        try:
            await fut
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()

    async def _perform(self, kind: str, index: int) -> None:
        priority = self._unseen_since if self._unseen_since is not None else self._clock()
        first = kind == "send" and index == 0  # may use the budget's head start
        await self.budget.acquire(self.sink.bucket(kind), priority, first=first, tracked=True)
        try:
            await self._granted(kind, index)
        finally:
            self.budget.release()

    async def _granted(self, kind: str, index: int) -> None:
        """Make the request the budget granted, with the newest text."""
        desired = self._plan()  # the newest text, whatever arrived while waiting
        content = desired[index]
        buttons = self._buttons_for(index, desired)
        now = self._clock()
        if kind == "edit" and self._up_to_date(index, desired):
            return  # nothing to change any more (the grant is simply not used)
        self._since_snapshot = None  # text pushed from now on is not in this request
        if kind == "edit":
            msg = self._msgs[index]
            msg.next_edit = now + self.edit_interval
            self.stats.edits += 1
            ok, _ = await self._call(self.sink.edit(msg.handle, content, buttons))
            if ok:
                msg.shown, msg.buttons, msg.failures = content, buttons, 0
                msg.edited = True
            else:
                msg.failures += 1
                msg.next_edit = now + self.edit_interval * msg.failures
                if msg.failures >= self.max_failures:
                    msg.dead = True
                    log.warning(
                        "giving up editing reply message %d after %d failures",
                        index + 1,
                        msg.failures,
                    )
                return
        else:
            reply_to = self._msgs[index - 1].handle if index else None
            self.stats.sends += 1
            ok, handle = await self._call(self.sink.send(content, reply_to, buttons))
            if not ok:
                self._send_failures += 1
                self._next_send = now + self.edit_interval * self._send_failures
                if self._send_failures >= self.max_failures:
                    self._broken = True
                    log.warning(
                        "giving up the reply: sending message %d failed %d times",
                        index + 1,
                        self._send_failures,
                    )
                return
            self._send_failures = 0
            self._msgs.append(_Message(handle, content, now + self.edit_interval, buttons))
            self.stats.handles.append(handle)
        if len(self._msgs) == len(desired) and all(
            m.shown == d for m, d in zip(self._msgs, desired, strict=True)
        ):
            self._unseen_since = self._since_snapshot  # all shown up to the snapshot

    async def _call(self, coro: Coroutine[Any, Any, _T]) -> tuple[bool, _T | None]:
        """Run one Sink call; errors and hangs are logged and reported, never raised."""
        try:
            async with asyncio.timeout(self.call_timeout):
                return True, await coro
        except Exception as exc:  # the Sink is outside our control
            self.stats.failures += 1
            log.warning("reply sink call failed: %s: %s", type(exc).__name__, exc)
            return False, None
