"""Replies appear the moment they exist, against a Discord that takes time to answer.

Regression tests for replies shown 8 s late: with Discord acknowledging a typing request
in a few hundred milliseconds, an answer, an error or a quota refusal that arrived while
that request was in flight was only shown after `typing_interval` (8 s). Here the typing
route is slow on purpose (1.5 s) and every other request takes `RTT`: whatever the model
(or the quota) says must be visible within about one round trip.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from bot.memory.redis_server import EmbeddedRedis
from tests.harness import BotHarness, running_bot
from tests.standin.discord_models import MessageRecord
from tests.standin.latency import TYPING, Delay, Latency
from tests.standin.llm_api import Behavior

RTT = 0.2  # every REST request but typing
TYPING_RTT = 1.5
SLACK = 0.25  # scheduling on a loaded 2-core machine; the bug was 8 s
TTFT = 0.7  # the model answers after the typing request went out (0.5 s without text)


def slow_typing() -> Latency:
    return Latency(rest=Delay(RTT), routes={TYPING: Delay(TYPING_RTT)})


@pytest.fixture
async def h(redis_client: aioredis.Redis, redis_server: EmbeddedRedis) -> AsyncIterator[BotHarness]:
    async with running_bot(
        redis_server.url,
        latency=slow_typing(),
        overrides={"usage": {"daily_token_quota": 30}},
    ) as harness:
        yield harness


async def first_reply(h: BotHarness, message: MessageRecord) -> MessageRecord:
    await h.wait(lambda: h.replies_to(message), timeout=12)
    return h.replies_to(message)[0]


def typing_requests(h: BotHarness) -> list[float]:
    return [r.received for r in h.discord.request_log if r.route == TYPING]


@pytest.mark.parametrize(
    "behavior, expected",
    [
        (Behavior(reply="The whole answer.", ttft=TTFT), "The whole answer."),
        (
            Behavior.error(401, body={"error": {"message": "bad key"}}),
            "⚠️ ",
        ),
    ],
    ids=["complete-answer", "401"],
)
async def test_model_result_during_typing_request_is_shown_within_one_round_trip(
    h: BotHarness, behavior: Behavior, expected: str
) -> None:
    if behavior.status != 200:
        behavior.headers_delay = TTFT
    h.llm.push(behavior)
    message = await h.say("quick one")
    reply = await first_reply(h, message)
    request = h.llm.chat_requests[-1]
    model_done = request.finished or request.started
    (typing_at,) = typing_requests(h)
    assert typing_at < model_done, "the typing request was in flight when the model answered"
    visible = reply.history[0].time
    assert reply.history[0].content.startswith(expected)
    assert visible - model_done < RTT + SLACK, f"shown {visible - model_done:.2f} s late"
    await h.settle()
    # The marker goes in the message's first edit, right after the create (not held for
    # `edit_interval`): the complete reply is final two round trips after the model ended.
    final = reply.history[-1]
    assert final.content.startswith(expected) and "⏳" not in final.content
    assert final.time - model_done < 2 * RTT + SLACK, f"final {final.time - model_done:.2f} s late"


async def test_quota_refusal_is_shown_within_one_round_trip(h: BotHarness) -> None:
    await h.ask("a first question that spends the whole small daily quota at once")
    asked = time.monotonic()
    message = await h.say("over quota now")
    reply = await first_reply(h, message)
    assert reply.content.startswith("⚠️ You have used your daily limit")
    # From the question reaching the bot (the dispatch is instant here) to the notice.
    assert reply.history[0].time - asked < RTT + SLACK, "the refusal was shown late"
    assert not typing_requests(h), "a refusal needs no typing indicator"


async def test_no_typing_when_the_answer_comes_quickly(h: BotHarness) -> None:
    h.llm.push(Behavior(reply="Fast.", ttft=0.1))
    parts = await h.ask("fast model")
    assert [p.content for p in parts] == ["Fast."]
    assert not typing_requests(h)


async def test_standin_delays_each_route_and_every_dispatch(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    latency = Latency(rest=Delay(0.1, 0.05), routes={TYPING: Delay(0.3)}, dispatch=Delay(0.1, 0.02))
    async with running_bot(redis_server.url, latency=latency) as h:
        h.llm.push(Behavior(reply="Slow start.", ttft=0.8))
        t0 = time.monotonic()
        await h.say("hello")
        assert time.monotonic() - t0 >= 0.1, "the event was delivered without its delay"
        await h.settle()
        spent = {
            r.route: r.responded - r.received
            for r in h.discord.request_log
            if r.route and r.responded and r.route.startswith("POST /channels")
        }
        assert 0.3 <= spent[TYPING] < 0.3 + SLACK
        assert 0.1 <= spent["POST /channels/{channel_id}/messages"] < 0.15 + SLACK
