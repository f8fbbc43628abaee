"""Reliability: abuse, fairness, concurrency and a soak, over the wire."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator

import psutil
import pytest
import redis.asyncio as aioredis

from bot.errors import QuotaExceeded
from bot.memory.redis_server import EmbeddedRedis
from tests.harness import MARKER, BotHarness, running_bot
from tests.reliability_report import measure, reliability_report  # noqa: F401
from tests.standin.latency import Latency
from tests.standin.llm_api import Behavior, LLMStandIn


@pytest.fixture
async def h(redis_client: aioredis.Redis, redis_server: EmbeddedRedis) -> AsyncIterator[BotHarness]:
    async with running_bot(redis_server.url) as harness:
        yield harness


async def stored(h: BotHarness, channel: int | None = None) -> list[tuple[str, str]]:
    assert h.services is not None
    return [(t.role, t.content) for t in await h.services.store.history(channel or h.channel)]


# --- abuse and fairness -------------------------------------------------------------------


async def test_flood_is_throttled_and_others_unaffected(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    async with running_bot(redis_server.url, user_cooldown_s=10, user_burst=3) as h:
        bob = h.discord.add_user("bob", guild_id=h.guild)
        await h.discord.flush()
        flood = []
        bob_message = None
        for i in range(20):  # 20 messages in 5 s
            flood.append(await h.say(f"flood {i}"))
            if i == 10:
                bob_message = await h.say("bob is here too", author=bob)
            await asyncio.sleep(0.25)
        await h.settle(timeout=30)
        assert bob_message is not None
        from_alice = [
            r
            for r in h.llm.chat_requests
            if r.body["messages"][-1]["content"].startswith("alice: flood")
        ]
        assert len(from_alice) == 3, "the flood reached the model"
        notices = [m for m in h.discord.bot_messages_in(h.channel) if "too fast" in m.content]
        assert len(notices) == 1, [n.content for n in notices]
        assert notices[0].content.startswith("You're sending messages too fast. Try again in ")
        answered = [
            m for m in flood if h.replies_to(m) and "too fast" not in h.replies_to(m)[0].content
        ]
        assert answered == flood[:3]
        assert [p.content for p in h.replies_to(bob_message)] == ["Echo: bob: bob is here too"]
        turns = await stored(h)
        assert len(turns) == 8 and ("user", "bob is here too") in turns


@pytest.mark.parametrize("latency", ["none", "realistic"], indirect=True)
async def test_daily_token_quota_refusal(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis, latency: Latency | None
) -> None:
    async with running_bot(
        redis_server.url, overrides={"usage": {"daily_token_quota": 20}}, latency=latency
    ) as h:
        bob = h.discord.add_user("bob", guild_id=h.guild)
        await h.discord.flush()
        await h.ask("first question")  # about 25 tokens: the quota is spent
        calls = len(h.llm.chat_requests)
        parts = await h.ask("second question")
        assert len(h.llm.chat_requests) == calls, "the model was called over quota"
        assert len(parts) == 1
        assert parts[0].content.startswith("⚠️ You have used your daily limit of 20 tokens (")
        assert parts[0].content.endswith("It resets at 00:00 UTC.")
        assert QuotaExceeded(30, 20).user_text.split("(")[0] in parts[0].content
        parts = await h.ask("bob asks", author=bob)
        assert [p.content for p in parts] == ["Echo: bob: bob asks"]
        assert await stored(h) == [
            ("user", "first question"),
            ("assistant", "Echo: alice: first question"),
            ("user", "bob asks"),
            ("assistant", "Echo: bob: bob asks"),
        ]


async def test_hung_request_does_not_block_other_channels(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis, pytestconfig: pytest.Config
) -> None:
    async with running_bot(
        redis_server.url, overrides={"llm": {"idle_timeout": 4, "first_token_timeout": 4}}
    ) as h:
        others = [h.discord.add_channel(h.guild, f"busy-{i}") for i in range(3)]
        await h.discord.flush()
        h.llm.push(Behavior(reply_tokens=50, tps=50, hang_after=5))
        stuck = await h.say("this one will hang")
        await h.wait(lambda: h.replies_to(stuck))
        h.llm.default = Behavior(reply_tokens=40, tps=40)  # about 1 s of streaming each
        started = time.monotonic()
        asked = [await h.say(f"meanwhile {i}", channel=c) for i, c in enumerate(others)]

        def done() -> bool:
            return all(
                (parts := h.replies_to(m)) and MARKER not in parts[-1].content for m in asked
            )

        await h.wait(done, timeout=10)
        took = time.monotonic() - started
        stuck_parts = h.replies_to(stuck)
        assert MARKER in stuck_parts[-1].content, "the hung reply should still be running"
        measure(pytestconfig, f"3 channels streamed 1 s replies in {took:.2f} s beside a hang")
        assert took < 3.5
        for m in asked:
            parts = h.replies_to(m)
            assert len(parts[0].history) > 2, "the other replies streamed by edits"
        await h.settle(timeout=20)
        final = h.replies_to(stuck)[-1].content
        assert "stopped sending text mid-answer" in final and MARKER not in final
        assert await stored(h) == []


# --- concurrency --------------------------------------------------------------------------


async def test_five_people_at_the_same_instant(h: BotHarness) -> None:
    names = ["ana", "ben", "cai", "dev", "eve"]
    users = [h.discord.add_user(n, guild_id=h.guild) for n in names]
    await h.discord.flush()
    h.llm.default = Behavior(tps=30)  # each echo streams for a moment
    messages = await asyncio.gather(
        *(h.say(f"hello from {n}", author=u) for n, u in zip(names, users, strict=True))
    )
    await h.settle(timeout=30)
    for name, message in zip(names, messages, strict=True):
        assert [p.content for p in h.replies_to(message)] == [f"Echo: {name}: hello from {name}"]
    assert h.services is not None
    turns = await h.services.store.history(h.channel)
    assert len(turns) == 10
    for user_turn, answer in zip(turns[::2], turns[1::2], strict=True):
        assert user_turn.role == "user" and answer.role == "assistant"
        assert answer.content == f"Echo: {user_turn.author_name}: {user_turn.content}"
    ids = [t.message_id for t in turns[::2]]
    assert ids == sorted(ids) and set(ids) == {m.id for m in messages}, "not in arrival order"
    for k, request in enumerate(h.llm.chat_requests):
        assert len(request.body["messages"]) == 2 + 2 * k, "a reply saw a half-written history"


async def test_reset_during_a_streaming_reply(h: BotHarness, redis_client: aioredis.Redis) -> None:
    await h.ask("before the reset")
    h.llm.push(Behavior(reply_tokens=80, tps=40))
    streaming = await h.say("asked before the reset, answered after it")
    await h.wait(lambda: h.replies_to(streaming))
    record = await h.slash("reset")
    assert "2 messages forgotten" in (record.content or "")
    await h.settle()
    parts = h.replies_to(streaming)
    assert MARKER not in parts[-1].content and len(parts[-1].content) > 100
    assert await stored(h) == [], "the reset was undone by the reply that was streaming"
    await h.ask("after the reset")
    messages = h.llm.chat_requests[-1].body["messages"]
    assert [m["content"] for m in messages[1:]] == ["alice: after the reset"]


# --- soak ---------------------------------------------------------------------------------


def _open_sockets(proc: psutil.Process) -> int:
    return len(proc.net_connections(kind="all"))


def _bot_tasks() -> int:
    """Running tasks, less the stand-in servers' handlers of idle keep-alive connections:
    those come and go with aiohttp's connection pools (sockets are counted on their own)."""
    return sum(
        1
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "") != "RequestHandler.start"
    )


async def _quiet_counts(
    proc: psutil.Process, expect: tuple[int, int, int] | None = None
) -> tuple[int, int, int]:
    """Tasks, fds and sockets once things are quiet (up to 3 s for closing ones to go)."""
    for _ in range(10):
        await asyncio.sleep(0.3)
        gc.collect()
        counts = _bot_tasks(), proc.num_fds(), _open_sockets(proc)
        if expect is None or counts == expect:
            break
    return counts


CHANNELS = 200
TURNS = 5
OUR_MODULES = ("bot.", "cogs.")


# The rate budget's per-bucket pacing state is a bounded cache, pruned every 4096 grants.
BOUNDED_CACHES = frozenset({"_Bucket"})


def _is_ours(obj: object) -> bool:
    kind = type(obj)
    module = kind.__module__
    return (
        isinstance(module, str)
        and module.startswith(OUR_MODULES)
        and kind.__qualname__ not in BOUNDED_CACHES
    )


@pytest.mark.timeout(300)  # ~30 s alone; leave room on a busy 2-core machine
async def test_soak_200_channels_5_turns(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis, pytestconfig: pytest.Config
) -> None:
    proc = psutil.Process()
    baseline = await _quiet_counts(proc)
    started = time.monotonic()
    rss: list[float] = []
    tasks: list[int] = []
    objects: list[int] = []
    ours: list[int] = []  # instances of the bot's own classes (Reply, renderer, locks...)
    served_429 = 0
    wrong: list[str] = []
    llm = LLMStandIn(Behavior(), record=False)  # echo at once: short replies
    async with llm, running_bot(redis_server.url, llm=llm) as h:
        channels = [h.discord.add_channel(h.guild, f"soak-{i}") for i in range(CHANNELS)]
        await h.discord.flush()
        for turn in range(TURNS):
            asked = [
                await h.say(f"turn {turn} in room {i}", channel=c) for i, c in enumerate(channels)
            ]
            await h.settle(timeout=120)
            for i, message in enumerate(asked):
                got = [p.content for p in h.replies_to(message)]
                if got != [f"Echo: alice: turn {turn} in room {i}"]:
                    wrong.append(f"turn {turn} room {i}: {got}")
            served_429 += h.discord.count_429()
            # The stand-in's own records are not the bot's memory: drop what was checked.
            for message in asked:
                for part in h.replies_to(message):
                    del h.discord.messages[part.id]
                del h.discord.messages[message.id]
            h.discord.request_log.clear()
            h.discord.typing.clear()
            h.discord.gateway.sent.clear()
            for session in h.discord.gateway.sessions.values():
                session.buffer.clear()  # the RESUME replay buffer (5000 events)
            counts = await _quiet_counts(proc)
            tasks.append(counts[0])
            rss.append(proc.memory_info().rss / 2**20)
            everything = gc.get_objects()
            objects.append(len(everything))
            ours.append(sum(_is_ours(o) for o in everything))
            del everything
        assert h.services is not None
        store = h.services.store
        lost = 0
        for i, channel in enumerate(channels):
            turns = await store.history(channel)
            expected = []
            for turn in range(TURNS):
                text = f"turn {turn} in room {i}"
                expected += [("user", text), ("assistant", f"Echo: alice: {text}")]
            if [(t.role, t.content) for t in turns] != expected:
                lost += len(set(expected) - {(t.role, t.content) for t in turns}) or 1
    after = await _quiet_counts(proc, expect=baseline)
    took = time.monotonic() - started
    measure(
        pytestconfig,
        f"soak {CHANNELS}x{TURNS}: {took:.0f} s, wrong replies {len(wrong)}, "
        f"lost turns {lost}, 429s {served_429}, "
        f"RSS per turn {', '.join(f'{r:.1f}' for r in rss)} MiB, objects {objects}, "
        f"bot objects {ours}, "
        f"tasks per turn {tasks}, "
        f"tasks/fds/sockets before {baseline} after {after}",
    )
    assert not wrong, f"{len(wrong)} replies wrong or missing, e.g. {wrong[:3]}"
    assert lost == 0, f"{lost} turns lost or out of order in Redis"
    assert served_429 == 0
    # Warm-up: discord.py's message cache (1000 messages) fills during the first turns.
    assert rss[-1] - rss[2] < 3, f"RSS grew after warm-up: {rss}"
    assert max(ours[1:]) - min(ours[1:]) <= 2, f"the bot's objects grew turn by turn: {ours}"
    # Two turns are 400 replies: a few objects leaked per reply would show.
    assert objects[-1] - objects[2] < 1000, f"objects grew after warm-up: {objects}"
    # One task leaked per reply would add 200 a turn; allow a transient one or two.
    assert max(tasks[1:]) - min(tasks[1:]) <= 2, f"tasks leaked between turns: {tasks}"
    assert after == baseline, f"leaked tasks/fds/sockets: before {baseline}, after {after}"
