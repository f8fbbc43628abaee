"""/model: which model answers in this channel, and choosing another one."""

from __future__ import annotations

from typing import Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.client import ChatBot, place_of, require
from bot.errors import BotError

Scope = Literal["channel", "server"]

ORIGINS = {
    "channel": "chosen for this channel",
    "parent channel": "chosen for the parent channel",
    "server": "chosen for this server",
    "default": "the bot's default",
}


class Model(commands.GroupCog, group_name="model"):
    """Pick the language model per channel or server."""

    def __init__(self, bot: ChatBot) -> None:
        self.bot = bot
        self.choices = bot.services.conversations.choices
        super().__init__()

    @app_commands.command()
    async def show(self, interaction: discord.Interaction[ChatBot]) -> None:
        """Show which model and provider answer in this channel."""
        current = await self.choices.current(place_of(interaction.channel))
        spec = current.spec
        lines = [
            f"**{spec.name}** (`{spec.model}` via `{spec.provider}`), {ORIGINS[current.source]}.",
            f"Context {spec.context_tokens:,} tokens · replies up to {spec.max_tokens:,}.",
        ]
        if spec.fallback:
            lines.append(f"Falls back to `{spec.fallback}` when its provider fails.")
        others = [n for n in self.choices.registry.names if n != spec.name]
        if others:
            lines.append("Other models: " + ", ".join(f"`{n}`" for n in others))
        await interaction.response.send_message("\n".join(lines), ephemeral=True)

    @app_commands.command(name="set")
    @app_commands.describe(
        name="A model from the bot's config",
        scope="Where it applies (default: this channel; threads follow their channel)",
    )
    async def set_(
        self,
        interaction: discord.Interaction[ChatBot],
        name: str,
        scope: Scope = "channel",
    ) -> None:
        """Choose the model that answers in this channel or the whole server."""
        require(interaction, "manage_channels", "Manage Channels")
        if scope == "server":
            if interaction.guild is None:
                raise BotError("Server models only exist in servers; use scope `channel` here.")
            ident = interaction.guild.id
        else:
            assert interaction.channel_id is not None
            ident = interaction.channel_id
        spec = await self.choices.set(scope, ident, name)
        where = "this server" if scope == "server" else "this channel"
        await interaction.response.send_message(
            f"Using **{spec.name}** (`{spec.model}` via `{spec.provider}`) in {where}.",
            ephemeral=True,
        )

    @set_.autocomplete("name")
    async def model_names(
        self, interaction: discord.Interaction[ChatBot], current: str
    ) -> list[app_commands.Choice[str]]:
        try:
            in_use: str | None = (
                await self.choices.current(place_of(interaction.channel))
            ).spec.name
        except BotError:  # Redis down: still list the models, just unmarked
            in_use = None
        return [
            app_commands.Choice(name=label, value=name)
            for label, name in self.choices.matching(current, in_use)
        ]


async def setup(bot: ChatBot) -> None:
    await bot.add_cog(Model(bot))
