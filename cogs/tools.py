"""/tools: which tools the model can use here, and switching them on or off."""

from __future__ import annotations

from typing import Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.client import ChatBot, place_of, require, send_ephemeral
from bot.errors import BotError
from bot.tools.control import ToolsHere

Scope = Literal["channel", "server"]
LIST_LIMIT = 1900


def describe(here: ToolsHere) -> str:
    """The /tools answer: the switch, the model's support, then one line per tool."""
    if not here.configured:
        return "No tool servers are configured for this bot (`[[mcp.servers]]`)."
    lines = [f"Tools are **{'on' if here.enabled else 'off'}** here."]
    if not here.model_supports:
        lines.append("The model answering here does not use tools (`tools = true` is not set).")
    if not here.tools:
        lines.append("No tool server is connected right now.")
    for tool in here.tools:
        about = " ".join(tool.description.split())[:100]
        line = f"• `{tool.name}` ({tool.server})" + (f": {about}" if about else "")
        if sum(len(x) + 1 for x in lines) + len(line) > LIST_LIMIT:
            lines.append("• …")
            break
        lines.append(line)
    return "\n".join(lines)


class Tools(commands.Cog):
    def __init__(self, bot: ChatBot) -> None:
        self.bot = bot
        self.services = bot.services

    @app_commands.command()
    @app_commands.describe(
        mode="on / off: let the model use tools here or not (leave empty to list them)",
        scope="Where on/off applies (default: this channel)",
    )
    async def tools(
        self,
        interaction: discord.Interaction[ChatBot],
        mode: Literal["on", "off"] | None = None,
        scope: Scope = "channel",
    ) -> None:
        """List the tools the model can use here, or switch them on or off."""
        service = self.services.tools
        if service is None:
            raise BotError("Tools are not available in this bot.")
        place = place_of(interaction.channel)
        if mode is not None:
            if scope == "server":
                if interaction.guild is None:
                    raise BotError("Server settings only exist in servers; use scope `channel`.")
                require(interaction, "manage_guild", "Manage Server")
                ident = interaction.guild.id
            else:
                require(interaction, "manage_channels", "Manage Channels")
                assert interaction.channel_id is not None
                ident = interaction.channel_id
            await service.switch(scope, ident, mode == "on")
            where = "this server" if scope == "server" else "this channel"
            await send_ephemeral(interaction, f"🔧 Tools are now **{mode}** in {where}.")
            return
        supports = await self.services.conversations.model_offers_tools(place)
        await send_ephemeral(interaction, describe(await service.here(place, supports)))


async def setup(bot: ChatBot) -> None:
    await bot.add_cog(Tools(bot))
