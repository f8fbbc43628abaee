"""Rolling summary: turns leaving the window are folded into a running summary.

Why it looks like this:
- It runs in the background after a reply, so it never delays one, and it takes no
  channel lock: replies go on meanwhile. Correctness comes from the store's atomic fold
  (`Store.fold`): the oldest turns leave the history only in the same write that stores
  the summary covering them, and only if the channel still holds exactly what was read
  (same epoch, same summary, same first turns). A concurrent reply, a /reset or another
  process therefore can neither lose nor duplicate a turn; the loser just tries again.
- It folds in batches (down to `KEEP` of the limits, not one turn at a time), so a busy
  channel needs a summarising call only every few replies.
- A short lease in Redis keeps two processes from summarising one channel at once; it is
  only a saving, the fold stays safe without it.
- A failed call keeps the old summary and the turns; it is retried with backoff, and
  after the last retry the next reply in the channel tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from bot.chat.context import _cut_to, as_message
from bot.config import HistoryConfig, LLMConfig
from bot.errors import BotError, LLMEmptyReply, LLMError, MemoryUnavailable
from bot.llm.client import LLMClient
from bot.llm.tokens import PER_MESSAGE, REPLY_PRIMING, TokenCounter
from bot.memory.store import Snapshot, Store, UsageRecord
from bot.models import Place, Summary, TokenUsage, Turn

log = logging.getLogger(__name__)

# After a fold the remaining history takes at most this share of its token budget and of
# `history.max_turns`.
KEEP = 0.75
# Folds (or lost races) in one run, so a run always ends.
MAX_ROUNDS = 4
# Seconds to wait before retrying a failed summary; after the last, the next reply retries.
RETRY_DELAYS = (5.0, 30.0, 120.0)
# Room for the heading that introduces the summary in the system message.
HEADING_TOKENS = 24
NO_SUMMARY = "(none yet)"


def summary_cap(history: HistoryConfig, llm: LLMConfig) -> int:
    """The summary's token limit: the configured one, but never more than a quarter of
    what the context leaves after the reply reserve (small local models stay usable)."""
    return max(32, min(history.summary_tokens, (llm.context_tokens - llm.max_tokens) // 4))


def summary_llm_config(history: HistoryConfig, llm: LLMConfig) -> LLMConfig:
    """The LLM settings of summarising calls: the chat server, the summary model and cap."""
    return replace(
        llm, model=history.summary_model or llm.model, max_tokens=summary_cap(history, llm)
    )


def history_budget(
    llm: LLMConfig, *, system_tokens: int, summary_tokens: int, message_tokens: int
) -> int:
    """Tokens the stored history may take in the next request (the summary's full cap is
    reserved, since the next summary may grow to it)."""
    return (
        llm.context_tokens
        - llm.max_tokens
        - system_tokens
        - summary_tokens
        - HEADING_TOKENS
        - REPLY_PRIMING
        - message_tokens
    )


def turns_to_fold(
    history: Sequence[Turn], *, budget: int, max_turns: int, counter: TokenCounter
) -> int:
    """How many of the oldest turns to fold now; 0 while everything still fits."""
    costs = [counter.calibrated(t.tokens + PER_MESSAGE) for t in history]
    total = sum(costs)
    if total <= budget and len(history) <= max_turns:
        return 0
    token_target = int(max(budget, 0) * KEEP)
    turn_target = int(max_turns * KEEP)
    count = 0
    while count < len(history) and (total > token_target or len(history) - count > turn_target):
        total -= costs[count]
        count += 1
    # Fold whole exchanges: what stays starts with a user's message.
    while count < len(history) and history[count].role != "user":
        count += 1
    return count


def transcript(turns: Sequence[Turn], bot_name: str) -> list[str]:
    """The turns as lines of "speaker: text", the way the model saw them."""
    return [
        # as_message: a user turn's images appear as "[image: name]" placeholders.
        str(as_message(t)["content"]) if t.role == "user" else f"{bot_name}: {t.content}"
        for t in turns
    ]


def summarising_messages(
    instructions: str, previous: Summary | None, lines: Sequence[str], cap: int
) -> list[dict[str, Any]]:
    """The request that turns (previous summary + turns to drop) into the new summary."""
    words = max(20, cap * 3 // 4)
    body = (
        "Summary so far:\n<summary>\n"
        + (previous.text.strip() if previous else NO_SUMMARY)
        + "\n</summary>\n\nMessages to fold into it, oldest first:\n<messages>\n"
        + "\n".join(lines)
        + "\n</messages>"
    )
    return [
        {"role": "system", "content": instructions.replace("{max_words}", str(words))},
        {"role": "user", "content": body},
    ]


@dataclass(frozen=True, slots=True)
class FoldTask:
    """What a reply knows that the summariser needs for the budget."""

    place: Place
    system_tokens: int
    message_tokens: int
    bot_name: str


class SummaryService:
    def __init__(
        self,
        *,
        store: Store,
        llm: LLMClient,
        counter: TokenCounter,
        history: HistoryConfig,
        llm_config: LLMConfig,
        retry_delays: Sequence[float] = RETRY_DELAYS,
    ) -> None:
        self.store = store
        self.llm = llm
        self.counter = counter
        self.history = history
        self.llm_config = llm_config
        self.enabled = history.summarize
        self.cap = summary_cap(history, llm_config)
        self.retry_delays = tuple(retry_delays)
        # The lease outlasts the longest call, so a second process only steps in for a
        # process that died.
        self.lease_s = llm.config.total_timeout + 30
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self.folds = 0  # successful folds, for tests and benchmarks

    # --- when ------------------------------------------------------------------------

    def budget(self, system_tokens: int, message_tokens: int) -> int:
        return history_budget(
            self.llm_config,
            system_tokens=self.counter.calibrated(system_tokens),
            summary_tokens=self.cap,
            message_tokens=self.counter.calibrated(message_tokens),
        )

    def needed(self, history: Sequence[Turn], system_tokens: int, message_tokens: int) -> bool:
        """Whether `history` (as a reply just left it) has turns to fold."""
        if not self.enabled:
            return False
        budget = self.budget(system_tokens, message_tokens)
        return (
            turns_to_fold(
                history, budget=budget, max_turns=self.history.max_turns, counter=self.counter
            )
            > 0
        )

    def schedule(self, job: FoldTask) -> None:
        """Summarise the channel in the background unless that already runs here."""
        channel = job.place.channel_id
        if not self.enabled or channel in self._tasks:
            return
        task = asyncio.create_task(self._run(job), name=f"summary {channel}")
        self._tasks[channel] = task
        task.add_done_callback(lambda _: self._tasks.pop(channel, None))

    async def wait_idle(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Wait for running summaries (tests, and a graceful shutdown)."""
        tasks = set(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def close(self) -> None:
        """Stop running summaries; an unfinished one has written nothing."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # --- how -------------------------------------------------------------------------

    async def _run(self, job: FoldTask) -> None:
        channel = job.place.channel_id
        for attempt in range(len(self.retry_delays) + 1):
            try:
                await self.summarize(job)
                return
            except (LLMError, MemoryUnavailable) as exc:
                kind = getattr(exc, "kind", None) or type(exc).__name__
                if attempt == len(self.retry_delays):
                    log.warning(
                        "summary channel=%s failed kind=%s; the next reply tries again",
                        channel,
                        kind,
                    )
                    return
                delay = self.retry_delays[attempt]
                log.warning(
                    "summary channel=%s failed kind=%s; retrying in %.1f s", channel, kind, delay
                )
                await asyncio.sleep(delay)
            except Exception:
                log.exception("summary channel=%s failed unexpectedly", channel)
                return

    async def summarize(self, job: FoldTask) -> int:
        """Fold what has left the window; returns how many folds were stored."""
        channel = job.place.channel_id
        token = secrets.token_hex(8)
        if not await self.store.claim_summarizing(channel, token, self.lease_s):
            log.debug("summary channel=%s: another process is summarising", channel)
            return 0
        try:
            done = 0
            for _ in range(MAX_ROUNDS):
                snap = await self.store.snapshot(channel)
                count = self._plan(snap, job)
                if count == 0:
                    break
                if await self._fold(job, snap, count):
                    done += 1
            return done
        finally:
            with contextlib.suppress(BotError):
                await self.store.release_summarizing(channel, token)

    def _plan(self, snap: Snapshot, job: FoldTask) -> int:
        """How many of the oldest stored turns to fold in this call (fits its request)."""
        history = snap.history
        budget = self.budget(job.system_tokens, job.message_tokens)
        count = turns_to_fold(
            history, budget=budget, max_turns=self.history.max_turns, counter=self.counter
        )
        if count == 0:
            return 0
        # The summarising request must fit the context too: instructions, old summary,
        # the turns, and room for the new summary.
        previous = snap.summary
        room = (
            self.llm_config.context_tokens
            - self.cap
            - self.counter.count(self.history.summary_prompt)
            - (previous.tokens if previous else 0)
            - 64
        )
        fitting, used = 0, 0
        for turn in history[:count]:
            used += self.counter.calibrated(turn.tokens + PER_MESSAGE)
            if used > room:
                break
            fitting += 1
        if fitting < count:
            # Cut back to an exchange boundary; a single huge turn is folded on its own.
            while fitting > 1 and history[fitting].role != "user":
                fitting -= 1
            count = max(fitting, 1)
        return count

    async def _fold(self, job: FoldTask, snap: Snapshot, count: int) -> bool:
        place = job.place
        previous = snap.summary
        folded = snap.history[:count]
        room = max(64, self.llm_config.context_tokens - self.cap - 256)
        lines = [
            line if self.counter.count(line) <= room else _cut_to(line, room, self.counter)
            for line in transcript(folded, job.bot_name)
        ]
        messages = summarising_messages(self.history.summary_prompt, previous, lines, self.cap)
        started = time.monotonic()
        stream = self.llm.stream(messages)
        try:
            async with stream:
                async for _ in stream:
                    pass
        except LLMError:
            spent = stream.text + stream.thinking  # a thinking model's thoughts cost too
            if spent:  # cut off mid-way: those tokens were spent all the same
                await self._record(place, stream.model, self._usage(None, messages, spent))
            raise
        text = stream.text.strip()  # the answer only: never the model's thoughts
        # Spent whether or not the fold is stored.
        await self._record(
            place, stream.model, self._usage(stream.usage, messages, stream.thinking + text)
        )
        if not text:
            raise LLMEmptyReply()
        summary = Summary(
            text=text,
            tokens=self.counter.count(text),
            turns=(previous.turns if previous else 0) + count,
            at=time.time(),
        )
        stored = await self.store.fold(place.channel_id, snap, count, summary)
        log.info(
            "summary channel=%s folded=%d stored=%s summary_tokens=%d took=%.2fs",
            place.channel_id,
            count,
            stored,
            summary.tokens,
            time.monotonic() - started,
        )
        if stored:
            self.folds += 1
        return stored

    async def _record(self, place: Place, model: str | None, usage: TokenUsage) -> None:
        rec = UsageRecord(
            0, place.channel_id, place.guild_id, model or self.llm.config.model, usage, "summary"
        )
        await self.store.record_usage(rec)

    def _usage(self, reported: Any, messages: list[dict[str, Any]], text: str) -> TokenUsage:
        if reported is not None and reported.prompt_tokens > 0:
            return TokenUsage(reported.prompt_tokens, reported.completion_tokens)
        return TokenUsage(
            self.counter.calibrated(self.counter.count_messages(messages)),
            self.counter.count(text),
            estimated=True,
        )
