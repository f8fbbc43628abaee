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
from .latency import REALISTIC, Delay, Latency, realistic

__all__ = [
    "REALISTIC",
    "CallbackRecord",
    "Delay",
    "DiscordStandIn",
    "IdentifyRecord",
    "InteractionRecord",
    "Latency",
    "MessageEdit",
    "MessageRecord",
    "RateLimits",
    "RequestRecord",
    "realistic",
]
