"""Reliability: Discord misbehaving (5xx, 429 storms, gateway drops, expired tokens)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from bot.memory.redis_server import EmbeddedRedis
from tests.harness import MARKER, BotHarness, running_bot
from tests.reliability_report import measure, reliability_report  # noqa: F401
from tests.standin.llm_api import Behavior

EDIT = r"^/channels/\d+/messages/\d+$"
SEND = r"^/channels/\d+/messages$"


@pytest.fixture
async def h(redis_client: aioredis.Redis, redis_server: EmbeddedRedis) -> AsyncIterator[BotHarness]:
    async with running_bot(redis_server.url) as harness:
        yield harness


async def stored(h: BotHarness, channel: int | None = None) -> list[tuple[str, str]]:
    assert h.services is not None
    return [(t.role, t.content) for t in await h.services.store.history(channel or h.channel)]


async def test_discord_5xx_on_edits_final_text_lands(h: BotHarness) -> None:
    h.llm.default = Behavior(reply_tokens=60, tps=40)
    # discord.py itself retries a 5xx after 1 s, then 3 s: one of each keeps this short.
    h.discord.fail_next("PATCH", EDIT, 500, count=1)
    h.discord.fail_next("PATCH", EDIT, 502, count=1)
    message = await h.say("edit through errors")
    await h.settle(timeout=40)
    parts = h.replies_to(message)
    expected = h.llm.chat_requests[-1].text
    assert [p.content for p in parts] == [expected], "the final text did not land"
    failed = [r for r in h.discord.requests("PATCH") if r.status in (500, 502)]
    assert len(failed) == 2, "the injected 5xx were not all hit"
    assert await stored(h) == [
        ("user", "edit through errors"),
        ("assistant", expected),
    ]


async def test_discord_429_storm_replies_complete(
    h: BotHarness, pytestconfig: pytest.Config
) -> None:
    channels = [h.discord.add_channel(h.guild, f"storm-{i}") for i in range(5)]
    await h.discord.flush()
    h.llm.default = Behavior(reply_tokens=50, tps=40)
    h.discord.force_429(EDIT, count=12, retry_after=0.4)
    h.discord.force_429(SEND, count=4, retry_after=0.3)
    h.discord.force_429(EDIT, count=2, retry_after=0.5, is_global=True)
    forced = 12 + 4 + 2
    asked = [await h.say(f"storm {i}", channel=c) for i, c in enumerate(channels)]
    await h.settle(timeout=60)
    texts = {r.body["messages"][-1]["content"]: r.text for r in h.llm.chat_requests}
    for i, message in enumerate(asked):
        parts = h.replies_to(message)
        assert [p.content for p in parts] == [texts[f"alice: storm {i}"]]
        assert MARKER not in parts[-1].content
    served = h.discord.count_429()
    measure(pytestconfig, f"429 storm: {forced} forced, {served} served in total")
    assert served == forced, "the bot provoked 429s of its own"


async def test_discord_gateway_closes_mid_stream(h: BotHarness) -> None:
    h.llm.push(Behavior(reply_tokens=80, tps=40))  # about 2 s of streaming
    other = h.discord.add_channel(h.guild, "other")
    await h.discord.flush()
    first = await h.say("a long answer please")
    await h.wait(lambda: h.replies_to(first))  # streaming has begun
    assert await h.discord.close_gateway(4000) == 1
    during = await h.say("sent while the gateway is down", channel=other)
    await h.settle(timeout=30)
    await h.wait(lambda: h.replies_to(during), timeout=15)
    await h.settle(timeout=30)
    parts = h.replies_to(first)
    assert [p.content for p in parts] == [h.llm.chat_requests[0].text]
    assert [p.content for p in h.replies_to(during)] == [
        "Echo: alice: sent while the gateway is down"
    ]
    kinds = [rec.op for rec in h.discord.identifies]
    assert kinds.count(2) == 1 and kinds.count(6) >= 1, (
        f"expected one IDENTIFY, then RESUME: {kinds}"
    )
    after = await h.ask("after the resume")
    assert [p.content for p in after] == ["Echo: alice: after the resume"]


async def test_discord_expired_interaction_token(
    h: BotHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    # 1. Expired before the bot acknowledged it (the ack itself is refused).
    h.discord.add_latency(0.5, r"^/interactions/\d+/[^/]+/callback$")
    record = await h.discord.invoke_slash(
        "persona show", {}, channel_id=h.channel, user_id=h.discord.owner_user.id, guild_id=h.guild
    )
    record.expire()
    await asyncio.sleep(1.5)
    assert record.callback is None
    h.discord.clear_faults()
    # 2. Expired between the "thinking..." defer and the follow-up.
    h.discord.add_latency(0.5, r"^/webhooks/")
    record = await h.discord.invoke_slash(
        "usage", {}, channel_id=h.channel, user_id=h.user, guild_id=h.guild
    )
    await record.wait_response(5)
    assert record.deferred
    record.expire()
    await asyncio.sleep(1.5)
    h.discord.clear_faults()
    assert not record.followups and not record.content
    warnings = [r.getMessage() for r in caplog.records if r.name == "bot.client"]
    assert any("10062" in w and "could not answer" in w for w in warnings), warnings
    assert any("10015" in w and "could not answer" in w for w in warnings), warnings
    assert h.bot is not None and not h.bot.is_closed()
    parts = await h.ask("still there?")
    assert [p.content for p in parts] == ["Echo: alice: still there?"]
    fresh = await h.slash("persona show")
    assert fresh.ephemeral and fresh.embeds
