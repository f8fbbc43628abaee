"""The reply buttons' service logic: the registry, Stop's cut, the atomic replace of the
latest answer (real Redis), and stopped turns as the model reads them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.chat.context import STOPPED_NOTE, as_message
from bot.chat.controls import CUSTOM_ID, ReplyControls, button, custom_id, may_press
from bot.errors import AnswerInProgress, LLMServerError, NotLatestAnswer, QuotaExceeded
from bot.llm.tokens import TokenCounter
from bot.memory.redis_server import EmbeddedRedis
from bot.memory.store import Store, UsageRecord
from bot.models import Button, Place, Speaker, TokenUsage, Turn
from bot.services import Services, open_services
from tests.standin.llm_api import Behavior, LLMStandIn
from tests.test_conversation import make_config

PLACE = Place(channel_id=20, channel_name="general", guild_id=1, guild_name="Guild")
COUNTER = TokenCounter()
ANN = Speaker(1, "Ann")
BOB = Speaker(2, "Bob")


def turn(role: str, text: str, **kw: Any) -> Turn:
    return Turn(role, text, COUNTER.count(text), time.time(), **kw)


def test_custom_ids_carry_the_question_and_the_asker_within_discords_limit() -> None:
    big = 2**63 - 1
    for action in ("stop", "regen", "retry"):
        cid = custom_id(action, big, big)  # type: ignore[arg-type]
        match = CUSTOM_ID.fullmatch(cid)
        assert match is not None and len(cid) <= 100
        assert (match["action"], int(match["question"]), int(match["asker"])) == (action, big, big)
    assert CUSTOM_ID.fullmatch("think:1:2") is None  # other buttons are not ours
    assert button("regen", 1, 2).emoji == "🔄" and button("stop", 1, 2).label == "Stop"


def test_who_may_press() -> None:
    assert may_press(5, 5, in_guild=True, manage_messages=False)
    assert not may_press(6, 5, in_guild=True, manage_messages=False)
    assert may_press(6, 5, in_guild=True, manage_messages=True)
    assert not may_press(6, 5, in_guild=False, manage_messages=True)


def test_registry_refuses_a_second_reply_to_one_question_and_tracks_busy_channels() -> None:
    controls = ReplyControls()
    running = controls.begin(PLACE.channel_id, 100, 5)
    assert controls.busy(PLACE.channel_id) and controls.get(100) is running
    try:
        controls.begin(PLACE.channel_id, 100, 5)
    except AnswerInProgress:
        pass
    else:
        raise AssertionError("a double press must be refused")
    assert running.buttons_when_stored()[0].custom_id == "reply:regen:100:5"
    controls.end(running)
    controls.end(running)  # idempotent
    assert not controls.busy(PLACE.channel_id) and controls.get(100) is None
    assert controls.ended_with(100) == running.final
    assert not controls.stop(100), "nothing runs any more"


def test_final_buttons_after_a_failure() -> None:
    controls = ReplyControls()
    asked = controls.begin(1, 100, 5)
    assert [b.label for b in asked.buttons_when_failed(LLMServerError())] == ["Retry"]
    assert asked.buttons_when_failed(QuotaExceeded(10, 5)) == ()
    regen = controls.begin(1, 101, 5, regenerating=True)
    assert [b.label for b in regen.buttons_when_failed(LLMServerError())] == ["Regenerate"]
    other = Button("think:1", "Show thinking")
    asked.extra = (other,)
    assert asked.buttons_when_stored()[1] == other, "other features' buttons come after ours"
    controls.end(asked)
    assert controls.ended_with(100) == asked.final


def test_latest_answer_per_channel() -> None:
    controls = ReplyControls()
    assert controls.swap_latest(1, 100, 11) is None
    assert controls.swap_latest(1, 100, 12) is None, "the same answer, regenerated"
    previous = controls.swap_latest(1, 101, 13)
    assert previous is not None and previous.message_id == 12
    assert controls.swap_latest(2, 102, 14) is None, "channels are separate"


@pytest.fixture
async def services(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis, llm: LLMStandIn
) -> AsyncIterator[Services]:
    async with open_services(make_config(redis_server.url, llm.base_url)) as built:
        yield built


async def test_stop_cuts_the_stream_at_once_and_stores_what_was_pushed(
    services: Services, llm: LLMStandIn
) -> None:
    llm.push(Behavior(reply_tokens=400, tps=50))
    controls = services.controls
    running = controls.begin(PLACE.channel_id, 100, 5)
    pushed: list[str] = []
    got_text = asyncio.Event()

    def push(delta: str) -> None:
        pushed.append(delta)
        if len("".join(pushed)) > 20:
            got_text.set()

    async with services.conversations.reply(PLACE, ANN, "story", message_id=100) as reply:
        relay = asyncio.create_task(controls.relay(running, reply, push))
        await asyncio.wait_for(got_text.wait(), 5)
        assert controls.stop(100)
        assert controls.stop(100), "a second press is fine"
        assert await asyncio.wait_for(relay, 1) is True
    request = llm.chat_requests[-1]
    for _ in range(200):  # the stand-in notices within its poll interval
        if request.disconnected is not None:
            break
        await asyncio.sleep(0.01)
    assert request.disconnected is not None
    history = await services.store.history(PLACE.channel_id)
    assert [(t.role, t.stopped) for t in history] == [("user", False), ("assistant", True)]
    assert history[1].content == "".join(pushed)
    assert reply.outcome is not None and reply.outcome.finish_reason == "stopped"


async def test_a_cancelled_caller_is_not_a_stop(services: Services, llm: LLMStandIn) -> None:
    llm.push(Behavior(reply_tokens=400, tps=50))
    controls = services.controls
    running = controls.begin(PLACE.channel_id, 100, 5)

    async def answer() -> None:
        async with services.conversations.reply(PLACE, ANN, "story", message_id=100) as reply:
            await controls.relay(running, reply, lambda d: None)

    task = asyncio.create_task(answer())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await services.store.history(PLACE.channel_id) == [], "nothing half stored"


async def test_regenerate_answers_the_same_question_from_the_same_history(
    services: Services, llm: LLMStandIn
) -> None:
    conversations = services.conversations
    for i, text in enumerate(["one", "two"], start=1):
        async with conversations.reply(PLACE, ANN, text, message_id=i) as reply:
            [d async for d in reply]
    first_prompt = llm.chat_requests[-1].body["messages"]
    llm.push(Behavior(reply="two, again"))
    async with conversations.regenerate(PLACE, BOB, 2) as reply:
        [d async for d in reply]
    assert llm.chat_requests[-1].body["messages"] == first_prompt
    history = await services.store.history(PLACE.channel_id)
    assert [t.content for t in history] == ["one", "Echo: Ann: one", "two", "two, again"]
    with pytest.raises(NotLatestAnswer):
        async with conversations.regenerate(PLACE, BOB, 1):
            pass
    assert len(llm.chat_requests) == 3, "refused before calling the model"


def test_a_stopped_answer_tells_the_model_and_old_turns_read_as_before() -> None:
    stopped = turn("assistant", "Once upon a", stopped=True)
    assert Turn.from_json(stopped.to_json()) == stopped
    assert as_message(stopped)["content"] == "Once upon a" + STOPPED_NOTE
    plain = turn("assistant", "Done.")
    assert "stopped" not in plain.to_json(), "stored turns keep their old shape"
    assert as_message(plain)["content"] == "Done."


def _store(client: aioredis.Redis) -> Store:
    return Store(client, prefix="rb", max_turns=100, retention_days=30)


async def _exchange(store: Store, q: str, a: str, message_id: int) -> None:
    async with store.turn(PLACE, 5) as (_, lock):
        await store.commit(
            PLACE,
            [turn("user", q, message_id=message_id), turn("assistant", a)],
            UsageRecord(5, PLACE.channel_id, 1, "m", TokenUsage(1, 1)),
            lock,
        )


async def test_replace_latest_only_if_the_exchange_is_unchanged(
    redis_client: aioredis.Redis,
) -> None:
    store = _store(redis_client)
    await _exchange(store, "q1", "a1", 1)
    await _exchange(store, "q2", "a2", 2)
    async with store.turn(PLACE, 5) as (loaded, lock):
        assert len(loaded.tail) == 2
        replaced, length = await store.replace_latest(
            PLACE, loaded.tail, turn("assistant", "a2 again"), lock
        )
    assert replaced and length == 4
    history = await store.history(PLACE.channel_id)
    assert [t.content for t in history] == ["q1", "a1", "q2", "a2 again"]
    assert await redis_client.get(store.keys.lock(PLACE.channel_id)) is None, "lock released"

    # A /reset while regenerating wins: nothing comes back.
    async with store.turn(PLACE, 5) as (loaded, lock):
        await store.reset(PLACE.channel_id)
        replaced, _ = await store.replace_latest(PLACE, loaded.tail, turn("assistant", "x"), lock)
    assert not replaced and await store.history(PLACE.channel_id) == []

    # A history that changed underneath (another writer) is left alone.
    await _exchange(store, "q3", "a3", 3)
    async with store.turn(PLACE, 5) as (loaded, lock):
        await redis_client.rpush(store.keys.history(PLACE.channel_id), turn("user", "y").to_json())
        replaced, _ = await store.replace_latest(PLACE, loaded.tail, turn("assistant", "x"), lock)
    assert not replaced
    assert [t.content for t in await store.history(PLACE.channel_id)] == ["q3", "a3", "y"]
    keys = {store.keys.history(PLACE.channel_id), store.keys.epoch(PLACE.channel_id)}
    assert {k[k.index("{") : k.index("}") + 1] for k in keys} == {"{c20}"}, "one slot"
