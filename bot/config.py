"""Configuration: `config.toml` parsed once into typed, frozen objects.

Why this shape: every other module receives exactly the section it needs, already
validated, so no code deeper in the bot checks config values again. Any bad value
stops start-up with one line that names the key, the value and what is allowed.

Secrets may come from the environment instead of the file: DISCORD_TOKEN,
LLM_API_KEY and REDIS_URL override the file's values.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.errors import ConfigError

DEFAULT_PERSONA = (
    "You are {bot_name}, a helpful and friendly assistant chatting in the Discord channel "
    "#{channel} of the server {server}. Several people may talk to you; each user message "
    "starts with the speaker's name. Answer concisely and use Discord markdown. "
    "Today is {date}, and the time is {time} UTC."
)

DEFAULT_SUMMARY_PROMPT = (
    "You keep the running summary of a chat conversation, so it can be continued after "
    "its older messages are gone. You get the summary so far and the messages to fold "
    "into it. Write the new summary: keep every fact, name, number, decision, preference "
    "and open question that may matter later, note who said what, drop small talk. "
    "Write plain sentences or short bullet points, in the conversation's language, at "
    "most about {max_words} words. Reply with the summary only."
)


def _check(predicate: Callable[[Any], bool], allowed: str) -> dict[str, Any]:
    """Field metadata: a validation rule and the human description of what is allowed."""
    return {"check": predicate, "allowed": allowed}


def _between(lo: float, hi: float) -> dict[str, Any]:
    return _check(lambda v: lo <= v <= hi, f"a number from {lo:g} to {hi:g}")


def _positive() -> dict[str, Any]:
    return _check(lambda v: v > 0, "a number above 0")


def _at_least(lo: float) -> dict[str, Any]:
    return _check(lambda v: v >= lo, f"a number of at least {lo:g}")


def _is_url(schemes: tuple[str, ...]) -> dict[str, Any]:
    return _check(
        lambda v: v == "" or v.startswith(schemes),
        "empty or a URL starting with " + ", ".join(f"{s}" for s in schemes),
    )


@dataclass(frozen=True)
class DiscordConfig:
    token: str = field(default="", repr=False)
    # Answer in DMs at all.
    allow_dms: bool = False
    # Answer when mentioned / when someone replies to the bot's message.
    reply_on_mention: bool = True
    reply_on_reply: bool = True
    # Minimum seconds between two edits of one streamed message.
    edit_interval: float = field(default=1.0, metadata=_between(0.2, 10))
    # Requests per second all streams together may make (Discord's global limit is 50).
    stream_rate: float = field(default=40.0, metadata=_between(1, 50))
    # Guilds that get the slash commands synced at start (instant, for development).
    dev_guilds: list[int] = field(default_factory=list)
    # Id allow/deny lists: empty allow list means "everywhere".
    allowed_guilds: list[int] = field(default_factory=list)
    denied_guilds: list[int] = field(default_factory=list)
    allowed_channels: list[int] = field(default_factory=list)
    denied_channels: list[int] = field(default_factory=list)
    allowed_roles: list[int] = field(default_factory=list)
    denied_roles: list[int] = field(default_factory=list)
    # Per-user flood control: at most `user_burst` messages per `user_cooldown_s`.
    user_cooldown_s: float = field(default=10.0, metadata=_at_least(0))
    user_burst: int = field(default=3, metadata=_at_least(1))
    # Sharding across processes: shard_count 0 means "one process, Discord's default".
    shard_count: int = field(default=0, metadata=_at_least(0))
    shard_ids: list[int] = field(default_factory=list)
    # Seconds running replies get to finish on shutdown before they are cut.
    shutdown_grace_s: float = field(default=20.0, metadata=_at_least(0))
    status: str = "Mention me to chat"


@dataclass(frozen=True)
class LLMConfig:
    base_url: str = field(
        default="https://api.openai.com/v1", metadata=_is_url(("http://", "https://"))
    )
    api_key: str = field(default="", repr=False)
    model: str = field(default="gpt-4o-mini", metadata=_check(bool, "a non-empty model name"))
    temperature: float = field(default=0.7, metadata=_between(0, 2))
    # Reply reserve: the most tokens one reply may use.
    max_tokens: int = field(default=1024, metadata=_between(16, 1_000_000))
    # The model's whole context window (prompt + reply).
    context_tokens: int = field(default=8192, metadata=_between(256, 10_000_000))
    connect_timeout: float = field(default=10.0, metadata=_positive())
    first_token_timeout: float = field(default=60.0, metadata=_positive())
    idle_timeout: float = field(default=30.0, metadata=_positive())
    total_timeout: float = field(default=300.0, metadata=_positive())
    # Retries (with backoff) happen only before the first token.
    max_retries: int = field(default=2, metadata=_between(0, 10))
    extra_headers: dict[str, str] = field(default_factory=dict)
    extra_body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_tokens >= self.context_tokens:
            raise ConfigError(
                f"llm.max_tokens = {self.max_tokens}: must be below llm.context_tokens "
                f"({self.context_tokens}), which also has to hold the prompt"
            )


@dataclass(frozen=True)
class RedisConfig:
    # Empty: the bot starts and owns its own Redis server under `data_dir`.
    url: str = field(default="", repr=False, metadata=_is_url(("redis://", "rediss://", "unix://")))
    key_prefix: str = field(
        default="llmbot",
        metadata=_check(
            lambda v: bool(v) and not any(c in v for c in "{} \t\n"),
            "a non-empty string without spaces or braces",
        ),
    )
    data_dir: str = "data/redis"
    # Redis Cluster: "auto" asks the server at start (INFO cluster) and uses the cluster
    # client if it is a cluster node; true or false decide without asking.
    cluster: Any = field(
        default="auto",
        metadata=_check(lambda v: v is True or v is False or v == "auto", 'true, false or "auto"'),
    )

    def __post_init__(self) -> None:
        if self.cluster is True and not self.url.startswith(("redis://", "rediss://")):
            raise ConfigError(
                "redis.cluster = true: needs redis.url (or REDIS_URL) naming a node of the "
                "cluster over TCP (redis:// or rediss://); the built-in Redis is no cluster"
            )


@dataclass(frozen=True)
class HistoryConfig:
    # Messages (user and assistant each count one) kept per channel.
    max_turns: int = field(default=100, metadata=_between(2, 100_000))
    # Days a quiet channel's history is kept; 0 keeps it forever.
    retention_days: int = field(default=30, metadata=_between(0, 36_500))
    # Fold turns that leave the window into a running summary (one model call each time).
    summarize: bool = True
    # The longest summary, in tokens; it is sent with every request (and never takes more
    # than a quarter of what llm.context_tokens leaves after llm.max_tokens).
    summary_tokens: int = field(default=512, metadata=_between(32, 100_000))
    # The model that writes summaries; empty: llm.model.
    summary_model: str = ""
    # Instructions for the summarising call; {max_words} is filled in.
    summary_prompt: str = field(
        default=DEFAULT_SUMMARY_PROMPT,
        metadata=_check(lambda v: bool(v.strip()), "a non-empty text"),
    )

    @property
    def stored_turns_cap(self) -> int:
        """The most turns kept in Redis. With summaries on, turns past `max_turns` wait
        there until a summary covers them; the cap only bounds a summariser that keeps
        failing (past it the oldest turns are dropped unsummarised, as without summaries).
        """
        return self.max_turns * 2 if self.summarize else self.max_turns


@dataclass(frozen=True)
class PersonaConfig:
    default: str = DEFAULT_PERSONA
    max_chars: int = field(default=4000, metadata=_between(1, 100_000))
    presets: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, text in self.presets.items():
            if len(text) > self.max_chars:
                raise ConfigError(
                    f"persona.presets.{name}: {len(text)} characters; "
                    f"allowed is at most persona.max_chars ({self.max_chars})"
                )


@dataclass(frozen=True)
class Price:
    # Currency units per million tokens.
    prompt: float = field(default=0.0, metadata=_at_least(0))
    completion: float = field(default=0.0, metadata=_at_least(0))


@dataclass(frozen=True)
class UsageConfig:
    # Tokens (prompt + completion) one user may use per UTC day; 0 = unlimited.
    daily_token_quota: int = field(default=0, metadata=_at_least(0))
    currency: str = "$"
    prices: dict[str, Price] = field(default_factory=dict)


@dataclass(frozen=True)
class LoggingConfig:
    level: str = field(
        default="INFO",
        metadata=_check(
            lambda v: v in ("DEBUG", "INFO", "WARNING", "ERROR"), "DEBUG, INFO, WARNING or ERROR"
        ),
    )
    format: str = field(
        default="text", metadata=_check(lambda v: v in ("text", "json"), "text or json")
    )


@dataclass(frozen=True)
class HealthConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = field(default=8080, metadata=_between(1, 65535))


@dataclass(frozen=True)
class Config:
    discord: DiscordConfig = field(default_factory=DiscordConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    persona: PersonaConfig = field(default_factory=PersonaConfig)
    usage: UsageConfig = field(default_factory=UsageConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    health: HealthConfig = field(default_factory=HealthConfig)


# --- loading ----------------------------------------------------------------------------

ENV_OVERRIDES = {
    "DISCORD_TOKEN": ("discord", "token"),
    "LLM_API_KEY": ("llm", "api_key"),
    "REDIS_URL": ("redis", "url"),
}

_TYPE_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, returning the typed value."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} = {_show(value)}: must be a table")
        return _build(tp, value, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key} = {_show(value)}: must be a list")
        return [_convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, val_tp = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} = {_show(value)}: must be a table")
        return {str(k): _convert(val_tp, v, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{key} = {_show(value)}: must be {_TYPE_NAMES[int]}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key} = {_show(value)}: must be {_TYPE_NAMES.get(tp, tp.__name__)}")
    return value


def _build(cls: type[Any], data: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{where}: unknown key; allowed here: {', '.join(sorted(fields))}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if isinstance(tp, types.UnionType):  # pragma: no cover - no optional keys today
            tp = typing.get_args(tp)[0]
        converted = _convert(tp, value, key)
        meta = fields[name].metadata
        if "check" in meta and not meta["check"](converted):
            raise ConfigError(f"{key} = {_show(value)}: must be {meta['allowed']}")
        kwargs[name] = converted
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # pragma: no cover - defensive
        raise ConfigError(f"{prefix}: {exc}") from exc


def resolve_path(
    cli_path: str | None, environ: Mapping[str, str] | None = None
) -> tuple[Path, bool]:
    """Which config file to read, and whether the user named it explicitly."""
    env = os.environ if environ is None else environ
    if cli_path:
        return Path(cli_path), True
    if env.get("BOT_CONFIG"):
        return Path(env["BOT_CONFIG"]), True
    return Path("config.toml"), False


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read, validate and freeze the configuration.

    A missing default `config.toml` is fine (defaults plus environment); a file the user
    named explicitly must exist.
    """
    env = os.environ if environ is None else environ
    file, explicit = resolve_path(str(path) if path else None, env)
    data: dict[str, Any] = {}
    if file.exists():
        try:
            with file.open("rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML ({exc})") from exc
        except OSError as exc:
            raise ConfigError(f"{file}: cannot be read ({exc.strerror})") from exc
    elif explicit:
        raise ConfigError(f"{file}: config file not found")
    for var, (section, key) in ENV_OVERRIDES.items():
        if env.get(var):
            section_data = data.setdefault(section, {})
            if isinstance(section_data, dict):
                section_data[key] = env[var]
    config: Config = _build(Config, data, "")
    return config
