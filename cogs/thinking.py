"""The "Show thinking" button: whoever presses it gets the model's thoughts, privately.

Thin glue: the thoughts are kept by `bot.chat.thoughts`, the button's id and the
message's form come from `bot.delivery.thinking`. A `DynamicItem` dispatches presses
by their custom_id, so buttons keep working after a restart (for as long as the
thoughts are kept).
"""

from __future__ import annotations

import io
import re
from typing import Any, cast

import discord

from bot.client import ChatBot, send_ephemeral
from bot.delivery.thinking import (
    FILE_NAME,
    THINK_LABEL,
    THINK_TEMPLATE,
    thinking_button,
    thoughts_message,
)
from bot.errors import BotError, ThoughtsExpired, user_message


class ShowThinking(discord.ui.DynamicItem[discord.ui.Button[Any]], template=THINK_TEMPLATE):
    def __init__(self, channel_id: int, key: str) -> None:
        super().__init__(
            discord.ui.Button(
                label=THINK_LABEL, custom_id=thinking_button(channel_id, key).custom_id
            )
        )
        self.channel_id = channel_id
        self.key = key

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> ShowThinking:
        return cls(int(match["channel"]), match["key"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        services = cast(ChatBot, interaction.client).services
        try:
            if interaction.channel_id != self.channel_id:
                raise ThoughtsExpired()
            text = await services.thoughts.get(self.channel_id, self.key)
        except BotError as exc:
            await send_ephemeral(interaction, user_message(exc))
            return
        content, data = thoughts_message(text)
        if data is None:
            await send_ephemeral(interaction, content)
            return
        try:
            await interaction.response.send_message(
                content,
                file=discord.File(io.BytesIO(data), filename=FILE_NAME),
                ephemeral=True,
                allowed_mentions=discord.AllowedMentions.none(),
            )
        except discord.HTTPException:
            await send_ephemeral(interaction, user_message(BotError()))


async def setup(bot: ChatBot) -> None:
    bot.add_dynamic_items(ShowThinking)


async def teardown(bot: ChatBot) -> None:
    bot.remove_dynamic_items(ShowThinking)
