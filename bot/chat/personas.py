"""Personas: the system prompt of a conversation.

Resolution order, most specific first: the channel's own persona, the thread's parent
channel's, the server's, then the configured default. Template variables are filled
in when a prompt is built, so `{date}` is always today's date; any other braces stay
as written (personas often contain JSON or code).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from bot.config import PersonaConfig
from bot.errors import EmptyPersona, PersonaTooLong, UnknownPreset
from bot.memory.store import PersonaLayers, Store
from bot.models import Place, StoredPersona

VARIABLES = ("date", "time", "server", "channel", "bot_name")
_VARIABLE = re.compile(r"\{(" + "|".join(VARIABLES) + r")\}")

SCOPES = ("channel", "server")


@dataclass(frozen=True, slots=True)
class ResolvedPersona:
    text: str
    # Where it came from: "channel", "parent channel", "server" or "default".
    source: str
    preset: str | None = None


def resolve(layers: PersonaLayers, default: str) -> ResolvedPersona:
    for stored, source in (
        (layers.channel, "channel"),
        (layers.parent, "parent channel"),
        (layers.guild, "server"),
    ):
        if stored is not None:
            return ResolvedPersona(stored.text, source, stored.preset)
    return ResolvedPersona(default, "default")


def render(template: str, place: Place, bot_name: str, now: float | None = None) -> str:
    """Fill the template variables; unknown braces are left alone."""
    t = time.gmtime(time.time() if now is None else now)
    values = {
        "date": time.strftime("%Y-%m-%d", t),
        "time": time.strftime("%H:%M", t),
        "server": place.guild_name or "a direct message",
        "channel": place.channel_name or "direct-message",
        "bot_name": bot_name,
    }
    return _VARIABLE.sub(lambda m: values[m.group(1)], template)


class PersonaService:
    """Read and change personas; used by /persona and the console."""

    def __init__(self, store: Store, config: PersonaConfig) -> None:
        self.store = store
        self.config = config

    @property
    def presets(self) -> dict[str, str]:
        return self.config.presets

    def check(self, text: str) -> str:
        text = text.strip()
        if not text:
            raise EmptyPersona()
        if len(text) > self.config.max_chars:
            raise PersonaTooLong(len(text), self.config.max_chars)
        return text

    async def current(self, place: Place) -> ResolvedPersona:
        return resolve(await self.store.persona_layers(place), self.config.default)

    async def set(
        self, scope: str, ident: int, text: str, *, by: int | None = None
    ) -> StoredPersona:
        persona = StoredPersona(text=self.check(text), set_by=by, at=time.time())
        await self.store.set_persona(scope, ident, persona)
        return persona

    async def use_preset(
        self, scope: str, ident: int, name: str, *, by: int | None = None
    ) -> StoredPersona:
        if name not in self.config.presets:
            raise UnknownPreset(name, sorted(self.config.presets))
        persona = StoredPersona(
            text=self.config.presets[name], preset=name, set_by=by, at=time.time()
        )
        await self.store.set_persona(scope, ident, persona)
        return persona

    async def clear(self, scope: str, ident: int) -> bool:
        return await self.store.clear_persona(scope, ident)

    def matching_presets(self, prefix: str, limit: int = 25) -> list[str]:
        """Preset names for autocomplete, best matches first."""
        p = prefix.lower()
        names = sorted(self.config.presets)
        starts = [n for n in names if n.lower().startswith(p)]
        contains = [n for n in names if p in n.lower() and n not in starts]
        return (starts + contains)[:limit]
