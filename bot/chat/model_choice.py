"""Which model answers where: /model choices per channel and server, stored in Redis.

Why this order: a thread follows its parent channel, a channel its server, and the
server the configured default, the same layering personas use. A stored name that is
no longer configured (an admin removed the model) is skipped with a log line rather
than failing every message in that channel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.config import ModelSpec
from bot.errors import UnknownModel
from bot.llm.models import ModelRegistry
from bot.memory.store import Store
from bot.models import Place

log = logging.getLogger(__name__)

SCOPES = ("channel", "server")
# Discord shows at most 25 autocomplete choices.
MAX_CHOICES = 25


@dataclass(frozen=True, slots=True)
class ModelChoice:
    spec: ModelSpec
    # "channel", "parent channel", "server" or "default".
    source: str


class ModelChoiceService:
    def __init__(self, store: Store, registry: ModelRegistry) -> None:
        self.store = store
        self.registry = registry
        # Stale names already reported, so a busy channel logs it once, not per message.
        self._reported: set[tuple[str, str]] = set()

    @property
    def selectable(self) -> bool:
        """Whether there is anything to choose (else no Redis lookup is needed)."""
        return len(self.registry.specs) > 1

    async def current(self, place: Place) -> ModelChoice:
        """The model for `place`: channel, then parent channel, then server, then default."""
        if not self.selectable:
            return ModelChoice(self.registry.default, "default")
        layers = await self.store.model_layers(place)
        for source, name, ident in (
            ("channel", layers.channel, place.channel_id),
            ("parent channel", layers.parent, place.parent_id),
            ("server", layers.guild, place.guild_id),
        ):
            if not name:
                continue
            spec = self.registry.get(name)
            if spec is not None:
                return ModelChoice(spec, source)
            if (source, name) not in self._reported:
                self._reported.add((source, name))
                log.warning(
                    "model %r chosen for %s %s is not configured any more; using the next choice",
                    name,
                    source,
                    ident,
                )
        return ModelChoice(self.registry.default, "default")

    async def set(self, scope: str, ident: int, name: str) -> ModelSpec:
        if scope not in SCOPES:
            raise ValueError(f"unknown model scope {scope!r}")
        spec = self.registry.get(name.strip())
        if spec is None:
            raise UnknownModel(name, self.registry.names)
        await self.store.set_model(scope, ident, spec.name)
        return spec

    async def clear(self, scope: str, ident: int) -> bool:
        if scope not in SCOPES:
            raise ValueError(f"unknown model scope {scope!r}")
        return await self.store.clear_model(scope, ident)

    def matching(self, typed: str, current: str | None = None) -> list[tuple[str, str]]:
        """(label, name) pairs for autocomplete: names containing `typed`, current marked."""
        typed = typed.strip().lower()
        found: list[tuple[str, str]] = []
        for name, spec in self.registry.specs.items():
            if typed and typed not in name.lower():
                continue
            label = f"{name} ({spec.provider})"
            if name == current:
                label = f"{label} ✓ current"
            found.append((label[:100], name))
        return found[:MAX_CHOICES]
