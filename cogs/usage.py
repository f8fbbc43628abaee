"""/usage: token use for yourself, this channel or this server."""

from __future__ import annotations

import asyncio
import io
from typing import Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.chat import chart
from bot.chat.usage import describe, describe_models
from bot.client import ChatBot, require, send_ephemeral
from bot.errors import BotError

CHART_FILE = "usage.png"
TOP_USERS = 10


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
        """Show token use for today, 7 and 30 days, per model, with a daily chart."""
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
        report = await self.reports.report(
            "user" if scope == "me" else scope, ident, top_users=TOP_USERS
        )
        png = await asyncio.to_thread(
            chart.render, report.model_series, report.days, title=f"{title} · last 30 days (UTC)"
        )
        embed = discord.Embed(
            title=title,
            description=describe_models(report) or "No tokens used in the last 30 days.",
        )
        embed.set_image(url=f"attachment://{CHART_FILE}")
        for label, totals in (
            ("Today", report.today),
            ("7 days", report.week),
            ("30 days", report.month),
        ):
            embed.add_field(name=label, value=describe(totals, report.currency))
        if report.top_users:
            embed.add_field(
                name="Top users (30 days)",
                value="\n".join(f"<@{uid}> · {tokens:,}" for uid, tokens in report.top_users),
                inline=False,
            )
        if report.month.has_estimates:
            embed.set_footer(
                text="Estimated figures: the provider reported no usage for some replies."
            )
        file = discord.File(io.BytesIO(png), filename=CHART_FILE)
        await send_ephemeral(interaction, "", embed=embed, file=file)


async def setup(bot: ChatBot) -> None:
    await bot.add_cog(Usage(bot))
