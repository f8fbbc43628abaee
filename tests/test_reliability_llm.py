"""Reliability: the LLM server misbehaving over the wire.

Each fault: the person sees a clear note (or a correct reply), the conversation in Redis
stays consistent (no dangling user turn, no half reply), no channel lock is left behind,
and the bot answers the next message normally.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from bot.delivery.splitter import plan_split
from bot.memory.redis_server import EmbeddedRedis
from bot.memory.store import utc_day
from tests.harness import MARKER, BotHarness, running_bot
from tests.reliability_report import reliability_report  # noqa: F401  (enables the table)
from tests.standin.discord_api import RateLimits
from tests.standin.latency import Latency
from tests.standin.llm_api import Behavior, LLMStandIn

FAST_TIMEOUTS = {"first_token_timeout": 1.5, "idle_timeout": 1.0}


@pytest.fixture
async def h(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis, latency: Latency | None
) -> AsyncIterator[BotHarness]:
    async with running_bot(
        redis_server.url, overrides={"llm": FAST_TIMEOUTS}, latency=latency
    ) as harness:
        yield harness


async def stored(h: BotHarness, channel: int | None = None) -> list[tuple[str, str]]:
    assert h.services is not None
    turns = await h.services.store.history(channel or h.channel)
    return [(t.role, t.content) for t in turns]


async def assert_consistent_and_alive(
    h: BotHarness, redis_client: aioredis.Redis, before: list[tuple[str, str]]
) -> None:
    """Nothing of the failed exchange is stored, no lock is left, the next turn works."""
    assert await stored(h) == before, "a failed reply left something in the history"
    assert h.services is not None
    assert not await redis_client.exists(h.services.store.keys.lock(h.channel))
    parts = await h.ask("after the fault")
    assert [p.content for p in parts] == ["Echo: alice: after the fault"]
    sent = [m["content"] for m in h.llm.chat_requests[-1].body["messages"]]
    assert not any("the faulty one" in c for c in sent), "the failed turn reached the model"
    assert await stored(h) == [
        *before,
        ("user", "after the fault"),
        ("assistant", "Echo: alice: after the fault"),
    ]


FAULTS = {
    "429-retry-after": (
        Behavior.error(429, headers={"Retry-After": "7"}),
        "rate limiting the bot. Try again in 7 s",
        False,
    ),
    "500": (Behavior.error(500), "internal error", False),
    "hang-before-first-token": (
        Behavior(hang_after=0),
        "took too long to start answering",
        False,
    ),
    "hang-mid-stream": (
        Behavior(reply_tokens=60, tps=200, hang_after=20),
        "stopped sending text mid-answer",
        True,
    ),
    "drop-mid-stream": (Behavior(reply_tokens=60, tps=200, drop_after=20), "cut off", True),
    "malformed-json": (
        Behavior(reply_tokens=60, tps=200, malformed_after=20),
        "could not read",
        True,
    ),
    "no-done-no-finish-reason": (
        Behavior(reply_tokens=30, tps=200, send_done=False, finish_reason=None),
        "cut off",
        True,
    ),
}


# Every fault against an instant Discord; errors before and during a stream also against
# one taking 50-400 ms per request (where an instant error used to show 8 s late).
WITH_LATENCY = ("500", "hang-mid-stream", "drop-mid-stream")


@pytest.mark.parametrize(
    ("fault", "latency"),
    [(f, "none") for f in FAULTS] + [(f, "realistic") for f in WITH_LATENCY],
    indirect=["latency"],
)
async def test_llm_fault(h: BotHarness, redis_client: aioredis.Redis, fault: str) -> None:
    behavior, note, partial = FAULTS[fault]
    await h.ask("before the fault")
    before = await stored(h)
    h.llm.push(behavior)
    parts = await h.ask("the faulty one")
    assert parts, "the person got no answer at all"
    contents = [p.content for p in parts]
    assert note in contents[-1] and "⚠️" in contents[-1]
    assert all(MARKER not in c for c in contents)
    sent_text = h.llm.chat_requests[-1].text
    if partial:
        assert sent_text and contents[0].startswith(sent_text[:50].strip())
    else:
        assert len(contents) == 1 and contents[0].startswith("⚠️ ")
    assert all(am is not None and am["parse"] == [] for p in parts for am in p.allowed_mentions)
    # Tokens the provider spent on a reply that failed part-way still count for /usage.
    assert h.services is not None
    usage = await redis_client.hgetall(h.services.store.keys.usage("user", h.user, utc_day()))
    assert int(usage["requests"]) == (2 if partial else 1)
    await assert_consistent_and_alive(h, redis_client, before)


async def test_llm_connection_refused(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    llm = LLMStandIn()
    await llm.start()
    await llm.close()  # the port is now closed: connections are refused
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", llm.port)) != 0
    try:
        async with running_bot(redis_server.url, llm=llm) as h:
            parts = await h.ask("anyone home?")
            assert [p.content for p in parts] == [
                "⚠️ The language model server can't be reached right now."
            ]
            assert await stored(h) == []
            await llm.start()  # the server comes back on the same port
            parts = await h.ask("and now?")
            assert [p.content for p in parts] == ["Echo: alice: and now?"]
            assert await stored(h) == [("user", "and now?"), ("assistant", "Echo: alice: and now?")]
    finally:
        await llm.close()


async def test_llm_429_is_retried_after_the_asked_delay(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    async with running_bot(redis_server.url, overrides={"llm": {"max_retries": 1}}) as h:
        h.llm.push(Behavior.error(429, headers={"Retry-After": "1"}))
        parts = await h.ask("retry me")
        assert [p.content for p in parts] == ["Echo: alice: retry me"]
        first, second = h.llm.chat_requests
        assert first.status == 429 and second.outcome == "complete"
        assert second.started - first.started >= 1.0, "the retry ignored Retry-After"
        assert await stored(h) == [("user", "retry me"), ("assistant", "Echo: alice: retry me")]


async def test_llm_stream_without_done_is_complete(h: BotHarness) -> None:
    h.llm.push(Behavior(reply="A complete answer.", send_done=False))
    parts = await h.ask("no done please")
    assert [p.content for p in parts] == ["A complete answer."]
    assert await stored(h) == [("user", "no done please"), ("assistant", "A complete answer.")]


def hundred_kb_text() -> str:
    prose = " ".join(["Reliability means nothing is lost when things go wrong."] * 30)
    code = "\n".join(f"    value_{i} = compute({i}) * {i}  # step {i}" for i in range(80))
    word = "x" * 3000  # no place to split: must be cut hard
    blocks: list[str] = []
    i = 0
    while sum(len(b) + 2 for b in blocks) < 100_000:
        blocks.append([prose, f"```python\n{code}\n```", word, "Line one\nLine two\n" * 40][i % 4])
        i += 1
    return "\n\n".join([*blocks, "The end."])


async def test_llm_single_100kb_chunk_splits_correctly(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    # Discord allows 5 messages per 5 s per channel: ~60 parts would take a minute. The
    # splitting is the point here, so the stand-in's per-channel limits are raised (the
    # bot learns them from the headers as it would on Discord).
    limits = RateLimits()
    for route in list(limits.routes):
        if route.startswith(("POST /channels", "PATCH /channels")):
            limits.routes[route] = (200, 5.0)
    text = hundred_kb_text()
    assert 100_000 <= len(text) < 105_000
    async with running_bot(
        redis_server.url, standin_options={"rate_limits": limits}, edit_interval=0.2
    ) as h:
        h.llm.push(Behavior(chunks=[text]))
        message = await h.say("write a book")
        await h.settle(timeout=90)
        parts = h.replies_to(message)
        expected = [p.body for p in plan_split(text)]
        assert len(expected) > 50
        assert [m.content for m in parts] == expected
        for m in parts:
            assert 0 < len(m.content) <= 2000 and MARKER not in m.content
            assert m.content.count("```") % 2 == 0, "a part leaves a code block open"
        assert await stored(h) == [("user", "write a book"), ("assistant", text)]
        assert h.discord.count_429() == 0
