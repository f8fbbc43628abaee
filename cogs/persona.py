"""/persona: show, set, preset and clear the system prompt of a channel or server."""

from __future__ import annotations

from typing import Literal

import discord
from discord import app_commands
from discord.ext import commands

from bot.chat.personas import PersonaService
from bot.client import BotTree, ChatBot, place_of, require
from bot.errors import BotError

Scope = Literal["channel", "server"]
MODAL_MAX = 4000  # Discord's limit for a text input in a modal


def target(interaction: discord.Interaction[ChatBot], scope: Scope) -> int:
    """The id a persona change applies to, after the permission check for that scope."""
    if scope == "server":
        if interaction.guild is None:
            raise BotError("Server personas only exist in servers; use scope `channel` here.")
        require(interaction, "manage_guild", "Manage Server")
        return interaction.guild.id
    require(interaction, "manage_channels", "Manage Channels")
    assert interaction.channel_id is not None
    return interaction.channel_id


def where(scope: Scope) -> str:
    return "this server" if scope == "server" else "this channel"


class PersonaModal(discord.ui.Modal, title="Set the persona"):
    def __init__(self, personas: PersonaService, scope: Scope, ident: int, current: str) -> None:
        super().__init__()
        self.personas, self.scope, self.ident = personas, scope, ident
        self.text: discord.ui.TextInput[PersonaModal] = discord.ui.TextInput(
            label="System prompt",
            style=discord.TextStyle.paragraph,
            default=current[: min(MODAL_MAX, personas.config.max_chars)],
            max_length=min(MODAL_MAX, personas.config.max_chars),
            placeholder="You are a helpful assistant for {server}. Today is {date}.",
        )
        self.add_item(self.text)

    async def on_submit(self, interaction: discord.Interaction[ChatBot]) -> None:  # type: ignore[override]
        await self.personas.set(self.scope, self.ident, self.text.value, by=interaction.user.id)
        await interaction.response.send_message(
            f"Persona set for {where(self.scope)} ({len(self.text.value)} characters).",
            ephemeral=True,
        )

    async def on_error(  # type: ignore[override]
        self, interaction: discord.Interaction[ChatBot], error: Exception
    ) -> None:
        tree = interaction.client.tree
        assert isinstance(tree, BotTree)
        await tree.report(interaction, error)


@app_commands.default_permissions(manage_channels=True)
class Persona(commands.GroupCog, group_name="persona"):
    """Change who the bot is: its system prompt."""

    def __init__(self, bot: ChatBot) -> None:
        self.bot = bot
        self.personas = bot.services.personas
        super().__init__()

    @app_commands.command()
    async def show(self, interaction: discord.Interaction[ChatBot]) -> None:
        """Show the persona the bot uses in this channel, and where it comes from."""
        current = await self.personas.current(place_of(interaction.channel))
        origin = {"default": "the bot's default", "parent channel": "the parent channel"}.get(
            current.source, f"this {current.source}"
        )
        preset = f" (preset `{current.preset}`)" if current.preset else ""
        embed = discord.Embed(title="Persona", description=current.text[:4000])
        embed.set_footer(text=f"From {origin}{preset} · {len(current.text)} characters")
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="set")
    @app_commands.describe(
        text="The new system prompt; leave empty to write a long one in a form",
        scope="Where it applies (default: this channel)",
    )
    async def set_(
        self,
        interaction: discord.Interaction[ChatBot],
        text: str | None = None,
        scope: Scope = "channel",
    ) -> None:
        """Set the persona (system prompt) for this channel or the whole server."""
        ident = target(interaction, scope)
        if text is None:
            current = await self.personas.store.get_persona(scope, ident)
            modal = PersonaModal(self.personas, scope, ident, current.text if current else "")
            await interaction.response.send_modal(modal)
            return
        await self.personas.set(scope, ident, text, by=interaction.user.id)
        await interaction.response.send_message(
            f"Persona set for {where(scope)} ({len(text.strip())} characters).", ephemeral=True
        )

    @app_commands.command()
    @app_commands.describe(name="A preset from the bot's config", scope="Where it applies")
    async def preset(
        self, interaction: discord.Interaction[ChatBot], name: str, scope: Scope = "channel"
    ) -> None:
        """Use one of the configured persona presets."""
        ident = target(interaction, scope)
        await self.personas.use_preset(scope, ident, name, by=interaction.user.id)
        await interaction.response.send_message(
            f"Using the `{name}` persona in {where(scope)}.", ephemeral=True
        )

    @preset.autocomplete("name")
    async def preset_names(
        self, interaction: discord.Interaction[ChatBot], current: str
    ) -> list[app_commands.Choice[str]]:
        return [
            app_commands.Choice(name=n, value=n) for n in self.personas.matching_presets(current)
        ]

    @app_commands.command()
    @app_commands.describe(scope="Which persona to remove (default: this channel's)")
    async def clear(
        self, interaction: discord.Interaction[ChatBot], scope: Scope = "channel"
    ) -> None:
        """Remove the persona set here, going back to the server's or the default one."""
        ident = target(interaction, scope)
        removed = await self.personas.clear(scope, ident)
        text = (
            f"Persona of {where(scope)} removed."
            if removed
            else f"{where(scope).capitalize()} had no persona of its own."
        )
        await interaction.response.send_message(text, ephemeral=True)


async def setup(bot: ChatBot) -> None:
    await bot.add_cog(Persona(bot))
