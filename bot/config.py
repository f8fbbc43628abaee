"""Configuration: `config.toml` parsed once into typed, frozen objects.

Why this shape: every other module receives exactly the section it needs, already
validated, so no code deeper in the bot checks config values again. Any bad value
stops start-up with one line that names the key, the value and what is allowed.

Secrets may come from the environment instead of the file: DISCORD_TOKEN,
LLM_API_KEY and REDIS_URL override the file's values, LLM_API_KEY_<NAME> a provider's key.
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
    # "button": a "Show thinking" button under replies of thinking models; "off": none.
    show_thinking: str = field(
        default="button", metadata=_check(lambda v: v in ("button", "off"), '"button" or "off"')
    )


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
    # The model reads images (OpenAI `image_url` content parts).
    vision: bool = False
    # Offer the model the MCP tools of `[[mcp.servers]]` (it must support function calling).
    tools: bool = False
    # With [models.NAME] tables: the one used where /model chose none (empty: the first).
    default_model: str = ""
    # The model's output starts inside a thinking block whose `<think>` is in the prompt
    # template, so only `</think>` comes (DeepSeek-R1 distills on llama.cpp with
    # `--reasoning-format none`). Off: text before a bare `</think>` would be the answer.
    thinking_starts_open: bool = False

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
    # Images of the most recent turns sent to a vision model; older ones become "[image: name]".
    max_images: int = field(default=4, metadata=_between(0, 100))
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
class AttachmentsConfig:
    # Largest file downloaded (bytes); bigger ones get a note and are skipped.
    max_bytes: int = field(default=10_000_000, metadata=_between(1_000, 500_000_000))
    # Images read from one message; the rest get a note.
    max_images: int = field(default=4, metadata=_between(0, 20))
    # Seconds one download may take.
    timeout_s: float = field(default=15.0, metadata=_positive())
    # Images are downscaled to this longest side (pixels) and re-encoded before sending.
    max_side: int = field(default=1568, metadata=_between(64, 8192))
    # Characters read from one text or code file; the rest is cut with a visible note.
    max_text_chars: int = field(default=100_000, metadata=_between(100, 10_000_000))
    # Prompt tokens one image is assumed to cost in the context budget.
    image_tokens: int = field(default=800, metadata=_between(1, 100_000))


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
class ProviderConfig:
    """One OpenAI-compatible server (`[providers.NAME]`); the `[llm]` section is provider `llm`."""

    base_url: str = field(default="", metadata=_is_url(("http://", "https://")))
    api_key: str = field(default="", repr=False)
    extra_headers: dict[str, str] = field(default_factory=dict)
    connect_timeout: float = field(default=10.0, metadata=_positive())
    first_token_timeout: float = field(default=60.0, metadata=_positive())
    idle_timeout: float = field(default=30.0, metadata=_positive())
    total_timeout: float = field(default=300.0, metadata=_positive())
    max_retries: int = field(default=2, metadata=_between(0, 10))


@dataclass(frozen=True)
class ModelConfig:
    """One model people can pick with /model (`[models.NAME]`)."""

    # A `[providers.NAME]` table, or "llm" for the server of the `[llm]` section.
    provider: str = "llm"
    # The id the server expects; empty: the table's name.
    model: str = ""
    context_tokens: int = field(default=8192, metadata=_between(256, 10_000_000))
    max_tokens: int = field(default=1024, metadata=_between(16, 1_000_000))
    temperature: float = field(default=0.7, metadata=_between(0, 2))
    # Whether the model reads images / may call tools.
    vision: bool = False
    tools: bool = False
    # Currency units per million tokens; without it `usage.prices` is looked up.
    prices: Price | None = None
    extra_body: dict[str, Any] = field(default_factory=dict)
    # Another model's name, answering when this one's server fails before the first token.
    fallback: str = ""
    # See `llm.thinking_starts_open`: the model's template opens <think> in the prompt.
    thinking_starts_open: bool = False


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


def _tool_name_ok(name: str) -> bool:
    return 0 < len(name) <= 64 and all(c.isalnum() or c in "_-" for c in name)


@dataclass(frozen=True)
class MCPServerConfig:
    """One MCP tool server (`[[mcp.servers]]`): a command over stdio, or a URL."""

    name: str = field(default="", metadata=_check(_tool_name_ok, "1 to 64 letters, digits, _ or -"))
    # stdio: the program to start, its arguments and extra environment (secrets welcome:
    # the values never reach the logs).
    command: str = ""
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict, repr=False)
    # Streamable HTTP: the server's endpoint, and headers (e.g. Authorization; secret too).
    url: str = field(default="", metadata=_is_url(("http://", "https://")))
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    # Tools of this server the model may use; empty: all of them.
    allowed_tools: list[str] = field(default_factory=list)
    # Seconds one tool call may take before it counts as failed.
    timeout_s: float = field(default=30.0, metadata=_between(0.1, 3600))

    def __post_init__(self) -> None:
        if bool(self.command) == bool(self.url):
            raise ConfigError(
                f"mcp.servers.{self.name or '?'}: needs exactly one of `command` (stdio) "
                "or `url` (streamable HTTP)"
            )


@dataclass(frozen=True)
class MCPConfig:
    servers: list[MCPServerConfig] = field(default_factory=list)
    # Rounds of tool calls in one reply before the model must answer.
    max_steps: int = field(default=5, metadata=_between(1, 50))
    # Longest tool result (characters) sent to the model; the rest is cut with a note.
    max_result_chars: int = field(default=8000, metadata=_between(100, 1_000_000))
    # Store the (capped) tool results with the answer, so the next turn sees them too.
    keep_results: bool = False

    def __post_init__(self) -> None:
        names = [s.name for s in self.servers]
        for name in names:
            if names.count(name) > 1:
                raise ConfigError(
                    f"mcp.servers: the name {name!r} is used twice; names must differ"
                )


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
    attachments: AttachmentsConfig = field(default_factory=AttachmentsConfig)
    mcp: MCPConfig = field(default_factory=MCPConfig)
    providers: dict[str, ProviderConfig] = field(default_factory=dict)
    models: dict[str, ModelConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_models(self)


# --- providers and models ---------------------------------------------------------------

# The `[llm]` section's server, as a provider name models can refer to.
LLM_PROVIDER = "llm"


@dataclass(frozen=True)
class ModelSpec:
    """One usable model, resolved: its name, provider and everything a request needs.

    Why one shape: the `[llm]` section (old configs) and `[models.NAME]` tables both end
    up here, so the rest of the bot asks `resolve_model(config, name)` and never cares
    which one the admin wrote. `llm` is in the shape `LLMClient` takes.
    """

    name: str
    provider: str
    llm: LLMConfig
    vision: bool = False
    tools: bool = False
    price: Price | None = None
    fallback: str | None = None

    @property
    def model(self) -> str:
        """The id the server expects."""
        return self.llm.model

    @property
    def context_tokens(self) -> int:
        return self.llm.context_tokens

    @property
    def max_tokens(self) -> int:
        return self.llm.max_tokens


def _model_name_ok(name: str) -> bool:
    return 0 < len(name) <= 100 and not any(c.isspace() for c in name)


def check_models(config: Config) -> None:
    """Cross-checks the per-table rules cannot make: names, references, budgets."""
    if LLM_PROVIDER in config.providers:
        raise ConfigError(
            f"providers.{LLM_PROVIDER}: the name is taken by the [llm] section's server; "
            "pick another name"
        )
    for name, provider in config.providers.items():
        if not provider.base_url:
            raise ConfigError(f"providers.{name}.base_url = '': must be a URL starting with http")
    allowed_providers = ", ".join([LLM_PROVIDER, *config.providers])
    for name, model in config.models.items():
        if not _model_name_ok(name):
            raise ConfigError(
                f"models.{_show(name)}: a model name must be 1 to 100 characters, no spaces"
            )
        if model.provider != LLM_PROVIDER and model.provider not in config.providers:
            raise ConfigError(
                f"models.{name}.provider = {_show(model.provider)}: "
                f"must be one of {allowed_providers}"
            )
        if model.max_tokens >= model.context_tokens:
            raise ConfigError(
                f"models.{name}.max_tokens = {model.max_tokens}: must be below "
                f"models.{name}.context_tokens ({model.context_tokens}), "
                "which also holds the prompt"
            )
        if model.fallback and (model.fallback not in config.models or model.fallback == name):
            raise ConfigError(
                f"models.{name}.fallback = {_show(model.fallback)}: must be another model "
                f"of [models]: {', '.join(n for n in config.models if n != name) or 'none'}"
            )
    if config.llm.default_model and config.llm.default_model not in config.models:
        raise ConfigError(
            f"llm.default_model = {_show(config.llm.default_model)}: must name a [models] table: "
            f"{', '.join(config.models) or 'there are none'}"
        )


def _model_spec(config: Config, name: str, model: ModelConfig) -> ModelSpec:
    if model.provider == LLM_PROVIDER:
        p: LLMConfig | ProviderConfig = config.llm
    else:
        p = config.providers[model.provider]
    llm = LLMConfig(
        base_url=p.base_url,
        api_key=p.api_key,
        model=model.model or name,
        temperature=model.temperature,
        max_tokens=model.max_tokens,
        context_tokens=model.context_tokens,
        connect_timeout=p.connect_timeout,
        first_token_timeout=p.first_token_timeout,
        idle_timeout=p.idle_timeout,
        total_timeout=p.total_timeout,
        max_retries=p.max_retries,
        extra_headers=dict(p.extra_headers),
        extra_body=dict(model.extra_body),
        thinking_starts_open=model.thinking_starts_open,
    )
    prices = config.usage.prices
    return ModelSpec(
        name=name,
        provider=model.provider,
        llm=llm,
        vision=model.vision,
        tools=model.tools,
        price=model.prices or prices.get(name) or prices.get(llm.model),
        fallback=model.fallback or None,
    )


def resolve_models(config: Config) -> dict[str, ModelSpec]:
    """Every configured model by name, the default first.

    Without `[models]` tables the `[llm]` section is the one model, named by its id.
    """
    if not config.models:
        llm = config.llm
        spec = ModelSpec(
            name=llm.model,
            provider=LLM_PROVIDER,
            llm=llm,
            # Flags other features may add to [llm]; absent before they exist.
            vision=bool(getattr(llm, "vision", False)),
            tools=bool(getattr(llm, "tools", False)),
            price=config.usage.prices.get(llm.model),
        )
        return {spec.name: spec}
    default = default_model_name(config)
    names = [default, *(n for n in config.models if n != default)]
    return {n: _model_spec(config, n, config.models[n]) for n in names}


def default_model_name(config: Config) -> str:
    """The model used where nobody chose one with /model."""
    if not config.models:
        return config.llm.model
    return config.llm.default_model or next(iter(config.models))


def resolve_model(config: Config, name: str | None = None) -> ModelSpec:
    """The model called `name`, or the default one (also for a name no longer configured)."""
    specs = resolve_models(config)
    if name and name in specs:
        return specs[name]
    return specs[default_model_name(config)]


# --- loading ----------------------------------------------------------------------------

ENV_OVERRIDES = {
    "DISCORD_TOKEN": ("discord", "token"),
    "LLM_API_KEY": ("llm", "api_key"),
    "REDIS_URL": ("redis", "url"),
}


def provider_key_variable(name: str) -> str:
    """The environment variable overriding `providers.NAME.api_key`: LLM_API_KEY_<NAME>."""
    return "LLM_API_KEY_" + "".join(c if c.isalnum() else "_" for c in name.upper())


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
    providers = data.get("providers")
    for name, table in providers.items() if isinstance(providers, dict) else ():
        var = provider_key_variable(name)
        if env.get(var) and isinstance(table, dict):
            table["api_key"] = env[var]
    config: Config = _build(Config, data, "")
    return config
