"""Answering messages: Discord message in, streamed reply out.

Thin glue: the rules for *whether* to answer live in `bot.delivery.gate`, the conversation in
`bot.chat.conversation`, and the pacing and splitting of the streamed reply in
`bot.delivery.renderer`. This cog gathers facts from the Message and adapts Discord's message
API to the renderer's Sink.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import discord
from discord.ext import commands

from bot.chat.attachments import Quoted, Source, url_fetch
from bot.chat.controls import RunningReply
from bot.chat.conversation import Reply
from bot.client import ChatBot, bucket_key, place_of
from bot.delivery.gate import MessageFacts, Verdict, decide, has_visible_text, needs_chat_mode
from bot.delivery.renderer import ReplyRenderer
from bot.delivery.thinking import ThinkingStatus, thinking_button
from bot.errors import (
    AnswerInProgress,
    BotError,
    EmptyMessage,
    MemoryUnavailable,
    Throttled,
    user_message,
)
from bot.models import Button, Speaker
from bot.tools.loop import steps_header

log = logging.getLogger(__name__)

NO_PINGS = discord.AllowedMentions.none()
INTERRUPTED = "⚠️ Interrupted: the bot is restarting. Ask again in a moment."
STOPPED = "-# ⏹ Stopped."
# When requests queue for the shared budget, tidying edits (an older reply's Regenerate
# taken away) wait as if their text were this much younger than everyone's.
TIDY_DELAY_S = 5.0


def button_view(buttons: tuple[Button, ...]) -> discord.ui.View | None:
    """The components for `buttons`, or None for none.

    Only the look: presses are dispatched by the `DynamicItem`s cogs register for the
    custom ids, so the view is stopped once sent and never kept in discord.py's store.
    """
    if not buttons:
        return None
    view = discord.ui.View(timeout=None)
    for b in buttons:
        view.add_item(
            discord.ui.Button(
                custom_id=b.custom_id,
                label=b.label,
                emoji=b.emoji,
                style=getattr(discord.ButtonStyle, b.style),
            )
        )
    return view


class DiscordSink:
    """The renderer's view of Discord: post, edit, show typing. Nothing here pings."""

    def __init__(self, message: discord.Message | discord.PartialMessage) -> None:
        self.message = message
        self.channel = message.channel

    async def send(
        self, content: str, reply_to: object | None, buttons: tuple[Button, ...]
    ) -> object:
        target = reply_to if isinstance(reply_to, discord.Message) else self.message
        view = button_view(buttons)
        reference = target.to_reference(fail_if_not_exists=False)
        try:
            if view is None:
                return await self.channel.send(
                    content, reference=reference, mention_author=False, allowed_mentions=NO_PINGS
                )
            return await self.channel.send(
                content,
                reference=reference,
                mention_author=False,
                allowed_mentions=NO_PINGS,
                view=view,
            )
        finally:
            if view is not None:
                view.stop()

    async def edit(self, handle: object, content: str, buttons: tuple[Button, ...]) -> None:
        assert isinstance(handle, discord.Message)
        view = button_view(buttons)
        try:
            await handle.edit(content=content, allowed_mentions=NO_PINGS, view=view)
        finally:
            if view is not None:
                view.stop()

    async def typing(self) -> None:
        await self.channel.typing()

    def bucket(self, kind: str) -> str:
        return bucket_key(kind, self.channel.id)


def readable_text(message: discord.Message, bot_id: int) -> str:
    """The message as the model should read it: no mention of the bot, names for ids."""
    text = re.sub(rf"<@!?{bot_id}>", "", message.content)
    names = {str(u.id): u.display_name for u in message.mentions}
    text = re.sub(r"<@!?(\d+)>", lambda m: "@" + names.get(m[1], "someone"), text)
    roles = {str(r.id): r.name for r in message.role_mentions}
    text = re.sub(r"<@&(\d+)>", lambda m: "@" + roles.get(m[1], "role"), text)
    return text.strip()


class Chat(commands.Cog):
    def __init__(self, bot: ChatBot) -> None:
        self.bot = bot
        self.services = bot.services
        self.config = bot.services.config.discord

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        if self.bot.user is not None:
            self.services.conversations.bot_name = self.bot.user.display_name

    def facts(self, message: discord.Message, text: str) -> MessageFacts:
        me = self.bot.user
        assert me is not None
        channel = message.channel
        ref = message.reference.resolved if message.reference else None
        parent_id = channel.parent_id if isinstance(channel, discord.Thread) else None
        parent = channel.parent if isinstance(channel, discord.Thread) else channel
        roles = getattr(message.author, "roles", [])
        return MessageFacts(
            author_is_bot=message.author.bot or message.author.id == me.id,
            is_dm=message.guild is None,
            guild_id=message.guild.id if message.guild else None,
            channel_id=channel.id,
            parent_id=parent_id,
            category_id=getattr(parent, "category_id", None),
            role_ids=frozenset(r.id for r in roles),
            mentions_bot=any(u.id == me.id for u in message.mentions),
            replies_to_bot=isinstance(ref, discord.Message) and ref.author.id == me.id,
            # An attachment alone is something to read, and so is a message replied to.
            has_text=has_visible_text(text)
            or bool(message.attachments)
            or (isinstance(ref, discord.Message) and ref.author.id != me.id),
        )

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if not self.bot.accepting or self.bot.user is None:
            return
        text = readable_text(message, self.bot.user.id)
        facts = self.facts(message, text)
        chat_mode = False
        if needs_chat_mode(facts, self.config):
            try:
                chat_mode = await self.services.store.chat_mode(message.channel.id)
            except MemoryUnavailable:
                return  # cannot tell whether we were asked; stay quiet
        verdict = decide(facts, self.config, chat_mode=chat_mode)
        if verdict is Verdict.IGNORE:
            return
        if verdict is Verdict.NO_TEXT:
            await self.notice(message, EmptyMessage.user_text)
            return
        retry_after = self.services.cooldown.hit(message.author.id)
        if retry_after is not None:
            if self.services.cooldown.should_warn(message.author.id, retry_after):
                await self.notice(message, Throttled(retry_after).user_text)
            return
        self.bot.start_reply(self.answer(message, text), name=f"reply {message.id}")

    async def notice(self, message: discord.Message | discord.PartialMessage, text: str) -> None:
        """A short reply that is not a model answer (throttling, no text, ...)."""
        await self.bot.budget.acquire(bucket_key("send", message.channel.id))
        try:
            await message.reply(text, mention_author=False, allowed_mentions=NO_PINGS)
        except discord.HTTPException as exc:
            log.warning("could not send a notice in %s: %s", message.channel.id, exc)

    def sources(self, message: discord.Message) -> list[Source]:
        """A message's files, fetched through the bot's one HTTP session when read."""
        session = self.services.session
        return [
            Source(a.filename, url_fetch(session, a.url), a.size, a.content_type)
            for a in message.attachments
        ]

    def quoted(self, message: discord.Message) -> Quoted | None:
        """The message this one replies to, unless it is the bot's own."""
        ref = message.reference
        resolved = ref.resolved if ref else None
        me = self.bot.user
        if not isinstance(resolved, discord.Message) or me is None or resolved.author.id == me.id:
            return None
        text = readable_text(resolved, me.id)
        return Quoted(resolved.id, resolved.author.display_name, text, self.sources(resolved))

    async def answer(
        self,
        message: discord.Message,
        text: str,
        *,
        sink: DiscordSink | None = None,
        running: RunningReply | None = None,
        press: bool = False,
    ) -> None:
        speaker = Speaker(message.author.id, message.author.display_name)
        place = place_of(message.channel)
        if running is None:
            try:
                running = self.services.controls.begin(
                    place.channel_id, message.id, message.author.id
                )
            except AnswerInProgress:
                log.info("message %s is already being answered", message.id)  # a replay
                return
        conversation = self.services.conversations
        await self.deliver(
            message,
            sink or DiscordSink(message),
            running,
            lambda: conversation.reply(
                place,
                speaker,
                text,
                message_id=message.id,
                files=self.sources(message),
                quoted=self.quoted(message),
            ),
            press=press,
        )

    async def deliver(
        self,
        question: discord.Message | discord.PartialMessage,
        sink: DiscordSink,
        running: RunningReply,
        open_reply: Callable[[], AbstractAsyncContextManager[Reply]],
        *,
        press: bool = False,
    ) -> None:
        """Stream one reply into `sink` with its buttons: Stop while it is written, then
        Regenerate (stored) or Retry (failed). `press`: a button asked for it; a failure
        before any text is then raised (for the presser) and the old messages stay."""
        controls = self.services.controls
        renderer = ReplyRenderer(sink, self.bot.budget, edit_interval=self.config.edit_interval)
        renderer.set_buttons(running.buttons_while_running())
        metrics = self.services.metrics
        started = time.monotonic()
        thinking = ThinkingStatus(renderer.set_status)
        with metrics.stream():
            try:
                async with open_reply() as reply:
                    reply.on_thinking = thinking
                    reply.on_tool_steps = lambda steps: renderer.set_header(steps_header(steps))
                    stopped = await controls.relay(running, reply, renderer.push)
                running.extra = await self.thought_buttons(running.channel_id, thinking.text)
                renderer.set_buttons(running.buttons_when_stored())
                if stopped:
                    await renderer.fail(STOPPED)
                else:
                    await renderer.finish()
                metrics.observe_final_edit(time.monotonic() - started)
                await self.retire_previous(running, renderer)
                if reply.outcome and reply.outcome.notes:
                    await self.notice(question, "\n".join(f"-# {n}" for n in reply.outcome.notes))
            except EmptyMessage as exc:  # e.g. only a file that could not be read
                await self.notice(
                    question, "\n".join([exc.user_text, *(f"-# {n}" for n in exc.notes)])
                )
            except asyncio.CancelledError as exc:
                renderer.set_buttons(running.buttons_when_failed(exc))
                await renderer.fail(INTERRUPTED)
                raise
            except Exception as exc:
                if not isinstance(exc, BotError):
                    log.exception("reply in channel %s failed", running.channel_id)
                if press and not renderer.text:
                    await renderer.finish()  # nothing new shown: the old messages stay
                    raise
                running.extra = await self.thought_buttons(running.channel_id, thinking.text)
                renderer.set_buttons(running.buttons_when_failed(exc))
                await renderer.fail(f"⚠️ {user_message(exc)}")
            finally:
                controls.end(running)

    async def take_buttons(
        self,
        message: discord.Message | discord.PartialMessage,
        *,
        keep: tuple[Button, ...] = (),
        later: bool = False,
    ) -> None:
        """Leave only `keep` under one of the bot's messages (one edit, in the budget).
        `later`: after the streams' edits when requests queue (it is only tidying up)."""
        budget = self.bot.budget
        priority = budget.clock() + TIDY_DELAY_S if later else None
        await budget.acquire(bucket_key("edit", message.channel.id), priority)
        view = button_view(keep)
        try:
            await message.edit(view=view, allowed_mentions=NO_PINGS)
        except discord.NotFound:
            pass  # deleted: no button left to take away
        except discord.HTTPException as exc:
            log.warning(
                "could not remove old buttons in %s: HTTP %s", message.channel.id, exc.status
            )
        finally:
            if view is not None:
                view.stop()

    async def retire_previous(self, running: RunningReply, renderer: ReplyRenderer) -> None:
        """The channel's previous answer is no longer the latest: its Regenerate goes
        (one edit, within the budget)."""
        last = renderer.stats.handles[-1] if renderer.stats.handles else None
        if not isinstance(last, discord.Message):
            return
        previous = self.services.controls.swap_latest(
            running.channel_id, running.question_id, last.id, running.extra
        )
        if previous is not None:
            old = last.channel.get_partial_message(previous.message_id)  # type: ignore[union-attr]
            await self.take_buttons(old, keep=previous.buttons_left, later=True)

    async def thought_buttons(self, channel_id: int, text: str) -> tuple[Button, ...]:
        """Keep the model's thoughts for a day; the "Show thinking" button for the reply
        (none without thoughts, with `show_thinking = "off"` or when Redis is down)."""
        if self.config.show_thinking != "button" or not text.strip():
            return ()
        try:
            key = await self.services.thoughts.keep(channel_id, text)
        except MemoryUnavailable:
            return ()  # the answer matters more than the button
        return () if key is None else (thinking_button(channel_id, key),)


async def setup(bot: ChatBot) -> None:
    await bot.add_cog(Chat(bot))
