"""Thinking models over the wire: the LLM stand-in thinks in each format servers use, the
real bot streams to the Discord stand-in, real Redis keeps history and thoughts."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from bot.config import Config, LLMConfig, RedisConfig
from bot.console import Console
from bot.errors import LLMCutOff, LLMOnlyThought, LLMTimeout
from bot.llm.client import LLMClient
from bot.memory.redis_server import EmbeddedRedis
from bot.models import Place, Speaker
from bot.services import Services, open_services
from tests.harness import BotHarness, running_bot
from tests.standin.discord_models import MessageRecord
from tests.standin.llm_api import Behavior, LLMStandIn

SECRET = "ZEBRAPLAN"
THOUGHT = f"Okay, the user greets me. I will use the {SECRET} and answer kindly."
ANSWER = "Hello! The answer is 42."
FORMATS = ["reasoning_content", "reasoning", "reasoning_details", "inline", "closing_only"]
HERE = Place(channel_id=100, channel_name="general", guild_id=1, guild_name="Guild")
ANN = Speaker(1, "Ann")


def thinker(fmt: str = "reasoning_content", **kw: Any) -> Behavior:
    return Behavior(reply=ANSWER, thinking=THOUGHT, thinking_format=fmt, **kw)


def everything_sent(h: BotHarness) -> list[str]:
    """Every content any create or edit of the bot put into the channel for all to see."""
    out = []
    for msg in h.discord.bot_messages_in(h.channel):
        if not msg.ephemeral:
            out += [e.content for e in msg.history]
    for req in h.discord.requests(path_contains="/channels/"):
        if isinstance(req.json, dict) and isinstance(req.json.get("content"), str):
            out.append(req.json["content"])
    return out


def thinking_ids(msg: MessageRecord) -> list[str]:
    return [
        c["custom_id"]
        for row in msg.components
        for c in row.get("components", [])
        if str(c.get("custom_id", "")).startswith("think:")
    ]


@pytest.mark.parametrize("fmt", FORMATS)
async def test_each_format_never_leaks_thoughts_and_offers_them(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis, fmt: str
) -> None:
    overrides = {"llm": {"thinking_starts_open": fmt == "closing_only"}}
    async with running_bot(redis_server.url, overrides=overrides) as h:
        h.llm.push(thinker(fmt, tps=200), Behavior(reply="Second answer."))
        (reply,) = await h.ask("hi there")
        assert reply.content == ANSWER
        sent = everything_sent(h)
        assert sent and not any(SECRET in c or "think>" in c for c in sent), sent
        (custom_id,) = thinking_ids(reply)

        await h.ask("and again")
        messages = h.llm.chat_requests[-1].body["messages"]
        assert messages[2] == {"role": "assistant", "content": ANSWER}
        assert not any(SECRET in str(m["content"]) for m in messages)
        history = await h.services.store.history(h.channel) if h.services else []
        assert [t.content for t in history if t.role == "assistant"] == [
            ANSWER,
            "Second answer.",
        ]

        # Someone else presses the button: only they see the thoughts.
        other = h.discord.add_user("bob", guild_id=h.guild)
        await h.discord.flush()
        press = await h.discord.invoke_component(reply.id, custom_id, user_id=other)
        text = await press.wait_content()
        assert press.ephemeral and press.user_id == other
        assert text == THOUGHT
        assert not any(SECRET in c for c in everything_sent(h)), "nothing public"


async def test_usage_recorded_as_reported_thinking_included(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    async with running_bot(redis_server.url) as h:
        h.llm.push(thinker())
        await h.ask("count my thoughts")
        (req,) = h.llm.chat_requests
        assert req.thinking_chunks > 0
        assert h.services is not None
        report = await h.services.usage.report("user", h.user)
        assert report.today.prompt == req.prompt_tokens
        assert report.today.completion == len(req.chunks) + req.thinking_chunks


async def test_long_thinking_beyond_first_token_timeout_shows_a_live_status(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    overrides = {"llm": {"first_token_timeout": 1.0, "idle_timeout": 1.0}}
    async with running_bot(redis_server.url, overrides=overrides, edit_interval=0.5) as h:
        # 3 s of thinking, a word every 0.15 s: three first-token time-outs long.
        words = " ".join(f"step{i} {SECRET}" for i in range(10))
        h.llm.push(Behavior(reply=ANSWER, thinking=words, thinking_tps=20 / 3))
        message = await h.say("think hard")
        await h.settle(30)
        (reply,) = h.replies_to(message)
        assert reply.content == ANSWER
        shown = [e.content for e in reply.history]
        assert shown[0].startswith("💭 Thinking")
        assert any(c.startswith("💭 Thinking… 2 s") for c in shown), shown
        statuses = [c for c in shown if c.startswith("💭")]
        assert len(statuses) <= 3 / 0.5 + 2, "status edits stay within the edit pacing"
        assert not any(SECRET in c for c in everything_sent(h))
        assert h.discord.count_429() == 0


async def test_show_thinking_off_shows_no_button_and_keeps_nothing(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    async with running_bot(redis_server.url, show_thinking="off") as h:
        h.llm.push(thinker("inline"))
        (reply,) = await h.ask("hi")
        assert reply.content == ANSWER and thinking_ids(reply) == []
        assert await redis_client.keys("*thoughts*") == []


async def test_only_thinking_cut_by_length_gets_a_note_and_stores_nothing(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    async with running_bot(redis_server.url) as h:
        h.llm.push(thinker("inline", cut_in_thinking=True, finish_reason="length"))
        (reply,) = await h.ask("a hard one")
        assert "length limit" in reply.content and "while thinking" in reply.content
        assert not any(SECRET in c or "think>" in c for c in everything_sent(h))
        assert h.services is not None
        assert await h.services.store.history(h.channel) == []
        assert thinking_ids(reply), "the thoughts can still be looked at"
        report = await h.services.usage.report("user", h.user)
        assert report.today.completion == h.llm.chat_requests[0].thinking_chunks


async def test_long_thoughts_come_as_a_markdown_file(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    async with running_bot(redis_server.url) as h:
        long_thought = " ".join(f"thought{i}" for i in range(400))
        h.llm.push(Behavior(reply=ANSWER, thinking=long_thought, thinking_tps=None))
        (reply,) = await h.ask("go long")
        (custom_id,) = thinking_ids(reply)
        press = await h.discord.invoke_component(reply.id, custom_id, user_id=h.user)
        await press.wait_content()
        assert press.ephemeral and "attached" in (press.content or "")
        (callback,) = h.discord.requests("POST", f"/interactions/{press.id}/")
        ((_, name, data),) = callback.files
        assert name == "thinking.md" and data.decode() == long_thought


async def test_expired_thoughts_get_a_clear_ephemeral_note(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    async with running_bot(redis_server.url) as h:
        h.llm.push(thinker())
        (reply,) = await h.ask("hi")
        (custom_id,) = thinking_ids(reply)
        for key in await redis_client.keys("*thoughts*"):
            await redis_client.delete(key)
        press = await h.discord.invoke_component(reply.id, custom_id, user_id=h.user)
        text = await press.wait_content()
        assert press.ephemeral and "kept for a day" in text


# --- the engine and the console, without Discord ------------------------------------------


def engine_config(redis_url: str, llm_url: str, **llm: Any) -> Config:
    base = LLMConfig(
        base_url=llm_url,
        model="stand-in",
        max_tokens=200,
        context_tokens=4000,
        first_token_timeout=0.5,
        idle_timeout=0.5,
        total_timeout=10,
        max_retries=0,
    )
    return Config(llm=replace(base, **llm), redis=RedisConfig(url=redis_url, key_prefix="t16"))


@pytest.fixture
async def services(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis, llm: LLMStandIn
) -> AsyncIterator[Services]:
    async with open_services(engine_config(redis_server.url, llm.base_url)) as built:
        yield built


async def test_engine_hands_up_thinking_apart_and_estimates_it(
    services: Services, llm: LLMStandIn
) -> None:
    # 1.5 s of thinking against a 0.5 s first-token time-out; no usage reported.
    llm.push(thinker("reasoning", thinking_tps=8, usage=False))
    seen: list[str] = []
    async with services.conversations.reply(HERE, ANN, "hello") as reply:
        reply.on_thinking = seen.append
        answer = "".join([d async for d in reply])
    assert answer == ANSWER and "".join(seen) == THOUGHT
    assert reply.outcome is not None and reply.outcome.thinking == THOUGHT
    usage = reply.outcome.usage
    assert usage.estimated
    counter = services.counter
    assert usage.completion_tokens == counter.count(ANSWER) + counter.count(THOUGHT)
    (turn,) = [t for t in await services.store.history(HERE.channel_id) if t.role == "assistant"]
    assert turn.content == ANSWER and turn.tokens == counter.count(ANSWER)


async def test_engine_only_thought_is_a_clear_error(services: Services, llm: LLMStandIn) -> None:
    llm.push(thinker("reasoning_content", cut_in_thinking=True, finish_reason="length"))
    with pytest.raises(LLMOnlyThought) as caught:
        async with services.conversations.reply(HERE, ANN, "hello") as reply:
            async for _ in reply:
                pass
    assert "max_tokens" in caught.value.user_text
    assert await services.store.history(HERE.channel_id) == []


async def test_console_shows_a_thinking_line_then_the_answer(
    services: Services, llm: LLMStandIn
) -> None:
    llm.push(thinker("inline"))
    out = io.StringIO()
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    for line in ["hello", None]:
        lines.put_nowait(line)
    await Console(services, "desk", out=out, user="admin").run(lines)
    text = out.getvalue()
    assert f"bot> (thinking...)\nbot> {ANSWER}" in text
    assert SECRET not in text


# --- the LLM client's time-outs and retries with thinking ---------------------------------


def client_for(session: aiohttp.ClientSession, llm: LLMStandIn, **kw: Any) -> LLMClient:
    values: dict[str, Any] = {
        "base_url": llm.base_url,
        "model": "m",
        "first_token_timeout": 0.5,
        "idle_timeout": 0.5,
        "total_timeout": 5.0,
        "max_retries": 2,
    }
    values.update(kw)
    return LLMClient(session, LLMConfig(**values), backoff_base=0.01, backoff_cap=0.02)


async def test_client_thinking_ends_the_first_token_wait_and_idle_applies_to_it(
    llm: LLMStandIn,
) -> None:
    async with aiohttp.ClientSession() as session:
        client = client_for(session, llm)
        # Thinking starts in time, then goes silent: the idle time-out, not first_token.
        llm.push(thinker(ttft=0.1, hang_after=0))
        stream = client.stream([{"role": "user", "content": "hi"}])
        with pytest.raises(LLMTimeout) as caught:
            async with stream:
                deltas = [d async for d in stream.deltas()]
        assert caught.value.phase == "idle"
        assert stream.thinking == THOUGHT and stream.text == ""
        # Thinking that starts too late is a first-token time-out.
        llm.push(thinker(ttft=1.0))
        with pytest.raises(LLMTimeout) as caught:
            async with client.stream([{"role": "user", "content": "hi"}]):
                pass
        assert caught.value.phase == "first_token"
        # Typed deltas: thinking first, then the answer, each apart.
        llm.push(thinker())
        async with client.stream([{"role": "user", "content": "hi"}]) as s:
            deltas = [d async for d in s.deltas()]
        assert deltas[0].kind == "thinking" and deltas[-1].kind == "answer"
        assert "".join(d.text for d in deltas if d.kind == "answer") == s.text == ANSWER
        assert "".join(d.text for d in deltas if d.kind == "thinking") == s.thinking == THOUGHT


async def test_client_no_retry_once_the_model_was_thinking(llm: LLMStandIn) -> None:
    async with aiohttp.ClientSession() as session:
        client = client_for(session, llm)
        llm.push(thinker(drop_after=0), thinker())
        answer: list[str] = []
        with pytest.raises(LLMCutOff):
            async with client.stream([{"role": "user", "content": "hi"}]) as s:
                async for d in s:
                    answer.append(d)
        assert answer == [] and len(llm.chat_requests) == 1
        assert s.thinking == THOUGHT


async def test_client_learns_a_template_that_opens_the_thinking_block(llm: LLMStandIn) -> None:
    async with aiohttp.ClientSession() as session:
        client = client_for(session, llm)
        llm.push(thinker("closing_only"), thinker("closing_only"), Behavior(reply="Plain."))
        messages = [{"role": "user", "content": "hi"}]
        async with client.stream(messages) as first:
            [d async for d in first]
        # Without `thinking_starts_open` the first reply's thoughts are its answer (the
        # known cost), but the tag is gone and the client learns.
        assert "</think>" not in first.text and client.learned_starts_open
        async with client.stream(messages) as second:
            answer = [d async for d in second]
        assert "".join(answer) == ANSWER and second.thinking.strip() == THOUGHT
        async with client.stream(messages) as third:
            assert [d async for d in third] == ["Plain."]  # a reply without thinking


async def test_thoughts_are_kept_a_day_capped_in_the_channels_slot(
    services: Services, redis_client: aioredis.Redis
) -> None:
    from bot.chat.thoughts import CUT_NOTE, MAX_THOUGHT_CHARS

    key = await services.thoughts.keep(HERE.channel_id, "x" * (MAX_THOUGHT_CHARS * 2))
    assert key is not None and await services.thoughts.keep(HERE.channel_id, " \n ") is None
    text = await services.thoughts.get(HERE.channel_id, key)
    assert len(text) == MAX_THOUGHT_CHARS and text.endswith(CUT_NOTE)
    (name,) = await redis_client.keys("*thoughts*")
    assert "{c100}" in name  # the channel's hash tag: one Cluster slot with its history
    assert 86_000 < await redis_client.ttl(name) <= 86_400


async def test_console_on_a_terminal_shows_the_thinking_dimmed(
    services: Services, llm: LLMStandIn
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    llm.push(thinker("reasoning"))
    out = Terminal()
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    for line in ["hello", None]:
        lines.put_nowait(line)
    await Console(services, "desk", out=out, user="admin").run(lines)
    text = out.getvalue()
    assert "\x1b[2m" in text and SECRET in text
    dimmed = text[text.index("\x1b[2m") : text.rindex("\x1b[0m")]
    assert ANSWER not in dimmed and text.rstrip().endswith("bye")
    assert f"\nbot> {ANSWER}" in text
