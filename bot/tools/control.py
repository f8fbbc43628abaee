"""Where tools are offered: the model's flag, the servers' tools, and `/tools on|off`.

Default on wherever servers are configured and the model has `tools = true`; an admin
switches them off (or back on) per channel or per server. The most specific switch wins:
channel, then a thread's parent channel, then the server.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.config import MCPConfig
from bot.memory.store import Store
from bot.models import Place
from bot.tools.mcp import ToolInfo, ToolManager

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ToolsHere:
    """What `/tools` shows: the switch, whether the model can use tools, and the tools."""

    enabled: bool
    model_supports: bool
    configured: bool
    tools: list[ToolInfo]

    @property
    def active(self) -> list[ToolInfo]:
        """The tools a reply here is offered."""
        return self.tools if self.enabled and self.model_supports else []


class ToolService:
    def __init__(self, manager: ToolManager, store: Store, config: MCPConfig) -> None:
        self.manager = manager
        self.store = store
        self.config = config

    async def enabled(self, place: Place) -> bool:
        for flag in await self.store.tools_flags(place):
            if flag is not None:
                return flag
        return True

    async def here(self, place: Place, model_supports: bool) -> ToolsHere:
        """The tools of `place` for a model that does (or does not) support tools."""
        configured = self.manager.configured
        enabled = configured and await self.enabled(place)
        return ToolsHere(enabled, model_supports, configured, self.manager.tools())

    async def for_reply(self, place: Place, model_supports: bool) -> list[ToolInfo]:
        """The tools to offer in one reply (none: answer without tools, as always)."""
        if not model_supports or not self.manager.configured:
            return []
        return (await self.here(place, model_supports)).active

    async def switch(self, scope: str, ident: int, on: bool) -> None:
        await self.store.set_tools_flag(scope, ident, on)
