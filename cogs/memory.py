"""/memory show and /memory export: what the bot remembers of this channel."""

from __future__ import annotations

import io

import discord
from discord import app_commands
from discord.ext import commands

from bot.chat.memory import describe
from bot.client import ChatBot, place_of, send_ephemeral

EMBED_MAX = 4000  # Discord allows 4096 characters in an embed description


class Memory(commands.GroupCog, group_name="memory"):
    """What the bot remembers of this channel."""

    def __init__(self, bot: ChatBot) -> None:
        self.bot = bot
        self.memory = bot.services.memory
        super().__init__()

    def _bot_name(self) -> str:
        return self.bot.services.conversations.bot_name

    @app_commands.command()
    async def show(self, interaction: discord.Interaction[ChatBot]) -> None:
        """Show how many messages are stored here, how many fit, and the running summary."""
        report = await self.memory.report(place_of(interaction.channel), self._bot_name())
        text = describe(report)
        if len(text) > EMBED_MAX:
            text = text[: EMBED_MAX - 1] + "…"
        await send_ephemeral(interaction, "", embed=discord.Embed(title="Memory", description=text))

    @app_commands.command()
    async def export(self, interaction: discord.Interaction[ChatBot]) -> None:
        """Download this channel's stored conversation (summary included) as Markdown and JSON."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        exported = await self.memory.export(place_of(interaction.channel), self._bot_name())
        files = [
            discord.File(io.BytesIO(exported.markdown.encode()), filename=f"{exported.stem}.md"),
            discord.File(io.BytesIO(exported.json.encode()), filename=f"{exported.stem}.json"),
        ]
        await interaction.followup.send(
            "This channel's stored conversation, as Markdown and as JSON.",
            files=files,
            ephemeral=True,
            allowed_mentions=discord.AllowedMentions.none(),
        )


async def setup(bot: ChatBot) -> None:
    await bot.add_cog(Memory(bot))
