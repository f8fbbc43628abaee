"""/usage: token use for yourself, this channel or this server."""

from __future__ import annotations

from typing import Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.chat.usage import describe
from bot.client import ChatBot, require, send_ephemeral
from bot.errors import BotError


class Usage(commands.Cog):
    def __init__(self, bot: ChatBot) -> None:
        self.bot = bot
        self.reports = bot.services.usage

    @app_commands.command()
    @app_commands.describe(scope="Whose usage: yours (default), this channel's or this server's")
    async def usage(
        self,
        interaction: discord.Interaction[ChatBot],
        scope: Literal["me", "channel", "server"] = "me",
    ) -> None:
        """Show token use for today, 7 and 30 days, with a daily chart."""
        if scope == "me":
            ident, title = interaction.user.id, "Your token use"
        else:
            require(interaction, "manage_channels", "Manage Channels")
            if scope == "server":
                if interaction.guild is None:
                    raise BotError("Server usage only exists in servers.")
                ident, title = interaction.guild.id, f"Token use in {interaction.guild.name}"
            else:
                assert interaction.channel_id is not None
                ident, title = interaction.channel_id, "Token use in this channel"
        await interaction.response.defer(ephemeral=True, thinking=True)
        report = await self.reports.report("user" if scope == "me" else scope, ident)
        embed = discord.Embed(
            title=title,
            description=f"Last 30 days (UTC), one bar per day:\n```\n{report.sparkline()}\n```",
        )
        for label, totals in (
            ("Today", report.today),
            ("7 days", report.week),
            ("30 days", report.month),
        ):
            embed.add_field(name=label, value=describe(totals, report.currency))
        if report.month.has_estimates:
            embed.set_footer(
                text="Estimated figures: the provider reported no usage for some replies."
            )
        await send_ephemeral(interaction, "", embed=embed)


async def setup(bot: ChatBot) -> None:
    await bot.add_cog(Usage(bot))
