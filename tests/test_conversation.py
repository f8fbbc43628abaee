"""The conversation service end to end: real Redis, a real loopback OpenAI-style server."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bot.config import Config, HistoryConfig, LLMConfig, PersonaConfig, RedisConfig, UsageConfig
from bot.console import Console
from bot.errors import (
    BotError,
    LLMAuthError,
    LLMContextTooLong,
    LLMCutOff,
    LLMError,
    LLMModelNotFound,
    LLMProtocolError,
    LLMRateLimited,
    LLMServerError,
    LLMTimeout,
    QuotaExceeded,
)
from bot.models import Place, Speaker
from bot.services import Services, open_services
from tests.standin.llm_api import Behavior, LLMStandIn, count_prompt_tokens

HERE = Place(channel_id=100, channel_name="general", guild_id=1, guild_name="Guild")
THERE = Place(channel_id=200, channel_name="random", guild_id=1, guild_name="Guild")
ANN = Speaker(1, "Ann")
BOB = Speaker(2, "Bob")


def make_config(redis_url: str, llm_url: str, **llm: object) -> Config:
    llm_config = LLMConfig(
        base_url=llm_url,
        api_key="sk-test-SECRET",
        model="stand-in",
        max_tokens=200,
        context_tokens=4000,
        first_token_timeout=2,
        idle_timeout=1,
        total_timeout=10,
        max_retries=0,
    )
    return Config(
        llm=replace(llm_config, **llm),  # type: ignore[arg-type]
        redis=RedisConfig(url=redis_url, key_prefix="test"),
        history=HistoryConfig(max_turns=50),
        persona=PersonaConfig(
            default="You are {bot_name} in #{channel}.", presets={"pirate": "Arr!"}
        ),
    )


@pytest.fixture
async def services(
    redis_client: aioredis.Redis, redis_url: str, llm: LLMStandIn
) -> AsyncIterator[Services]:
    async with open_services(make_config(redis_url, llm.base_url)) as built:
        yield built


async def ask(services: Services, place: Place, who: Speaker, text: str) -> str:
    async with services.conversations.reply(place, who, text) as reply:
        parts = [d async for d in reply]
    assert reply.outcome is not None
    assert "".join(parts) == reply.outcome.text
    return reply.outcome.text


async def test_memory_across_turns_with_speakers(services: Services, llm: LLMStandIn) -> None:
    assert await ask(services, HERE, ANN, "my name is Ann") == "Echo: Ann: my name is Ann"
    await ask(services, HERE, BOB, "and I am Bob")
    sent = llm.chat_requests[-1].body["messages"]
    assert sent[0] == {"role": "system", "content": "You are Assistant in #general."}
    assert [m["content"] for m in sent[1:]] == [
        "Ann: my name is Ann",
        "Echo: Ann: my name is Ann",
        "Bob: and I am Bob",
    ]
    history = await services.store.history(HERE.channel_id)
    assert [(t.role, t.author_name) for t in history] == [
        ("user", "Ann"), ("assistant", None), ("user", "Bob"), ("assistant", None)
    ]  # fmt: skip


async def test_channels_are_isolated(services: Services, llm: LLMStandIn) -> None:
    await ask(services, HERE, ANN, "secret in here")
    await ask(services, THERE, ANN, "hello there")
    contents = [m["content"] for m in llm.chat_requests[-1].body["messages"]]
    assert not any("secret" in c for c in contents)


async def test_persona_reaches_the_model_and_reset_keeps_it(
    services: Services, llm: LLMStandIn
) -> None:
    await services.personas.use_preset("channel", HERE.channel_id, "pirate")
    await ask(services, HERE, ANN, "hi")
    assert llm.chat_requests[-1].body["messages"][0] == {"role": "system", "content": "Arr!"}
    assert await services.conversations.reset(HERE.channel_id) == 2
    await ask(services, HERE, ANN, "again")
    messages = llm.chat_requests[-1].body["messages"]
    assert messages[0]["content"] == "Arr!" and len(messages) == 2


async def test_usage_equals_what_the_server_reported(services: Services, llm: LLMStandIn) -> None:
    for i in range(3):
        await ask(services, HERE, ANN if i % 2 else BOB, f"question {i}")
    reported_prompt = sum(r.prompt_tokens for r in llm.chat_requests)
    reported_completion = sum(len(r.chunks) for r in llm.chat_requests)
    channel = await services.usage.report("channel", HERE.channel_id)
    assert (channel.today.prompt, channel.today.completion) == (
        reported_prompt,
        reported_completion,
    )
    assert not channel.today.has_estimates
    ann = await services.usage.report("user", ANN.id)
    bob = await services.usage.report("user", BOB.id)
    assert ann.today.total + bob.today.total == channel.today.total
    server = await services.usage.report("server", 1)
    assert server.today.total == channel.today.total
    # stored token counts follow what the server reported for replies
    history = await services.store.history(HERE.channel_id)
    assert [t.tokens for t in history if t.role == "assistant"] == [
        len(r.chunks) for r in llm.chat_requests
    ]
    assert llm.chat_requests[0].body["stream_options"] == {"include_usage": True}
    assert (
        count_prompt_tokens(llm.chat_requests[0].body["messages"])
        == llm.chat_requests[0].prompt_tokens
    )


async def test_no_usage_from_provider_is_estimated_and_marked(
    services: Services, llm: LLMStandIn
) -> None:
    llm.push(Behavior(usage=False))
    await ask(services, HERE, ANN, "count yourself")
    report = await services.usage.report("user", ANN.id)
    assert report.today.total > 0 and report.today.has_estimates
    assert report.today.estimated_completion == report.today.completion


@pytest.mark.parametrize(
    ("behavior", "error"),
    [
        (Behavior.error(401), LLMAuthError),
        (Behavior.error(404), LLMModelNotFound),
        (Behavior.error(429, headers={"Retry-After": "7"}), LLMRateLimited),
        (
            Behavior.error(
                400, {"error": {"code": "context_length_exceeded", "message": "too long"}}
            ),
            LLMContextTooLong,
        ),
        (Behavior.error(500, "internal oops"), LLMServerError),
        (Behavior(drop_after=3), LLMCutOff),
        (Behavior(finish_reason=None), LLMCutOff),
        (Behavior(hang_after=2), LLMTimeout),
        (Behavior(ttft=5), LLMTimeout),
        (Behavior(malformed_after=2), LLMProtocolError),
    ],
)
async def test_every_failure_rolls_back(
    services: Services, llm: LLMStandIn, behavior: Behavior, error: type[LLMError]
) -> None:
    await ask(services, HERE, ANN, "first, this works")
    llm.push(behavior)
    with pytest.raises(error) as info:
        await ask(services, HERE, ANN, "then this fails")
    assert "sk-test-SECRET" not in str(info.value) and info.value.user_text
    history = await services.store.history(HERE.channel_id)
    assert [t.content for t in history] == ["first, this works", "Echo: Ann: first, this works"]
    assert await services.store.redis.get(services.store.keys.lock(HERE.channel_id)) is None
    # the channel is usable right after
    await ask(services, HERE, ANN, "and now?")
    assert len(await services.store.history(HERE.channel_id)) == 4


async def test_spent_tokens_of_a_failed_reply_still_count(
    services: Services, llm: LLMStandIn
) -> None:
    llm.push(Behavior(drop_after=5))
    with pytest.raises(LLMCutOff):
        await ask(services, HERE, ANN, "this will be cut")
    report = await services.usage.report("user", ANN.id)
    assert report.today.completion > 0 and report.today.has_estimates


async def test_abandoned_reply_stores_nothing(services: Services, llm: LLMStandIn) -> None:
    llm.push(Behavior(reply_tokens=50, tps=200))
    async with services.conversations.reply(HERE, ANN, "long one") as reply:
        async for _ in reply:
            break
    assert reply.outcome is None
    assert await services.store.history(HERE.channel_id) == []


async def test_concurrent_messages_in_one_channel_keep_order(
    services: Services, llm: LLMStandIn
) -> None:
    llm.default = Behavior(tps=200)
    speakers = [Speaker(i, f"user{i}") for i in range(5)]
    await asyncio.gather(*(ask(services, HERE, s, f"message from {s.name}") for s in speakers))
    history = await services.store.history(HERE.channel_id)
    assert len(history) == 10
    for user_turn, reply_turn in zip(history[::2], history[1::2], strict=True):
        assert user_turn.role == "user" and reply_turn.role == "assistant"
        assert reply_turn.content == f"Echo: {user_turn.author_name}: {user_turn.content}"
    assert [t.author_name for t in history[::2]] == [s.name for s in speakers]


async def test_length_finish_is_stored_with_a_note(services: Services, llm: LLMStandIn) -> None:
    llm.push(Behavior(finish_reason="length"))
    async with services.conversations.reply(HERE, ANN, "ramble") as reply:
        [d async for d in reply]
    assert reply.outcome and reply.outcome.finish_reason == "length"
    assert any("length limit" in n for n in reply.outcome.notes)
    assert len(await services.store.history(HERE.channel_id)) == 2


async def test_quota_refuses_before_calling_the_model(
    redis_client: aioredis.Redis, redis_url: str, llm: LLMStandIn
) -> None:
    config = replace(make_config(redis_url, llm.base_url), usage=UsageConfig(daily_token_quota=30))
    async with open_services(config) as services:
        await ask(services, HERE, ANN, "a question that uses up the small quota " * 3)
        calls = len(llm.chat_requests)
        with pytest.raises(QuotaExceeded) as info:
            await ask(services, HERE, ANN, "one more")
        assert len(llm.chat_requests) == calls
        assert "daily limit of 30 tokens" in info.value.user_text
        await ask(services, HERE, BOB, "other users are unaffected")


async def test_trimming_keeps_persona_within_budget(
    redis_client: aioredis.Redis, redis_url: str, llm: LLMStandIn
) -> None:
    config = make_config(redis_url, llm.base_url, context_tokens=600, max_tokens=100)
    # Without summaries (tests/test_summary.py has them): the stored history stays whole.
    config = replace(config, history=replace(config.history, summarize=False))
    async with open_services(config) as services:
        for i in range(20):
            await ask(services, HERE, ANN, f"message {i} " + "filler words here " * 10)
        sent = llm.chat_requests[-1].body["messages"]
        assert sent[0]["role"] == "system"
        assert sent[-1]["content"].startswith("Ann: message 19")
        assert len(sent) < 40
        assert services.counter.count_messages(sent) <= 500
        assert len(await services.store.history(HERE.channel_id)) == 40


async def test_retry_before_first_token(
    redis_client: aioredis.Redis, redis_url: str, llm: LLMStandIn
) -> None:
    config = make_config(redis_url, llm.base_url, max_retries=2)
    async with open_services(config) as services:
        llm.push(Behavior.error(503), Behavior.error(429, headers={"Retry-After": "0"}))
        assert await ask(services, HERE, ANN, "third time lucky") == "Echo: Ann: third time lucky"
        assert len(llm.chat_requests) == 3


async def test_history_survives_restart_of_the_embedded_redis(
    tmp_path: object, llm: LLMStandIn
) -> None:
    config = replace(make_config("", llm.base_url), redis=RedisConfig(data_dir=f"{tmp_path}/redis"))
    async with open_services(config) as services:
        assert services.embedded_redis is not None
        await ask(services, HERE, ANN, "remember the word banana")
    async with open_services(config) as services:
        await ask(services, HERE, ANN, "what was the word?")
    messages = llm.chat_requests[-1].body["messages"]
    assert messages[1]["content"] == "Ann: remember the word banana"


async def test_console_chat_uses_the_same_services(services: Services, llm: LLMStandIn) -> None:
    out = io.StringIO()
    console = Console(services, "desk", out=out, user="admin")
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    for line in ["hello bot", "/persona preset pirate", "/persona", "/usage", "/reset", "/quit"]:
        lines.put_nowait(line)
    await console.run(lines)
    text = out.getvalue()
    assert "bot> Echo: admin: hello bot" in text
    assert "Arr!" in text and "Forgot 2 messages" in text and "today" in text
    llm.push(Behavior.error(401))
    lines.put_nowait("fails")
    lines.put_nowait(None)
    await console.run(lines)
    assert "rejected the bot's API key" in out.getvalue()


async def test_console_attach_sends_a_file_and_an_image(
    redis_client: aioredis.Redis, redis_url: str, llm: LLMStandIn, tmp_path: Path
) -> None:
    from PIL import Image

    from tests.standin.llm_api import image_urls

    (tmp_path / "notes.md").write_text("# Plan\nship it")
    Image.new("RGB", (3000, 1000)).save(tmp_path / "wide.png")
    config = make_config(redis_url, llm.base_url, vision=True)
    async with open_services(config) as services:
        out = io.StringIO()
        console = Console(services, "desk", out=out, user="admin")
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        for line in [
            f"/attach {tmp_path / 'notes.md'}",
            f"/attach {tmp_path / 'wide.png'}",
            f"/attach {tmp_path / 'missing.txt'}",
            "/attach",
            "read these",
            "/quit",
        ]:
            lines.put_nowait(line)
        await console.run(lines)
    text = out.getvalue()
    assert "Attached notes.md" in text and "Cannot attach" in text
    assert "Attached to your next message: notes.md, wide.png." in text
    sent = llm.chat_requests[-1].body["messages"][-1]["content"]
    assert (
        sent[0]["text"]
        == "admin: read these\n\nFile `notes.md`:\n```markdown\n# Plan\nship it\n```"
    )
    (urls,) = image_urls(llm.chat_requests[-1].body)
    assert len(urls) == 1 and urls[0].startswith("data:image/jpeg;base64,")
    assert console.attached == []


def test_bot_error_texts_are_plain() -> None:
    assert BotError().user_text


async def test_cluster_mode_is_detected_from_the_url(
    services: Services, redis_backend: str
) -> None:
    """`redis.cluster = "auto"`: a cluster node's URL gets the cluster client."""
    assert services.store.cluster is (redis_backend == "cluster")
