"""The Stop, Regenerate and Retry buttons under replies: presses in, service calls out.

Thin glue: what a press may do and how a reply is cut or answered again lives in
`bot.chat.controls` and the Chat cog. Buttons are `DynamicItem`s matched on their
custom id, so presses on messages sent before a restart still arrive here.
"""

from __future__ import annotations

import logging
import re
from typing import Any, cast

import discord
from discord.ext import commands

from bot.chat.controls import CUSTOM_ID, Action, RunningReply, Style, custom_id, may_press
from bot.client import ChatBot, bucket_key, place_of, send_ephemeral
from bot.errors import (
    AnswerFinished,
    AnswerInProgress,
    BotError,
    NotLatestAnswer,
    NotYourReply,
    QuestionGone,
    user_message,
)
from bot.models import Button, Speaker
from cogs.chat import NO_PINGS, Chat, DiscordSink, button_view, readable_text

log = logging.getLogger(__name__)

RESTARTING = "The bot is restarting. Try again in a moment."
STYLES = ("primary", "secondary", "success", "danger")
# A reply longer than this many messages is not looked for further.
MAX_PARTS = 20


class ReuseSink(DiscordSink):
    """A new answer shown in the messages of an earlier one (Regenerate, Retry).

    The renderer's first sends edit the old parts in order (so they take the edit
    bucket's budget); past them it posts new parts. Old parts left over are for the
    caller to delete once the new answer is shown.
    """

    def __init__(
        self, question: discord.Message | discord.PartialMessage, parts: list[discord.Message]
    ) -> None:
        super().__init__(question)
        self.old = list(parts)
        self.reused = 0

    async def send(
        self, content: str, reply_to: object | None, buttons: tuple[Button, ...]
    ) -> object:
        if not self.old:
            return await super().send(content, reply_to, buttons)
        handle = self.old[0]
        await self.edit(handle, content, buttons)
        self.old.pop(0)  # only once shown: a failed edit is tried again on this part
        self.reused += 1
        return handle

    def bucket(self, kind: str) -> str:
        return super().bucket("edit" if kind == "send" and self.old else kind)

    def leftovers(self) -> list[discord.Message]:
        """Old parts the new answer did not need (none if it showed nothing)."""
        return list(self.old) if self.reused else []


def other_buttons(message: discord.Message) -> tuple[Button, ...]:
    """The buttons under `message` that are not ours (e.g. Show thinking)."""
    found: list[Button] = []
    for item in discord.ui.View.from_message(message, timeout=None).children:
        if not isinstance(item, discord.ui.Button) or item.custom_id is None:
            continue
        if CUSTOM_ID.fullmatch(item.custom_id) or item.style.name not in STYLES:
            continue
        style = cast(Style, item.style.name)
        emoji = str(item.emoji) if item.emoji else None
        found.append(Button(item.custom_id, item.label or "", emoji, style))
    return tuple(found)


class ReplyButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=CUSTOM_ID):
    """Any of the three buttons; its custom id says which, for which question, whose."""

    def __init__(self, action: Action, question_id: int, asker_id: int) -> None:
        super().__init__(discord.ui.Button(custom_id=custom_id(action, question_id, asker_id)))
        self.action: Action = action
        self.question_id = question_id
        self.asker_id = asker_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> ReplyButton:
        return cls(cast(Action, match["action"]), int(match["question"]), int(match["asker"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        cog = interaction.client.get_cog(ReplyButtons.__cog_name__)
        if isinstance(cog, ReplyButtons):
            await cog.pressed(interaction, self.action, self.question_id, self.asker_id)


class ReplyButtons(commands.Cog):
    def __init__(self, bot: ChatBot) -> None:
        self.bot = bot
        self.controls = bot.services.controls

    async def pressed(
        self, interaction: discord.Interaction[ChatBot], action: Action, question: int, asker: int
    ) -> None:
        """Answer within Discord's 3 s: refusals privately, else a silent acknowledgement
        while the reply's own messages show the effect."""
        try:
            perms = interaction.permissions
            if not may_press(
                interaction.user.id,
                asker,
                in_guild=interaction.guild is not None,
                manage_messages=perms.manage_messages,
            ):
                raise NotYourReply()
            if action == "stop":
                await self.stop(interaction, question)
            else:
                await self.again(interaction, action, question, asker)
        except BotError as exc:
            await send_ephemeral(interaction, user_message(exc))

    async def stop(self, interaction: discord.Interaction[ChatBot], question: int) -> None:
        if self.controls.stop(question) or self.controls.get(question) is not None:
            # Cut now, or already storing its end: the reply's last edit shows it.
            await interaction.response.defer()
            return
        # Nothing runs: the reply just ended (leave the buttons it ended with) or a Stop
        # was left behind by a restart (take it away).
        final = self.controls.ended_with(question)
        view = button_view(final or ())
        try:
            await interaction.response.edit_message(view=view, allowed_mentions=NO_PINGS)
        finally:
            if view is not None:
                view.stop()
        raise AnswerFinished()

    async def again(
        self, interaction: discord.Interaction[ChatBot], action: Action, question: int, asker: int
    ) -> None:
        channel_id = interaction.channel_id
        if channel_id is None or interaction.message is None:
            raise AnswerFinished()
        if not self.bot.accepting:
            raise BotError(RESTARTING)
        if self.controls.busy(channel_id):
            raise AnswerInProgress()
        # Registered before the first await: a double press finds it running.
        running = self.controls.begin(channel_id, question, asker, regenerating=action == "regen")
        try:
            await interaction.response.defer()
        except BaseException:
            self.controls.end(running)
            raise
        self.bot.start_reply(
            self.answer_again(interaction, action, running), name=f"{action} {question}"
        )

    async def answer_again(
        self, interaction: discord.Interaction[ChatBot], action: Action, running: RunningReply
    ) -> None:
        """Stream the new answer into the pressed reply's messages; tell the presser
        privately if it fails before showing anything."""
        try:
            chat = self.bot.get_cog(Chat.__cog_name__)
            channel = interaction.channel
            if not isinstance(chat, Chat) or not isinstance(channel, discord.abc.Messageable):
                raise BotError(RESTARTING)
            assert interaction.message is not None
            if action == "regen":
                question: discord.Message | discord.PartialMessage = discord.PartialMessage(
                    channel=channel,
                    id=running.question_id,
                )
            else:
                question = await self.question(channel, running.question_id)
            parts = await self.reply_parts(interaction.message, running.question_id)
            sink = ReuseSink(question, parts)
            if action == "regen":
                speaker = Speaker(interaction.user.id, interaction.user.display_name)
                place = place_of(channel)
                conversation = self.bot.services.conversations
                await chat.deliver(
                    question,
                    sink,
                    running,
                    lambda: conversation.regenerate(place, speaker, running.question_id),
                    press=True,
                )
            else:
                assert isinstance(question, discord.Message) and self.bot.user is not None
                text = readable_text(question, self.bot.user.id)
                await chat.answer(question, text, sink=sink, running=running, press=True)
            await self.drop_leftovers(sink)
        except Exception as exc:
            if not isinstance(exc, BotError):
                log.exception("%s in channel %s failed", action, running.channel_id)
            await send_ephemeral(interaction, f"⚠️ {user_message(exc)}")
            if isinstance(exc, NotLatestAnswer) and interaction.message is not None:
                chat = self.bot.get_cog(Chat.__cog_name__)
                if isinstance(chat, Chat):
                    # A stale Regenerate: take it away, keep other features' buttons.
                    message = interaction.message
                    await chat.take_buttons(message, keep=other_buttons(message))
        finally:
            self.controls.end(running)

    async def question(self, channel: discord.abc.Messageable, question_id: int) -> discord.Message:
        """The message that was asked (cached, else fetched)."""
        found = discord.utils.get(self.bot.cached_messages, id=question_id)
        if found is not None:
            return found
        try:
            return await channel.fetch_message(question_id)
        except discord.NotFound:
            raise QuestionGone() from None

    async def reply_parts(self, last: discord.Message, question_id: int) -> list[discord.Message]:
        """The bot's messages of one reply, first to `last`: each part replies to the
        previous one, the first to the question."""
        assert self.bot.user is not None
        parts = [last]
        current = last
        while len(parts) < MAX_PARTS:
            ref = current.reference
            if ref is None or ref.message_id is None or ref.message_id == question_id:
                break
            previous = ref.resolved if isinstance(ref.resolved, discord.Message) else None
            previous = previous or discord.utils.get(self.bot.cached_messages, id=ref.message_id)
            if previous is None:
                try:
                    previous = await current.channel.fetch_message(ref.message_id)
                except discord.HTTPException:
                    break
            if previous.author.id != self.bot.user.id:
                break
            parts.append(previous)
            current = previous
        parts.reverse()
        return parts

    async def drop_leftovers(self, sink: ReuseSink) -> None:
        """Delete the old parts a shorter new answer did not need, within the budget."""
        for part in sink.leftovers():
            await self.bot.budget.acquire(bucket_key("delete", part.channel.id))
            try:
                await part.delete()
            except discord.NotFound:
                pass  # someone deleted it already
            except discord.HTTPException as exc:
                # Text only: a record holding the exception would keep the whole reply alive.
                log.warning(
                    "could not delete an old reply part in %s: HTTP %s", part.channel.id, exc.status
                )


async def setup(bot: ChatBot) -> None:
    bot.add_dynamic_items(ReplyButton)
    await bot.add_cog(ReplyButtons(bot))


async def teardown(bot: ChatBot) -> None:
    bot.remove_dynamic_items(ReplyButton)
