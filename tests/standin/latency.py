"""How long the Discord stand-in takes, so tests see what users see on the real Discord.

Discord acknowledges a REST request in roughly 0.1-0.4 s and delivers a gateway event
some tens of milliseconds after it happened. A stand-in answering in a millisecond hid a
bug that showed every short answer and every instant error 8 s late (a wait that slept
through the reply arriving while a typing request was in flight). `Latency` makes the
delays configurable: a fixed part plus uniform jitter, per REST route (typing included)
and for gateway dispatches. Draws come from one seeded generator, so a run repeats.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

TYPING = "POST /channels/{channel_id}/typing"
CREATE = "POST /channels/{channel_id}/messages"
EDIT = "PATCH /channels/{channel_id}/messages/{message_id}"


@dataclass(frozen=True)
class Delay:
    """`fixed` seconds plus a uniform draw from [0, `jitter`]."""

    fixed: float = 0.0
    jitter: float = 0.0

    def sample(self, rng: random.Random) -> float:
        return self.fixed + (rng.uniform(0.0, self.jitter) if self.jitter > 0 else 0.0)

    def __str__(self) -> str:
        lo, hi = self.fixed * 1000, (self.fixed + self.jitter) * 1000
        return f"{lo:.0f} ms" if not self.jitter else f"{lo:.0f}-{hi:.0f} ms"


NONE = Delay()


@dataclass
class Latency:
    """Acknowledgement delay of every REST request (`rest`, or the route's entry in
    `routes`, keyed like ``RateLimits.routes``) and delay of every gateway dispatch."""

    rest: Delay = NONE
    routes: dict[str, Delay] = field(default_factory=dict)
    dispatch: Delay = NONE
    seed: int = 0
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def for_route(self, route_key: str | None) -> float:
        delay = self.routes.get(route_key, self.rest) if route_key else self.rest
        return delay.sample(self.rng)

    def for_dispatch(self) -> float:
        return self.dispatch.sample(self.rng)

    @property
    def max_rest(self) -> float:
        """The longest acknowledgement any route can take."""
        delays = [self.rest, *self.routes.values()]
        return max(d.fixed + d.jitter for d in delays)


#: Like the real Discord seen from a bot: 50-400 ms per request, 20-100 ms per event.
REALISTIC = Latency(rest=Delay(0.05, 0.35), dispatch=Delay(0.02, 0.08))


def realistic() -> Latency:
    """A fresh `REALISTIC` (its own generator, so parallel stand-ins do not share one)."""
    return Latency(rest=REALISTIC.rest, dispatch=REALISTIC.dispatch)
