"""The conversation engine: one user message in, one streamed model reply out.

Why it is a context manager: a reply holds the channel (so a second message waits its
turn instead of interleaving history), and whatever happens - a model error, a timeout,
a consumer that gives up - the channel must be released and nothing half done may be
stored. The user's turn and the model's reply are committed together, in one atomic
write, only when the reply completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from bot.chat.attachments import Prepared, Quoted, Source, prepare, quote_block
from bot.chat.context import BuiltContext, build_context, speaker_line
from bot.chat.model_choice import ModelChoiceService
from bot.chat.personas import render, resolve
from bot.chat.summary import FoldTask, SummaryService
from bot.chat.usage import UsageService
from bot.config import AttachmentsConfig, LLMConfig, MCPConfig, ModelSpec
from bot.delivery.gate import has_visible_text
from bot.errors import (
    BotError,
    EmptyMessage,
    LLMEmptyReply,
    LLMError,
    LLMOnlyThought,
    MemoryUnavailable,
    NotLatestAnswer,
    StoppedBeforeAnswer,
)
from bot.llm.client import ChatStream, LLMClient
from bot.llm.models import ModelRegistry
from bot.llm.tokens import PER_MESSAGE, TokenCounter
from bot.memory.store import Loaded, Store, TurnLock, UsageRecord
from bot.models import ImageRef, Place, Speaker, TokenUsage, Turn
from bot.ops.metrics import Metrics
from bot.tools.control import ToolService
from bot.tools.loop import CHARS_PER_TOKEN, ToolRun, ToolStep
from bot.tools.mcp import ToolInfo

log = logging.getLogger(__name__)

FINISH_NOTES = {
    "length": "The answer reached the length limit (`llm.max_tokens`) and stops here.",
    "content_filter": "The provider's content filter stopped this answer.",
}
CUT_MESSAGE_NOTE = "Your message was too long for the model, so only its start was read."


def fallback_note(failed: str, answered: str) -> str:
    return f"`{failed}` could not answer right now, so `{answered}` answered instead."


@dataclass(slots=True)
class ReplyOutcome:
    text: str
    finish_reason: str
    usage: TokenUsage
    # Short notes for the person: a cut-off by max_tokens, their message was cut, ...
    notes: list[str] = field(default_factory=list)
    history_length: int = 0
    # The model's thoughts (never stored in history nor sent back to the model).
    thinking: str = ""


class ConversationService:
    def __init__(
        self,
        *,
        store: Store,
        llm: LLMClient,
        counter: TokenCounter,
        usage: UsageService,
        llm_config: LLMConfig,
        default_persona: str,
        metrics: Metrics | None = None,
        attachments: AttachmentsConfig | None = None,
        max_images: int = 4,
        summaries: SummaryService | None = None,
        models: ModelRegistry | None = None,
        choices: ModelChoiceService | None = None,
        tools: ToolService | None = None,
    ) -> None:
        self.attachments = attachments or AttachmentsConfig()
        # Images of the most recent turns sent to a vision model (history.max_images).
        self.max_images = max_images
        self.store = store
        self.summaries = summaries
        self.llm = llm
        self.counter = counter
        self.usage = usage
        self.llm_config = llm_config
        self.default_persona = default_persona
        self.metrics = metrics
        self.bot_name = "Assistant"
        # Several models (/model): without a registry, `llm` is the one model.
        self.models = models or ModelRegistry.single(llm, counter)
        self.choices = choices or ModelChoiceService(store, self.models)
        self.tools = tools

    def reply(
        self,
        place: Place,
        speaker: Speaker,
        text: str,
        *,
        message_id: int | None = None,
        files: Sequence[Source] = (),
        quoted: Quoted | None = None,
    ) -> Reply:
        """Start answering `text`; use as `async with service.reply(...) as r: async for d in r`.

        `files` are read once the channel is held (so replies keep arrival order), and
        `quoted` is quoted unless its message is already in the history. A message left
        with nothing to read raises `EmptyMessage` (with notes on its files)."""
        reply = Reply(self, place, speaker, text, message_id)
        reply.files, reply.quoted = list(files), quoted
        return reply

    def regenerate(self, place: Place, speaker: Speaker, question_id: int) -> Reply:
        """Answer the channel's latest question (the user message `question_id`) again,
        from the same history; the stored answer is replaced when the new one is done.
        `speaker` is who asked for it (their quota and usage)."""
        return RegenerateReply(self, place, speaker, "", question_id)

    async def model_offers_tools(self, place: Place) -> bool:
        """Whether the model answering in `place` may call tools (its `tools` flag)."""
        return (await self.choices.current(place)).spec.tools

    async def reset(self, channel_id: int) -> int:
        return await self.store.reset(channel_id)


class Reply:
    """One reply in progress. Iterate it for text deltas; `outcome` is set when it completed.

    Iterating yields the answer only; set `on_thinking` to see the model's thinking pieces
    as they arrive (to show that it is alive; they are never part of the answer).
    """

    def __init__(
        self,
        service: ConversationService,
        place: Place,
        speaker: Speaker,
        text: str,
        message_id: int | None,
    ) -> None:
        self.s = service
        self.place = place
        self.speaker = speaker
        self.text = text
        self.message_id = message_id
        self.outcome: ReplyOutcome | None = None
        self.context: BuiltContext | None = None
        self._stack = contextlib.AsyncExitStack()
        self._lock: TurnLock | None = None
        self._stream: ChatStream | None = None
        self._started = 0.0
        self._first_token_at: float | None = None
        self._user_turn: Turn | None = None
        self.files: list[Source] = []
        self.quoted: Quoted | None = None
        # What the files (and the quoted message's) gave, once read.
        self.attachments: Prepared | None = None
        # Base64 bytes of the images this turn brings (stored with it on commit).
        self._new_images: dict[str, str] = {}
        self._history: list[Turn] = []
        self._persona_tokens = 0
        # The model answering (after any fallback) and its token counter.
        self.spec: ModelSpec = service.models.default
        self.counter = service.counter
        self._notes: list[str] = []
        self.on_thinking: Callable[[str], None] | None = None
        # Tool use: set `on_tool_steps` (before iterating) to see each call as it runs.
        self.on_tool_steps: Callable[[list[ToolStep]], None] | None = None
        self._tools: ToolRun | None = None
        # True while the model's stream is read: only then may Stop cut the reply.
        self.reading = False

    async def __aenter__(self) -> Reply:
        s = self.s
        try:
            self.spec = (await s.choices.current(self.place)).spec
            self.counter = s.models.counter(self.spec)
            loaded, self._lock = await self._stack.enter_async_context(
                s.store.turn(self.place, self.speaker.id, order=self.message_id)
            )
            s.usage.check_quota(loaded.user_tokens_today)
            await self._read_files(loaded.history)
            persona = resolve(loaded.personas, s.default_persona)
            system = render(persona.text, self.place, s.bot_name)
            history, self._user_turn = self._question(loaded)
            self._history = history
            self._persona_tokens = s.counter.count_message({"role": "system", "content": system})
            images = await self._images_to_send(history)
            user_turn = self._user_turn
            # Tools this place may use; each model in the fallback chain says whether it can.
            available = await self._available_tools()
            offered: dict[str, list[ToolInfo]] = {}

            def messages_for(spec: ModelSpec) -> list[dict[str, Any]]:
                # Each model has its own context budget and token calibration; only a
                # model with vision is sent images (the others get placeholders).
                self.spec, self.counter = spec, s.models.counter(spec)
                tools = offered[spec.name] = available if spec.tools else []
                self.context = build_context(
                    system,
                    history,
                    user_turn,
                    context_tokens=spec.context_tokens - self._tool_reserve(tools),
                    reply_tokens=spec.max_tokens,
                    counter=self.counter,
                    images=images if spec.vision else None,
                    image_tokens=s.attachments.image_tokens,
                    summary=loaded.summary.text if loaded.summary else "",
                )
                return self.context.messages

            def tools_for(spec: ModelSpec) -> list[dict[str, Any]] | None:
                return [t.spec() for t in offered[spec.name]] or None

            if s.metrics:
                s.metrics.reply_started()
            self._started = time.monotonic()
            routed = await s.models.open(self._stack, self.spec, messages_for, tools_for)
            self._stream = routed.stream
            if routed.failed:
                self._notes.append(fallback_note(routed.failed[0][0].name, routed.spec.name))
            if offered[routed.spec.name]:
                self._tools = self._tool_run(offered[routed.spec.name])
        except BaseException as exc:
            self._note_failure(exc)
            await self._stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def _question(self, loaded: Loaded) -> tuple[list[Turn], Turn]:
        """The history the model reads and the question it answers: a new user turn."""
        content, refs = self._content_and_images()
        turn = Turn(
            role="user",
            content=content,
            tokens=self.s.counter.count(speaker_line(self.speaker.name, content)),
            at=time.time(),
            author_id=self.speaker.id,
            author_name=self.speaker.name,
            message_id=self.message_id,
            images=refs,
        )
        return loaded.history, turn

    async def _store(self, reply_turn: Turn, usage: TokenUsage) -> int:
        """Keep the exchange (one atomic write that also releases the channel)."""
        assert self._user_turn is not None and self._lock is not None
        return await self.s.store.commit(
            self.place,
            [self._user_turn, reply_turn],
            self._usage_record(usage),
            self._lock,
            # None: neither this turn nor the history has images, nothing to store or prune.
            images=self._new_images
            if self._new_images or any(t.images for t in self._history)
            else None,
        )

    async def _read_files(self, history: list[Turn]) -> None:
        """Quote the message replied to (if new here) and read the attached files."""
        sources = list(self.files)
        q = self.quoted
        if q is not None and not any(t.message_id == q.message_id for t in history):
            quote = quote_block(q.author, q.text)
            self.text = f"{quote}\n\n{self.text}" if self.text else quote
            sources = [*q.sources, *sources]
        if sources:  # images are fetched only for a model with vision (else: one note)
            self.attachments = await prepare(sources, self.s.attachments, vision=self.spec.vision)
        if not has_visible_text(self.text) and (not self.attachments or self.attachments.empty):
            raise EmptyMessage(self.attachments.notes if self.attachments else None)

    def _content_and_images(self) -> tuple[str, tuple[ImageRef, ...]]:
        """The stored text of the user turn (file blocks appended) and its image refs."""
        prepared = self.attachments
        if prepared is None:
            return self.text, ()
        content = "\n\n".join(p for p in (self.text, prepared.text) if p)
        refs = []
        for image in prepared.images:
            ref = ImageRef(secrets.token_hex(8), image.name, image.mime, image.width, image.height)
            self._new_images[ref.id] = image.b64()
            refs.append(ref)
        return content, tuple(refs)

    async def _images_to_send(self, history: list[Turn]) -> dict[str, str]:
        """The newest `max_images` images (this turn's first), loaded from Redis if stored."""
        s = self.s
        if not self.spec.vision or s.max_images == 0:
            return {}
        assert self._user_turn is not None
        wanted: list[str] = []
        for turn in [self._user_turn, *reversed(history)]:
            for ref in turn.images:
                if len(wanted) < s.max_images:
                    wanted.append(ref.id)
        found = {i: self._new_images[i] for i in wanted if i in self._new_images}
        stored = [i for i in wanted if i not in found]
        if stored:
            found.update(await s.store.images(self.place.channel_id, stored))
        return found

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        assert self._stream is not None, "use `async with` before iterating"
        source = self._tools.run(self._stream) if self._tools else self._stream.deltas()
        self.reading = True
        try:
            async for delta in source:
                if self._first_token_at is None:
                    self._first_token_at = time.monotonic()
                    if self.s.metrics:
                        self.s.metrics.observe_first_token(self._first_token_at - self._started)
                if not delta.thinking:
                    yield delta.text
                elif self.on_thinking is not None:
                    self.on_thinking(delta.text)
        finally:
            self.reading = False
        await self._commit()

    async def stop_here(self) -> None:
        """Keep what was streamed so far as the answer, marked as stopped (Stop button).

        Called after the reading was cancelled mid-stream; the text the person saw is
        everything streamed, so that is what the history keeps.
        """
        await self._commit(stopped=True)

    async def _commit(self, *, stopped: bool = False) -> None:
        s, stream = self.s, self._stream
        assert stream is not None and self.context is not None and self._user_turn is not None
        assert self._lock is not None
        text = stream.text
        note = None
        if self._tools:
            stream, text = self._tools.last, self._tools.text
            note = self._tools.history_note(self._tool_config().keep_results)
        if not text.strip():
            if stopped:
                raise StoppedBeforeAnswer()
            if stream.thinking.strip():
                raise LLMOnlyThought(cut=stream.finish_reason == "length")
            raise LLMEmptyReply()
        usage = self._tool_usage() if self._tools else self._usage(stream)
        reply_turn = Turn(
            role="assistant",
            content=text,
            # Thinking tokens are in `completion_tokens` but not in the stored turn; a
            # tool loop's usage covers several calls.
            tokens=self.counter.count(text) + self.counter.count(note or "")
            if note or stream.thinking
            else usage.completion_tokens,
            at=time.time(),
            tool_note=note,
            stopped=stopped,
        )
        length = await self._store(reply_turn, usage)
        notes = [*(self.attachments.notes if self.attachments else []), *self._notes]
        if self.context.user_message_cut:
            notes.append(CUT_MESSAGE_NOTE)
        finish = "stopped" if stopped else stream.finish_reason or "stop"
        if finish in FINISH_NOTES:
            notes.append(FINISH_NOTES[finish])
        self.outcome = ReplyOutcome(text, finish, usage, notes, length, stream.thinking)
        self._maybe_summarize([*self._history, self._user_turn, reply_turn])
        elapsed = time.monotonic() - self._started
        if s.metrics:
            s.metrics.reply_finished()
            s.metrics.add_tokens(usage.prompt_tokens, usage.completion_tokens)
        log.info(
            "reply channel=%s prompt_tokens=%d completion_tokens=%d%s first_token=%.2fs "
            "total=%.2fs finish=%s history=%d",
            self.place.channel_id,
            usage.prompt_tokens,
            usage.completion_tokens,
            " (estimated)" if usage.estimated else "",
            (self._first_token_at or time.monotonic()) - self._started,
            elapsed,
            finish,
            length,
        )

    def _maybe_summarize(self, history: list[Turn]) -> None:
        """Start folding old turns into the summary, in the background, if any left the window."""
        summaries, user_turn = self.s.summaries, self._user_turn
        if summaries is None or user_turn is None:
            return
        message_tokens = user_turn.tokens + PER_MESSAGE
        if summaries.needed(history, self._persona_tokens, message_tokens):
            summaries.schedule(
                FoldTask(self.place, self._persona_tokens, message_tokens, self.s.bot_name)
            )

    def _usage(self, stream: ChatStream, extra_prompt: int = 0) -> TokenUsage:
        """Reported usage if the provider sent it (and learn from it), else our estimate.

        `extra_prompt`: tokens a tool loop's request had beyond the history (no learning
        from those: the specs and results are not in our estimate the same way)."""
        assert self.context is not None
        reported = stream.usage
        if reported is not None and reported.prompt_tokens > 0:
            if not extra_prompt:
                self.counter.observe(self.context.prompt_tokens, reported.prompt_tokens)
            return TokenUsage(reported.prompt_tokens, reported.completion_tokens)
        return TokenUsage(
            self.counter.calibrated(self.context.prompt_tokens + extra_prompt),
            self.counter.count(stream.text) + self.counter.count(stream.thinking),
            estimated=True,
        )

    # --- tools (bot.tools) ----------------------------------------------------------------

    def _tool_config(self) -> MCPConfig:
        assert self.s.tools is not None
        return self.s.tools.config

    async def _available_tools(self) -> list[ToolInfo]:
        """The tools of this place, if a model that may answer here (fallbacks included)
        can use them; each model then gets them only with its own `tools` flag."""
        s = self.s
        if s.tools is None or not any(m.tools for m in s.models.chain(self.spec)):
            return []
        return await s.tools.for_reply(self.place, True)

    def _tool_reserve(self, tools: list[ToolInfo]) -> int:
        """Context tokens history leaves for the tools: their descriptions, and room for
        results (up to a quarter of the window)."""
        if not tools:
            return 0
        window = self.spec.context_tokens
        results = min(self._tool_config().max_result_chars // CHARS_PER_TOKEN, window // 4)
        return self.counter.count(json.dumps([t.spec() for t in tools])) + results

    def _tool_run(self, tools: list[ToolInfo]) -> ToolRun:
        s, context = self.s, self.context
        assert s.tools is not None and context is not None

        async def open_next(
            messages: list[dict[str, object]], specs: list[dict[str, object]], choice: str | None
        ) -> ChatStream:
            stream = s.models.client(spec).stream(messages, tools=specs, tool_choice=choice)
            return await self._stack.enter_async_context(stream)

        def show(steps: list[ToolStep]) -> None:
            if self.on_tool_steps is not None:
                self.on_tool_steps(steps)

        spec, counter = self.spec, self.counter  # the model answering (after any fallback)
        left = spec.context_tokens - spec.max_tokens - context.prompt_tokens
        return ToolRun(
            manager=s.tools.manager,
            tools=tools,
            config=s.tools.config,
            messages=context.messages,
            open_stream=open_next,
            counter=counter,
            context_left=left,
            spec_tokens=counter.count(json.dumps([t.spec() for t in tools])),
            metrics=s.metrics,
            on_steps=show,
        )

    def _tool_usage(self) -> TokenUsage:
        """Usage summed over every model call of the tool loop."""
        assert self._tools is not None
        calls = [
            self._usage(st, extra)
            for st, extra in zip(self._tools.streams, self._tools.extra_prompt, strict=True)
        ]
        return TokenUsage(
            sum(u.prompt_tokens for u in calls),
            sum(u.completion_tokens for u in calls),
            estimated=any(u.estimated for u in calls),
        )

    def _usage_record(self, usage: TokenUsage) -> UsageRecord:
        return UsageRecord(
            user_id=self.speaker.id,
            channel_id=self.place.channel_id,
            guild_id=self.place.guild_id,
            # The configured name: usage and prices are kept per model people can choose.
            model=self.spec.name,
            usage=usage,
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        try:
            if self.outcome is None:
                if exc is None:
                    exc = LLMError("the reply was abandoned before it finished")
                self._note_failure(exc)
                await self._record_spent_tokens()
        finally:
            await self._stack.__aexit__(exc_type, exc, tb)
        return None

    async def _record_spent_tokens(self) -> None:
        """A failed reply stores no turn, but tokens the provider already spent still count."""
        stream = self._stream
        if stream is None or self.context is None:
            return
        usage = (
            self._usage(stream)  # a reply that only thought: the provider reported it
            if stream.finish_reason is not None
            else TokenUsage(
                self.counter.calibrated(self.context.prompt_tokens),
                self.counter.count(stream.text) + self.counter.count(stream.thinking),
                estimated=True,
            )
        )
        if self._tools and self._tools.streams:  # every model call of the tool loop
            usage = TokenUsage(
                sum(
                    self.counter.calibrated(self.context.prompt_tokens + extra)
                    for extra in self._tools.extra_prompt
                ),
                self.counter.count(self._tools.text),
                estimated=True,
            )
        with contextlib.suppress(BotError):
            await self.s.store.record_usage(self._usage_record(usage), self._lock)

    def _note_failure(self, exc: BaseException) -> None:
        # A cancelled reply (shutdown) is expected, not a bug: no ERROR, no traceback.
        expected = isinstance(exc, BotError | asyncio.CancelledError)
        kind = getattr(exc, "kind", None) or (
            "memory"
            if isinstance(exc, MemoryUnavailable)
            else "interrupted"
            if isinstance(exc, asyncio.CancelledError)
            else type(exc).__name__
        )
        if self.s.metrics and self._started:
            self.s.metrics.reply_failed(kind)
        log.log(
            logging.INFO if expected else logging.ERROR,
            "reply channel=%s failed kind=%s after=%.2fs",
            self.place.channel_id,
            kind,
            time.monotonic() - self._started if self._started else 0.0,
            exc_info=not expected,
        )


class RegenerateReply(Reply):
    """The latest question answered again; the new answer replaces the stored one.

    The channel is held like any reply, so nothing can slip in between; the stored
    exchange is checked twice: when loading (else `NotLatestAnswer` before the model is
    called) and, atomically, when replacing (a /reset meanwhile wins).
    """

    async def _read_files(self, history: list[Turn]) -> None:
        """Nothing to read: the question is the stored one, files and all."""

    def _question(self, loaded: Loaded) -> tuple[list[Turn], Turn]:
        history = loaded.history
        if (
            len(history) < 2
            or len(loaded.tail) != 2
            or history[-2].role != "user"
            or history[-2].message_id != self.message_id
            or history[-1].role != "assistant"
        ):
            raise NotLatestAnswer()
        self._expected = loaded.tail
        return history[:-2], history[-2]

    async def _store(self, reply_turn: Turn, usage: TokenUsage) -> int:
        assert self._lock is not None
        _, length = await self.s.store.replace_latest(
            self.place, self._expected, reply_turn, self._lock
        )
        with contextlib.suppress(BotError):
            await self.s.store.record_usage(self._usage_record(usage), self._lock)
        return length
