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

from bot.chat.controls import CUSTOM_ID, Action, RunningReply, custom_id, may_press
from bot.client import ChatBot, send_ephemeral
from bot.errors import AnswerFinished, AnswerInProgress, BotError, NotYourReply, user_message
from cogs.chat import Chat, button_view

log = logging.getLogger(__name__)

RESTARTING = "The bot is restarting. Try again in a moment."


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
            await interaction.response.edit_message(view=view)
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
        try:
            chat = self.bot.get_cog(Chat.__cog_name__)
            if not isinstance(chat, Chat):
                raise BotError(RESTARTING)
            if action == "regen":
                await chat.regenerate(interaction, running)
            else:
                await chat.retry(interaction, running)
        except Exception as exc:
            if not isinstance(exc, BotError):
                log.exception("%s in channel %s failed", action, running.channel_id)
            await send_ephemeral(interaction, user_message(exc))
        finally:
            self.controls.end(running)


async def setup(bot: ChatBot) -> None:
    bot.add_dynamic_items(ReplyButton)
    await bot.add_cog(ReplyButtons(bot))


async def teardown(bot: ChatBot) -> None:
    bot.remove_dynamic_items(ReplyButton)
