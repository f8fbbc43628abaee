"""Several providers and models: config, /model per channel, fallbacks, per-model usage.

Two LLM stand-ins play two providers; the bot runs over the wire against the Discord
stand-in and the session's real Redis.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from PIL import Image

from bot.chat.chart import HEIGHT, PALETTE, WIDTH, layout
from bot.chat.conversation import fallback_note
from bot.chat.model_choice import ModelChoiceService
from bot.config import (
    Config,
    LLMConfig,
    ModelConfig,
    Price,
    ProviderConfig,
    load_config,
    resolve_model,
    resolve_models,
)
from bot.errors import ConfigError
from bot.llm.models import ModelRegistry
from bot.llm.tokens import TokenCounter
from bot.memory.redis_server import EmbeddedRedis
from bot.memory.store import Store
from bot.models import Place
from bot.ops.logs import secrets_from_config
from tests.harness import BotHarness, running_bot
from tests.standin.discord_models import MessageRecord
from tests.standin.llm_api import Behavior, LLMStandIn, lorem

# --- config ---------------------------------------------------------------------------------

MULTI = """
[llm]
base_url = "http://127.0.0.1:9/v1"
model = "legacy"
default_model = "smart"

[providers.local]
base_url = "http://127.0.0.1:11434/v1"
first_token_timeout = 120.0

[providers.groq-cloud]
base_url = "https://api.groq.com/openai/v1"
api_key = "from-file"
extra_headers = { "X-Team" = "bots" }

[models.fast]
provider = "local"
model = "llama3.1:8b"
context_tokens = 16000
max_tokens = 500
vision = true

[models.smart]
provider = "groq-cloud"
model = "llama-3.3-70b-versatile"
context_tokens = 32000
tools = true
fallback = "fast"
prices = { prompt = 0.59, completion = 0.79 }
extra_body = { top_p = 0.9 }

[models.main]
provider = "llm"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_providers_and_models_resolve(tmp_path: Path) -> None:
    env = {"LLM_API_KEY_GROQ_CLOUD": "SECRET-GROQ", "LLM_API_KEY": "SECRET-LLM"}
    config = load_config(write(tmp_path, MULTI), env)
    specs = resolve_models(config)
    assert list(specs) == ["smart", "fast", "main"], "the default comes first"
    smart, fast, main = specs["smart"], specs["fast"], specs["main"]
    assert smart.llm.base_url == "https://api.groq.com/openai/v1"
    assert smart.llm.api_key == "SECRET-GROQ", "LLM_API_KEY_<NAME> overrides the file"
    assert smart.llm.extra_headers == {"X-Team": "bots"} and smart.llm.extra_body == {"top_p": 0.9}
    assert (smart.model, smart.context_tokens, smart.max_tokens) == (
        "llama-3.3-70b-versatile",
        32000,
        1024,
    )
    assert smart.tools and not smart.vision and smart.fallback == "fast"
    assert smart.price == Price(prompt=0.59, completion=0.79)
    assert fast.vision and fast.llm.first_token_timeout == 120.0 and fast.fallback is None
    assert main.llm.base_url == "http://127.0.0.1:9/v1" and main.model == "main"
    assert main.llm.api_key == "SECRET-LLM", "provider llm is the [llm] section's server"
    assert resolve_model(config).name == "smart"
    assert resolve_model(config, "fast").name == "fast"
    assert resolve_model(config, "removed-since").name == "smart"
    assert "SECRET-GROQ" in secrets_from_config(config)
    assert "SECRET" not in repr(config)


def test_the_single_llm_section_is_one_model(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[llm]\nmodel = "qwen2.5"\nmax_tokens = 300\n'), {})
    specs = resolve_models(config)
    assert list(specs) == ["qwen2.5"]
    assert specs["qwen2.5"].llm == config.llm, "exactly the old client settings"
    assert specs["qwen2.5"].price is None
    example = load_config(Path(__file__).parent.parent / "config.example.toml", {})
    assert resolve_model(example).price == example.usage.prices["gpt-4o-mini"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[models.a]\nprovider = "nope"', "models.a.provider = 'nope': must be one of llm"),
        ("[models.a]\nmax_tokens = 9000\ncontext_tokens = 8192", "models.a.max_tokens = 9000"),
        ('[models.a]\nfallback = "b"', "models.a.fallback = 'b': must be another model"),
        ('[models.a]\nfallback = "a"', "models.a.fallback = 'a'"),
        ('[llm]\ndefault_model = "x"\n[models.a]', "llm.default_model = 'x': must name"),
        ('[providers.p]\napi_key = "k"', "providers.p.base_url = '': must be a URL"),
        ('[providers.llm]\nbase_url = "http://x"', "providers.llm: the name is taken"),
        ("[models.a]\ntemperature = 3", "models.a.temperature = 3: must be a number from 0 to 2"),
        ("[models.a]\nprices = { prompt = -1 }", "models.a.prices.prompt = -1"),
        ('[models."two words"]', "a model name must be 1 to 100 characters, no spaces"),
        ("[models.a]\ncolour = 1", "models.a.colour: unknown key"),
    ],
)
def test_bad_model_config_names_key_value_and_rule(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), {})
    assert expected in str(info.value) and "\n" not in str(info.value)


# --- choosing per place ---------------------------------------------------------------------


async def test_thread_follows_parent_then_server_then_default(
    redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    config = replace(
        Config(),
        providers={"p": ProviderConfig(base_url="http://127.0.0.1:9/v1")},
        models={"a": ModelConfig(provider="p"), "b": ModelConfig(provider="p")},
    )
    store = Store(redis_client, prefix="mc", max_turns=10, retention_days=1)
    counter = TokenCounter()
    registry = ModelRegistry(
        resolve_models(config),
        "a",
        clients={},
        counters={"a": counter, "b": counter.fork()},
    )
    choices = ModelChoiceService(store, registry)
    thread = Place(channel_id=3, guild_id=1, parent_id=2)
    assert (await choices.current(thread)).source == "default"
    await choices.set("server", 1, "b")
    assert [(await choices.current(thread)).spec.name, (await choices.current(thread)).source] == [
        "b",
        "server",
    ]
    await choices.set("channel", 2, "a")
    assert (await choices.current(thread)).source == "parent channel"
    await choices.set("channel", 3, "b")
    assert (await choices.current(thread)).source == "channel"
    # Keys carry the channel's / server's hash tag, so they sit in that place's cluster slot.
    assert await redis_client.get("mc:{c3}:model") == "b"
    assert await redis_client.get("mc:{g1}:model") == "b"
    # A model removed from the config: skipped, with one log line.
    await redis_client.set("mc:{c3}:model", "gone")
    with caplog.at_level(logging.WARNING, logger="bot.chat.model_choice"):
        for _ in range(3):
            current = await choices.current(thread)
            assert (current.spec.name, current.source) == ("a", "parent channel")
    assert len([r for r in caplog.records if "'gone'" in r.getMessage()]) == 1
    assert await choices.clear("channel", 2) and await choices.clear("server", 1)
    assert (await choices.current(thread)).source == "default"
    labels = choices.matching("", current="b")
    assert labels == [("a (p)", "a"), ("b (p) ✓ current", "b")]
    assert choices.matching("B") == [("b (p)", "b")]


# --- over the wire --------------------------------------------------------------------------

TIMEOUTS = {
    "first_token_timeout": 3.0,
    "idle_timeout": 2.0,
    "total_timeout": 30.0,
    "max_retries": 0,
}


def two_providers(alpha: LLMStandIn, beta: LLMStandIn) -> Callable[[Config], Config]:
    def configure(config: Config) -> Config:
        return replace(
            config,
            llm=replace(config.llm, default_model="fast"),
            providers={
                "alpha": ProviderConfig(
                    base_url=alpha.base_url,
                    api_key="sk-a-SECRET",
                    **{**TIMEOUTS, "first_token_timeout": 1.0},
                ),
                "beta": ProviderConfig(base_url=beta.base_url, api_key="sk-b-SECRET", **TIMEOUTS),
                # Nothing listens on port 9 of the loopback: connecting fails at once.
                "gone": ProviderConfig(base_url="http://127.0.0.1:9/v1", **TIMEOUTS),
            },
            models={
                "fast": ModelConfig(
                    provider="alpha",
                    model="alpha-small",
                    context_tokens=8000,
                    max_tokens=1000,
                    prices=Price(prompt=1000.0, completion=2000.0),
                ),
                "smart": ModelConfig(
                    provider="beta",
                    model="beta-large",
                    context_tokens=1200,
                    max_tokens=300,
                    prices=Price(prompt=10_000.0, completion=20_000.0),
                ),
                "flaky": ModelConfig(provider="alpha", model="alpha-flaky", fallback="smart"),
                "dead": ModelConfig(provider="gone", model="ghost", fallback="fast"),
            },
        )

    return configure


@pytest.fixture
async def two(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> AsyncIterator[tuple[BotHarness, LLMStandIn, LLMStandIn]]:
    async with (
        LLMStandIn() as alpha,
        LLMStandIn() as beta,
        running_bot(redis_server.url, llm=alpha, configure=two_providers(alpha, beta)) as harness,
    ):
        yield harness, alpha, beta


def notes_in(h: BotHarness, channel: int) -> list[str]:
    return [m.content for m in h.discord.bot_messages_in(channel) if m.content.startswith("-#")]


async def test_switching_models_per_channel_thread_and_server(
    two: tuple[BotHarness, LLMStandIn, LLMStandIn],
) -> None:
    h, alpha, beta = two
    await h.ask("hello default")
    assert alpha.chat_requests[-1].body["model"] == "alpha-small" and not beta.chat_requests
    assert alpha.chat_requests[-1].headers.get("Authorization") == "Bearer sk-a-SECRET"
    record = await h.slash("model set", {"name": "smart"})
    assert record.ephemeral and "**smart**" in record.content and "`beta`" in record.content
    parts = await h.ask("now the smart one")
    assert parts[0].content == "Echo: alice: now the smart one"
    assert beta.chat_requests[-1].body["model"] == "beta-large"
    assert beta.chat_requests[-1].headers.get("Authorization") == "Bearer sk-b-SECRET"
    # Memory stays with the channel across models.
    sent = [m["content"] for m in beta.chat_requests[-1].body["messages"]]
    assert "alice: hello default" in sent

    thread = h.discord.add_thread(h.channel, "side topic")
    other = h.discord.add_channel(h.guild, "other")
    await h.discord.flush()
    await h.ask("in the thread", channel=thread)
    assert len(beta.chat_requests) == 2, "a thread follows its parent channel"
    show = await h.slash("model show", channel_id=thread)
    assert show.ephemeral and "**smart**" in show.content and "parent channel" in show.content

    await h.ask("elsewhere", channel=other)
    assert alpha.chat_requests[-1].body["messages"][-1]["content"] == "alice: elsewhere"
    await h.slash("model set", {"name": "smart", "scope": "server"}, channel_id=other)
    await h.ask("elsewhere again", channel=other)
    assert beta.chat_requests[-1].body["messages"][-1]["content"] == "alice: elsewhere again"
    show = await h.slash("model show", channel_id=other)
    assert "chosen for this server" in show.content
    # A channel's own choice beats the server's.
    await h.slash("model set", {"name": "fast"}, channel_id=other)
    await h.ask("and back", channel=other)
    assert alpha.chat_requests[-1].body["messages"][-1]["content"] == "alice: and back"


async def test_unknown_model_permissions_and_autocomplete(
    two: tuple[BotHarness, LLMStandIn, LLMStandIn],
) -> None:
    h, alpha, _ = two
    record = await h.slash("model set", {"name": "gpt-9"})
    assert record.ephemeral
    assert "no model called `gpt-9`" in record.content and "`smart`" in record.content
    record = await h.slash(
        "model set", {"name": "smart"}, strict=False, permissions=0, user_id=h.user
    )
    assert record.ephemeral and "**Manage Channels**" in record.content
    show = await h.slash("model show", strict=False, permissions=0, user_id=h.user)
    assert "**fast**" in show.content and "the bot's default" in show.content
    complete = await h.discord.invoke_autocomplete(
        "model set",
        {"name": ""},
        "name",
        channel_id=h.channel,
        user_id=h.discord.owner_user.id,
        guild_id=h.guild,
    )
    await complete.wait_response(5)
    assert complete.choices is not None
    assert [c["value"] for c in complete.choices] == ["fast", "smart", "flaky", "dead"]
    marked = [c["value"] for c in complete.choices if "current" in c["name"]]
    assert marked == ["fast"]
    await h.ask("still answered by the default")
    assert alpha.chat_requests[-1].body["model"] == "alpha-small"


async def test_fallback_before_the_first_token_but_not_after(
    two: tuple[BotHarness, LLMStandIn, LLMStandIn],
) -> None:
    h, alpha, beta = two
    await h.slash("model set", {"name": "flaky"})
    alpha.push(Behavior.error(503))
    parts = await h.ask("are you there?")
    assert parts[0].content == "Echo: alice: are you there?"
    assert alpha.chat_requests[-1].body["model"] == "alpha-flaky"
    assert beta.chat_requests[-1].body["model"] == "beta-large"
    note = fallback_note("flaky", "smart")
    await h.wait(lambda: any(note in n for n in notes_in(h, h.channel)))

    alpha.push(Behavior.error(429, headers={"Retry-After": "1"}))
    await h.ask("rate limited?")
    assert len(beta.chat_requests) == 2, "a 429 falls back too"
    alpha.push(Behavior(ttft=2.5))  # past alpha's first_token_timeout of 1 s
    parts = await h.ask("too slow?")
    assert len(beta.chat_requests) == 3, "a time-out before the first token falls back too"
    assert parts[0].content == "Echo: alice: too slow?"

    # Once text is on the screen, the reply is never switched to another model.
    alpha.push(Behavior(reply_tokens=40, tps=200, drop_after=5))
    parts = await h.ask("cut me off")
    assert len(beta.chat_requests) == 3
    assert "cut off" in parts[-1].content
    # ... and the failed exchange was not stored.
    await h.ask("what now?")
    sent = [m["content"] for m in beta.chat_requests[-1].body["messages"]]
    assert "alice: cut me off" not in sent

    # An unreachable provider falls back as well.
    await h.slash("model set", {"name": "dead"})
    parts = await h.ask("anyone home?")
    assert parts[0].content == "Echo: alice: anyone home?"
    assert alpha.chat_requests[-1].body["model"] == "alpha-small"
    await h.wait(lambda: any(fallback_note("dead", "fast") in n for n in notes_in(h, h.channel)))


async def test_context_budget_follows_the_model(
    two: tuple[BotHarness, LLMStandIn, LLMStandIn],
) -> None:
    h, alpha, beta = two
    for i in range(4):
        await h.ask(f"part {i}: {lorem(120)}")
    big = alpha.chat_requests[-1].body["messages"]
    assert len(big) == 1 + 6 + 1, "the 8000-token model sees all history"
    await h.slash("model set", {"name": "smart"})
    await h.ask("summarise please")
    small = beta.chat_requests[-1].body["messages"]
    assert 2 <= len(small) < 1 + 8 + 1, "the 1200-token model sees only the recent part"
    assert small[-1]["content"] == "alice: summarise please"
    assert h.services is not None
    models = h.services.conversations.models
    counter = models.counter(models.specs["smart"])
    assert counter.count_messages(small) <= 1200 - 300


async def test_usage_and_cost_per_model_with_a_chart_and_top_users(
    two: tuple[BotHarness, LLMStandIn, LLMStandIn],
) -> None:
    h, alpha, beta = two
    await h.ask("on the fast model")
    await h.slash("model set", {"name": "smart"})
    await h.ask("on the smart model, with a longer question " + lorem(30))
    fast, smart = alpha.chat_requests[-1], beta.chat_requests[-1]
    fast_tokens = fast.prompt_tokens + len(fast.chunks)
    smart_tokens = smart.prompt_tokens + len(smart.chunks)
    fast_cost = (fast.prompt_tokens * 1000 + len(fast.chunks) * 2000) / 1e6
    smart_cost = (smart.prompt_tokens * 10_000 + len(smart.chunks) * 20_000) / 1e6

    record = await h.slash("usage", {"scope": "channel"})
    assert record.ephemeral
    embed = record.embeds[0]
    lines = embed["description"].splitlines()
    assert lines == [
        f"`smart`: **{smart_tokens:,}** tokens · ≈ ${smart_cost:,.4f}",
        f"`fast`: **{fast_tokens:,}** tokens · ≈ ${fast_cost:,.4f}",
    ]
    month = next(f for f in embed["fields"] if f["name"] == "30 days")
    assert f"≈ ${fast_cost + smart_cost:,.4f}" in month["value"]

    assert embed["image"]["url"] == "attachment://usage.png"
    image = chart_of(h, record.original)
    assert image.size == (WIDTH, HEIGHT)
    series = {"smart": [0] * 29 + [smart_tokens], "fast": [0] * 29 + [fast_tokens]}
    plan = layout(series)
    x = plan.left + int(29.5 * (plan.right - plan.left) / 30)
    column = [image.getpixel((x, y)) for y in range(plan.top, plan.bottom)]
    smart_px, fast_px = column.count(PALETTE[0]), column.count(PALETTE[1])
    assert abs(smart_px - smart_tokens * plan.plot_height / plan.scale_max) <= 1
    assert abs(fast_px - fast_tokens * plan.plot_height / plan.scale_max) <= 1
    yesterday_x = plan.left + int(28.5 * (plan.right - plan.left) / 30)
    assert PALETTE[0] not in [
        image.getpixel((yesterday_x, y)) for y in range(plan.top, plan.bottom)
    ]

    record = await h.slash("usage", {"scope": "server"})
    top = next(f for f in record.embeds[0]["fields"] if f["name"].startswith("Top users"))
    assert top["value"] == f"<@{h.user}> · {fast_tokens + smart_tokens:,}"
    record = await h.slash("usage", user_id=h.user)
    assert not any(f["name"].startswith("Top users") for f in record.embeds[0]["fields"])


def chart_of(h: BotHarness, message: MessageRecord | None) -> Image.Image:
    assert message is not None and len(message.attachments) == 1
    attachment = message.attachments[0]
    assert attachment["filename"] == "usage.png"
    data, _ = h.discord.attachment_blobs[int(attachment["id"])]
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.convert("RGB")


async def test_the_old_single_llm_config_is_one_model(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    async with running_bot(redis_server.url) as h:
        show = await h.slash("model show")
        assert "**stand-in**" in show.content and "the bot's default" in show.content
        assert "Other models" not in show.content
        record = await h.slash("model set", {"name": "other"})
        assert "no model called `other`" in record.content and "`stand-in`" in record.content
        await h.ask("hello")
        assert h.llm.chat_requests[-1].body["model"] == "stand-in"
        usage = await h.slash("usage", user_id=h.user)
        assert usage.embeds[0]["description"].startswith("`stand-in`: **")
        assert isinstance(h.config.llm, LLMConfig) and not h.config.models


async def test_console_model_command(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    from bot.config import RedisConfig
    from bot.console import Console
    from bot.services import open_services

    async with LLMStandIn() as alpha, LLMStandIn() as beta:
        config = two_providers(alpha, beta)(
            Config(redis=RedisConfig(url=redis_server.url, key_prefix="console"))
        )
        async with open_services(config) as services:
            out = io.StringIO()
            console = Console(services, "desk", out=out, user="admin")
            lines: asyncio.Queue[str | None] = asyncio.Queue()
            for line in ["/model", "/model smart", "hello", "/model nope", "/usage", "/quit"]:
                lines.put_nowait(line)
            await console.run(lines)
    text = out.getvalue()
    assert text.startswith("Chatting in #desk with fast.")
    assert "Model: fast (alpha-small via alpha; default)" in text
    assert "Model: smart (beta-large via beta; channel)" in text
    assert "bot> Echo: admin: hello" in text and not alpha.chat_requests
    assert beta.chat_requests[-1].body["model"] == "beta-large"
    assert "There is no model called `nope`" in text
    assert "  smart: " in text and "tokens in 30 days ≈ $" in text


async def test_usage_report_per_model_with_prices_and_top_users(
    redis_client: aioredis.Redis,
) -> None:
    from bot.chat.usage import UsageService
    from bot.config import UsageConfig
    from bot.memory.store import UsageRecord
    from bot.models import TokenUsage

    store = Store(redis_client, prefix="u", max_turns=10, retention_days=1)
    await store.record_usage(UsageRecord(1, 2, 3, "a", TokenUsage(100, 50)))
    await store.record_usage(UsageRecord(1, 2, 3, "b", TokenUsage(10, 5, estimated=True)))
    await store.record_usage(UsageRecord(4, 2, 3, "a", TokenUsage(1000, 0)))
    # A background summary counts for the channel and server, but is nobody's.
    await store.record_usage(UsageRecord(0, 2, 3, "b", TokenUsage(20, 0), "summary"))
    own_prices = {"a": Price(prompt=2e6, completion=4e6)}
    service = UsageService(
        store, UsageConfig(prices={"b": Price(prompt=1e6, completion=1e6)}), prices=own_prices.get
    )
    report = await service.report("server", 3, top_users=5)
    assert list(report.by_model) == ["a", "b"], "largest first"
    a, b = report.by_model["a"], report.by_model["b"]
    assert (a.prompt, a.completion, a.cost) == (1100, 50, 1100 * 2 + 50 * 4)
    assert (b.total, b.cost, b.estimated_prompt) == (35, 35, 10)
    assert report.month.cost == a.cost + b.cost
    assert report.model_series["a"][-1] == 1150 and not any(report.model_series["a"][:-1])
    assert report.top_users == [(4, 1000), (1, 165)]
    assert (await service.report("channel", 2, top_users=5)).top_users == []
