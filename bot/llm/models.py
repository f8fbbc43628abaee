"""The configured models, one streaming client each, and falling back between them.

Why here: a model is a provider's server plus request settings, so each gets its own
`LLMClient` (they share the one aiohttp session) and its own token-count calibration
(another model family counts tokens differently). Falling back happens only before the
first token: once text is on the screen, switching models would mix two answers.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bot.config import LLM_PROVIDER, Config, ModelSpec, Price, default_model_name, resolve_models
from bot.errors import (
    LLMCutOff,
    LLMError,
    LLMRateLimited,
    LLMServerError,
    LLMTimeout,
    LLMUnreachable,
)
from bot.llm.client import ChatStream, LLMClient
from bot.llm.tokens import TokenCounter

log = logging.getLogger(__name__)

# Failures that say "this provider cannot answer now", not "this request is wrong".
FALLBACK_ERRORS = (LLMUnreachable, LLMServerError, LLMRateLimited, LLMTimeout, LLMCutOff)


def can_fall_back(err: LLMError) -> bool:
    """Whether another model may answer instead after `err` (raised before any text)."""
    return isinstance(err, FALLBACK_ERRORS)


@dataclass(slots=True)
class Routed:
    """The stream that is answering, from which model, and the models that failed first."""

    spec: ModelSpec
    stream: ChatStream
    failed: list[tuple[ModelSpec, LLMError]] = field(default_factory=list)

    @property
    def fell_back(self) -> bool:
        return bool(self.failed)


class ModelRegistry:
    """Every configured model by name, with its client and token counter."""

    def __init__(
        self,
        specs: Mapping[str, ModelSpec],
        default: str,
        clients: Mapping[str, LLMClient],
        counters: Mapping[str, TokenCounter],
    ) -> None:
        if default not in specs:
            raise ValueError(f"default model {default!r} is not among {list(specs)}")
        self.specs = dict(specs)
        self.default_name = default
        self._clients = dict(clients)
        self._counters = dict(counters)

    @classmethod
    def build(
        cls,
        config: Config,
        session: aiohttp.ClientSession,
        counter: TokenCounter,
        **client_options: Any,
    ) -> ModelRegistry:
        """Clients for all models; the default model keeps `counter` (and its calibration)."""
        specs = resolve_models(config)
        default = default_model_name(config)
        clients = {n: LLMClient(session, s.llm, **client_options) for n, s in specs.items()}
        counters = {n: counter if n == default else counter.fork() for n in specs}
        log.info(
            "models: %s (default %s)",
            ", ".join(f"{n} via {s.provider}" for n, s in specs.items()),
            default,
        )
        return cls(specs, default, clients, counters)

    @classmethod
    def single(cls, client: LLMClient, counter: TokenCounter) -> ModelRegistry:
        """One model from one client, as before several models existed."""
        spec = ModelSpec(name=client.config.model, provider=LLM_PROVIDER, llm=client.config)
        return cls({spec.name: spec}, spec.name, {spec.name: client}, {spec.name: counter})

    @property
    def default(self) -> ModelSpec:
        return self.specs[self.default_name]

    @property
    def names(self) -> list[str]:
        return list(self.specs)

    def get(self, name: str | None) -> ModelSpec | None:
        return self.specs.get(name) if name else None

    def client(self, spec: ModelSpec) -> LLMClient:
        return self._clients[spec.name]

    def counter(self, spec: ModelSpec) -> TokenCounter:
        return self._counters[spec.name]

    def price(self, name: str) -> Price | None:
        """A model's price by its name, or by the id its server knows it by (summaries)."""
        spec = self.specs.get(name) or next(
            (s for s in self.specs.values() if s.model == name), None
        )
        return spec.price if spec else None

    def chain(self, spec: ModelSpec) -> list[ModelSpec]:
        """`spec`, then its fallback, the fallback's fallback, ... each model once."""
        chain = [spec]
        seen = {spec.name}
        while (nxt := self.get(chain[-1].fallback)) is not None and nxt.name not in seen:
            chain.append(nxt)
            seen.add(nxt.name)
        return chain

    async def open(
        self,
        stack: contextlib.AsyncExitStack,
        spec: ModelSpec,
        messages_for: Callable[[ModelSpec], list[dict[str, Any]]],
        tools_for: Callable[[ModelSpec], list[dict[str, Any]] | None] | None = None,
    ) -> Routed:
        """Start a stream with `spec`, falling back down its chain before the first token.

        `messages_for(model)` builds the prompt for a model (each has its own budget),
        `tools_for(model)` the tools it is offered (called after `messages_for`).
        The stream is entered on `stack`, so it closes with the caller's other resources.
        """
        chain = self.chain(spec)
        failed: list[tuple[ModelSpec, LLMError]] = []
        for i, candidate in enumerate(chain):
            messages = messages_for(candidate)
            tools = tools_for(candidate) if tools_for else None
            try:
                stream = await stack.enter_async_context(
                    self.client(candidate).stream(messages, tools=tools)
                )
            except LLMError as err:
                if i + 1 == len(chain) or not can_fall_back(err):
                    raise
                log.warning(
                    "model %s failed before its first token (%s); falling back to %s",
                    candidate.name,
                    err.kind,
                    chain[i + 1].name,
                )
                failed.append((candidate, err))
                continue
            return Routed(candidate, stream, failed)
        raise AssertionError("unreachable: the chain is never empty")  # pragma: no cover
