"""Prometheus metrics for the bot, kept in one private registry.

Why a private `CollectorRegistry` instead of prometheus-client's global default: every
test (and every bot instance in one process) can build a fresh `Metrics()` without
"Duplicated timeseries" errors, and `/metrics` shows exactly what this bot registered.

Why named methods instead of handing out the raw metric objects: callers say what
happened (`reply_failed("llm_timeout")`), the metric names, label sets and bucket choices
live in one place, and a bad value (a negative duration or token count from a clock jump
or a provider bug) is clamped here instead of raising inside a reply.

Label values are always a small, fixed vocabulary (error kinds from `bot.errors`, the three
Discord request kinds) so the number of time series stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    gc_collector,
    generate_latest,
    platform_collector,
    process_collector,
)

# The classic Prometheus text format, which `generate_latest` produces. Spelled out here
# because the library's CONTENT_TYPE_LATEST moved to "version=1.0.0" in newer releases,
# which older scrapers do not all understand.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

# Latency buckets in seconds, covering a fast first token (50 ms) up to a long reply
# finished after a minute; denser below 5 s where the user-visible difference lies.
LATENCY_BUCKETS: Final = (
    0.05,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    15.0,
    20.0,
    30.0,
    45.0,
    60.0,
)

# Discord request kinds the bot makes; anything else is counted as "other" so a typo in a
# caller cannot create new time series.
DISCORD_REQUEST_KINDS: Final = frozenset({"send", "edit", "typing"})

# Failure kinds longer than this are cut: they come from code, but a bound keeps a bug
# from turning an exception message into a label value.
_MAX_KIND_LEN: Final = 64


def _kind_label(kind: str) -> str:
    """Normalise a failure kind into a short, non-empty label value."""
    kind = (kind or "unknown").strip() or "unknown"
    return kind[:_MAX_KIND_LEN]


class Metrics:
    """All counters, gauges and histograms the bot exports, in one registry.

    Every metric name starts with `namespace` (default "llmbot"). Pass `process=False`
    to leave out the process/platform/GC collectors (they read /proc and are the same
    for every instance, which is noise in tests that compare output).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        namespace: str = "llmbot",
        process: bool = True,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        ns = namespace

        if process:
            process_collector.ProcessCollector(registry=reg)
            platform_collector.PlatformCollector(registry=reg)
            gc_collector.GCCollector(registry=reg)

        self._replies_started = Counter(
            "replies_started", "Replies the bot began to generate.", namespace=ns, registry=reg
        )
        self._replies_finished = Counter(
            "replies_finished",
            "Replies that completed and were fully delivered to Discord.",
            namespace=ns,
            registry=reg,
        )
        self._replies_failed = Counter(
            "replies_failed",
            "Replies that ended in an error, by error kind.",
            ["kind"],
            namespace=ns,
            registry=reg,
        )
        self._tokens_in = Counter(
            "tokens_in", "Prompt tokens sent to the language model.", namespace=ns, registry=reg
        )
        self._tokens_out = Counter(
            "tokens_out",
            "Completion tokens received from the language model.",
            namespace=ns,
            registry=reg,
        )
        self._first_token = Histogram(
            "time_to_first_token_seconds",
            "Seconds from the triggering message to the model's first token.",
            namespace=ns,
            registry=reg,
            buckets=LATENCY_BUCKETS,
        )
        self._final_edit = Histogram(
            "time_to_final_edit_seconds",
            "Seconds from the triggering message to the last edit of the reply.",
            namespace=ns,
            registry=reg,
            buckets=LATENCY_BUCKETS,
        )
        self._active_streams = Gauge(
            "active_streams",
            "Replies currently streaming into Discord.",
            namespace=ns,
            registry=reg,
        )
        self._discord_requests = Counter(
            "discord_requests",
            "REST requests sent to Discord, by kind (send, edit, typing, other).",
            ["kind"],
            namespace=ns,
            registry=reg,
        )
        self._discord_429 = Counter(
            "discord_rate_limited",
            "HTTP 429 responses seen from Discord.",
            namespace=ns,
            registry=reg,
        )
        self._redis_errors = Counter(
            "redis_errors", "Redis commands that failed.", namespace=ns, registry=reg
        )
        self._tool_calls = Counter(
            "tool_calls",
            "Tool calls the model made, by outcome (ok, error).",
            ["outcome"],
            namespace=ns,
            registry=reg,
        )
        for outcome in ("ok", "error"):
            self._tool_calls.labels(outcome=outcome)

        # Pre-create the fixed label sets so they export 0 from the start: a rate() over a
        # series that appears only at its first increment misses that increment.
        for kind in sorted(DISCORD_REQUEST_KINDS):
            self._discord_requests.labels(kind=kind)

    # --- replies -------------------------------------------------------------------------

    def reply_started(self) -> None:
        """A reply began (the bot decided to answer a message)."""
        self._replies_started.inc()

    def reply_finished(self) -> None:
        """A reply completed successfully."""
        self._replies_finished.inc()

    def reply_failed(self, kind: str) -> None:
        """A reply ended in an error; `kind` is a stable label such as `LLMError.kind`."""
        self._replies_failed.labels(kind=_kind_label(kind)).inc()

    def add_tokens(self, tokens_in: int = 0, tokens_out: int = 0) -> None:
        """Count prompt (`tokens_in`) and completion (`tokens_out`) tokens of one call."""
        if tokens_in > 0:
            self._tokens_in.inc(tokens_in)
        if tokens_out > 0:
            self._tokens_out.inc(tokens_out)

    def observe_first_token(self, seconds: float) -> None:
        """Record the time to the first streamed token (clamped at 0)."""
        self._first_token.observe(max(0.0, seconds))

    def observe_final_edit(self, seconds: float) -> None:
        """Record the time until the reply's final Discord edit (clamped at 0)."""
        self._final_edit.observe(max(0.0, seconds))

    # --- streams -------------------------------------------------------------------------

    def stream_opened(self) -> None:
        """A reply started streaming; pair with `stream_closed()` (or use `stream()`)."""
        self._active_streams.inc()

    def stream_closed(self) -> None:
        """A streaming reply ended, whatever the outcome."""
        self._active_streams.dec()

    @contextmanager
    def stream(self) -> Iterator[None]:
        """Count one active stream for the duration of the block, even if it raises."""
        self.stream_opened()
        try:
            yield
        finally:
            self.stream_closed()

    # --- Discord and Redis ---------------------------------------------------------------

    def discord_request(self, kind: str) -> None:
        """A REST request to Discord was sent: `kind` is "send", "edit" or "typing"."""
        label = kind if kind in DISCORD_REQUEST_KINDS else "other"
        self._discord_requests.labels(kind=label).inc()

    def discord_rate_limited(self) -> None:
        """Discord answered 429 Too Many Requests."""
        self._discord_429.inc()

    def redis_error(self) -> None:
        """A Redis command failed (connection lost, timeout, server error)."""
        self._redis_errors.inc()

    def tool_call(self, ok: bool) -> None:
        """A tool call ended: with a result, or with an error result for the model."""
        self._tool_calls.labels(outcome="ok" if ok else "error").inc()

    # --- export --------------------------------------------------------------------------

    def render(self) -> bytes:
        """All metrics in the Prometheus text format (serve with `CONTENT_TYPE`)."""
        return generate_latest(self.registry)
