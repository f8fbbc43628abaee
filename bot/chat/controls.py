"""Stop, Regenerate and Retry: the buttons under a reply, as service logic.

Why it looks like this:
- A button's `custom_id` carries everything a press needs (the question's message id and
  who asked), so buttons keep working after a restart: `reply:<action>:<question>:<asker>`.
- Stop must end the model's request at once, so the stream is read in a task of its
  own that Stop cancels (closing the HTTP response, so a paid provider stops too); the
  text streamed so far is then stored, marked as stopped. Stop only cuts while the
  stream is being read: once the answer is being stored it is too late, and the press
  is simply answered.
- The registry of running replies is per process: a channel's replies are answered by
  the process that holds its shard, and so are its buttons.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Literal, cast

from bot.chat.conversation import Reply
from bot.errors import AnswerInProgress, LLMError, MemoryUnavailable, StoppedBeforeAnswer
from bot.models import Button

log = logging.getLogger(__name__)

Action = Literal["stop", "regen", "retry"]
CUSTOM_ID = re.compile(
    r"reply:(?P<action>stop|regen|retry):(?P<question>\d{1,20}):(?P<asker>\d{1,20})"
)

_LOOKS: dict[str, tuple[str, str]] = {
    "stop": ("Stop", "⏹"),
    "regen": ("Regenerate", "🔄"),
    "retry": ("Retry", "🔁"),
}
# Channels whose latest reply's last message is remembered (so its Regenerate button can
# be taken away when a newer answer arrives); the oldest are forgotten past this.
MAX_REMEMBERED = 10_000
# Ended replies whose final buttons are remembered, for a Stop press that arrives late.
MAX_ENDED = 1_000


def custom_id(action: Action, question_id: int, asker_id: int) -> str:
    return f"reply:{action}:{question_id}:{asker_id}"


def button(action: Action, question_id: int, asker_id: int) -> Button:
    label, emoji = _LOOKS[action]
    return Button(custom_id(action, question_id, asker_id), label, emoji)


Style = Literal["primary", "secondary", "success", "danger"]
# A button as plain data (kept per channel or reply: no objects of ours pile up).
Plain = tuple[str, str, str | None, str]


def plain(buttons: tuple[Button, ...]) -> tuple[Plain, ...]:
    return tuple((b.custom_id, b.label, b.emoji, b.style) for b in buttons)


def unplain(buttons: tuple[Plain, ...]) -> tuple[Button, ...]:
    return tuple(Button(c, label, emoji, cast(Style, style)) for c, label, emoji, style in buttons)


def may_press(presser_id: int, asker_id: int, *, in_guild: bool, manage_messages: bool) -> bool:
    """The person who asked, or in a server a member who may manage messages."""
    return presser_id == asker_id or (in_guild and manage_messages)


def retryable(exc: BaseException) -> bool:
    """Failures worth asking again: the model or memory failed, or the bot restarted."""
    return isinstance(
        exc, LLMError | MemoryUnavailable | StoppedBeforeAnswer | asyncio.CancelledError
    )


@dataclass(eq=False)
class RunningReply:
    """One reply being written, registered so its buttons can reach it."""

    channel_id: int
    question_id: int
    asker_id: int
    regenerating: bool = False
    stop_requested: bool = False
    reply: Reply | None = None
    reader: asyncio.Task[None] | None = field(default=None, repr=False)
    # Other buttons the reply ends with, after ours (e.g. another feature's).
    extra: tuple[Button, ...] = ()
    # The buttons the reply ended with (what a late press should leave in place).
    final: tuple[Button, ...] = ()

    def buttons_while_running(self) -> tuple[Button, ...]:
        return (button("stop", self.question_id, self.asker_id),)

    def buttons_when_stored(self) -> tuple[Button, ...]:
        self.final = (button("regen", self.question_id, self.asker_id), *self.extra)
        return self.final

    def buttons_when_failed(self, exc: BaseException) -> tuple[Button, ...]:
        if self.regenerating:  # the stored answer is still the latest: offer it again
            ours: tuple[Button, ...] = (button("regen", self.question_id, self.asker_id),)
        elif retryable(exc):
            ours = (button("retry", self.question_id, self.asker_id),)
        else:
            ours = ()
        self.final = (*ours, *self.extra)
        return self.final


@dataclass(frozen=True, slots=True)
class Latest:
    """The last message of a channel's latest stored answer (ids only: cheap to keep),
    and the other features' buttons it keeps when its Regenerate goes."""

    question_id: int
    message_id: int
    keep: tuple[Plain, ...] = ()

    @property
    def buttons_left(self) -> tuple[Button, ...]:
        return unplain(self.keep)


class ReplyControls:
    """The running replies of this process, and each channel's latest answer."""

    def __init__(self) -> None:
        self._running: dict[int, RunningReply] = {}  # by question id
        self._channels: dict[int, int] = {}  # channel id -> number of running replies
        self._latest: OrderedDict[int, Latest] = OrderedDict()
        # Recently ended replies' final buttons (as plain tuples), by question id.
        self._ended: OrderedDict[int, tuple[Plain, ...]] = OrderedDict()

    def begin(
        self, channel_id: int, question_id: int, asker_id: int, *, regenerating: bool = False
    ) -> RunningReply:
        """Register a reply; refuses a second one for the same question (double press)."""
        if question_id in self._running:
            raise AnswerInProgress()
        running = RunningReply(channel_id, question_id, asker_id, regenerating)
        self._running[question_id] = running
        self._channels[channel_id] = self._channels.get(channel_id, 0) + 1
        return running

    def end(self, running: RunningReply) -> None:
        if self._running.get(running.question_id) is not running:
            return
        del self._running[running.question_id]
        self._ended[running.question_id] = plain(running.final)
        while len(self._ended) > MAX_ENDED:
            self._ended.popitem(last=False)
        left = self._channels[running.channel_id] - 1
        if left:
            self._channels[running.channel_id] = left
        else:
            del self._channels[running.channel_id]

    def busy(self, channel_id: int) -> bool:
        """Whether a reply is being written (or waits its turn) in the channel."""
        return channel_id in self._channels

    def get(self, question_id: int) -> RunningReply | None:
        return self._running.get(question_id)

    def ended_with(self, question_id: int) -> tuple[Button, ...] | None:
        """The buttons a reply of this process ended with; None if unknown (restart)."""
        ended = self._ended.get(question_id)
        return None if ended is None else unplain(ended)

    def stop(self, question_id: int) -> bool:
        """Ask the reply to `question_id` to stop. True if it is cut now (or already
        being cut); False if it is not reading the model any more (finished, storing)."""
        running = self._running.get(question_id)
        if running is None:
            return False
        if running.stop_requested:
            return True
        reader, reply = running.reader, running.reply
        if reader is None:
            # Not reading yet (waiting for the channel or the first token): cut it as
            # soon as the stream is there.
            running.stop_requested = True
            return True
        if reader.done() or reply is None or not reply.reading:
            return False
        running.stop_requested = True
        reader.cancel()
        return True

    async def relay(self, running: RunningReply, reply: Reply, push: Callable[[str], None]) -> bool:
        """Read `reply` into `push` until it ends or Stop cuts it. True if stopped
        (the partial answer is then stored, marked as stopped)."""

        async def read() -> None:
            async for delta in reply:
                push(delta)

        running.reply = reply
        if not running.stop_requested:
            task = asyncio.get_running_loop().create_task(read(), name="read reply")
            running.reader = task
            try:
                await task  # a cancelled caller (shutdown) cancels the reading too
                return False
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if not running.stop_requested or (me is not None and me.cancelling()):
                    raise
            finally:
                running.reader = None
        else:
            # Stopped while waiting for the first words: show those (they are kept).
            deltas = cast(AsyncGenerator[str, None], aiter(reply))
            with contextlib.suppress(StopAsyncIteration):
                push(await anext(deltas))
            await deltas.aclose()
        log.info("reply channel=%s stopped by a button", running.channel_id)
        await reply.stop_here()
        return True

    def swap_latest(
        self, channel_id: int, question_id: int, message_id: int, keep: tuple[Button, ...] = ()
    ) -> Latest | None:
        """Remember the channel's newest stored answer; returns the previous one if it
        was another answer (its Regenerate button is to go, `keep` to stay)."""
        previous = self._latest.pop(channel_id, None)
        self._latest[channel_id] = Latest(question_id, message_id, plain(keep))
        while len(self._latest) > MAX_REMEMBERED:
            self._latest.popitem(last=False)
        if previous is None or previous.question_id == question_id:
            return None
        return previous
