"""/reset and /chat: a channel's memory and whether the bot answers every message there."""

from __future__ import annotations

from typing import Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.client import ChatBot, require


class Admin(commands.Cog):
    def __init__(self, bot: ChatBot) -> None:
        self.bot = bot
        self.services = bot.services

    @app_commands.command()
    @app_commands.default_permissions(manage_channels=True)
    async def reset(self, interaction: discord.Interaction[ChatBot]) -> None:
        """Forget this channel's conversation (the persona stays)."""
        require(interaction, "manage_channels", "Manage Channels")
        assert interaction.channel_id is not None
        removed = await self.services.conversations.reset(interaction.channel_id)
        await interaction.response.send_message(
            f"🧹 Memory cleared: {removed} messages forgotten. The persona stays.",
            allowed_mentions=discord.AllowedMentions.none(),
        )

    @app_commands.command()
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_channels=True)
    @app_commands.describe(mode="on: answer every message here; off: only mentions and replies")
    async def chat(
        self, interaction: discord.Interaction[ChatBot], mode: Literal["on", "off"]
    ) -> None:
        """Answer every message in this channel, or only when mentioned."""
        require(interaction, "manage_channels", "Manage Channels")
        assert interaction.channel_id is not None
        await self.services.store.set_chat_mode(interaction.channel_id, mode == "on")
        text = (
            "I'll answer every message in this channel now."
            if mode == "on"
            else "I'll answer here only when mentioned or replied to."
        )
        await interaction.response.send_message(text)


async def setup(bot: ChatBot) -> None:
    await bot.add_cog(Admin(bot))
