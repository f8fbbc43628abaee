"""Loopback stand-ins for external services, used by over-the-wire tests."""

from .discord_api import (
    CallbackRecord,
    DiscordStandIn,
    IdentifyRecord,
    InteractionRecord,
    MessageEdit,
    MessageRecord,
    RateLimits,
    RequestRecord,
)

__all__ = [
    "CallbackRecord",
    "DiscordStandIn",
    "IdentifyRecord",
    "InteractionRecord",
    "MessageEdit",
    "MessageRecord",
    "RateLimits",
    "RequestRecord",
]
