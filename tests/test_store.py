"""Storage, personas, usage reports and context building against a real Redis server."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from bot.chat.context import CUT_NOTE, build_context
from bot.chat.personas import PersonaService, render, resolve
from bot.chat.usage import UsageService, sparkline
from bot.config import PersonaConfig, Price, UsageConfig
from bot.errors import (
    EmptyPersona,
    MemoryUnavailable,
    PersonaTooLong,
    QuotaExceeded,
    UnknownPreset,
)
from bot.llm.tokens import TokenCounter
from bot.memory.redis_server import EmbeddedRedis
from bot.memory.store import Store, UsageRecord, utc_day
from bot.models import Place, StoredPersona, TokenUsage, Turn
from tests.cluster import connect

COUNTER = TokenCounter()
GUILD = Place(channel_id=10, channel_name="general", guild_id=1, guild_name="Guild")
THREAD = Place(channel_id=11, channel_name="thread", guild_id=1, guild_name="Guild", parent_id=10)


def make_store(client: aioredis.Redis, **kw: int) -> Store:
    return Store(
        client,
        prefix="t",
        max_turns=kw.get("max_turns", 100),
        retention_days=kw.get("retention_days", 30),
    )


def turn(role: str, text: str, name: str | None = "Ann") -> Turn:
    return Turn(role, text, COUNTER.count(text), time.time(), 1, name if role == "user" else None)


def usage_rec(place: Place, user: int, p: int, c: int, *, est: bool = False) -> UsageRecord:
    return UsageRecord(user, place.channel_id, place.guild_id, "m1", TokenUsage(p, c, est))


async def one_turn(store: Store, place: Place, user: int, q: str, a: str) -> None:
    async with store.turn(place, user) as (_, lock):
        await store.commit(
            place, [turn("user", q), turn("assistant", a)], usage_rec(place, user, 5, 7), lock
        )


async def test_turn_costs_two_round_trips_and_history_round_trips(
    redis_client: aioredis.Redis,
) -> None:
    store = make_store(redis_client)
    await one_turn(store, GUILD, 1, "hello", "hi there")
    assert store.round_trips == 2
    history = await store.history(GUILD.channel_id)
    assert [(t.role, t.content) for t in history] == [("user", "hello"), ("assistant", "hi there")]
    assert await redis_client.get(store.keys.lock(GUILD.channel_id)) is None, "lock released"


async def test_keys_share_a_cluster_slot_per_channel(redis_client: aioredis.Redis) -> None:
    store = make_store(redis_client)
    keys = [
        store.keys.history(10),
        store.keys.lock(10),
        store.keys.channel_persona(10),
        store.keys.chat_mode(10),
        store.keys.usage("channel", 10, "20260101"),
    ]
    assert {k[k.index("{") : k.index("}") + 1] for k in keys} == {"{c10}"}
    assert all(k.startswith("t:") for k in keys)


async def test_trim_and_retention_ttl(redis_client: aioredis.Redis) -> None:
    store = make_store(redis_client, max_turns=4, retention_days=2)
    for i in range(3):
        await one_turn(store, GUILD, 1, f"q{i}", f"a{i}")
    history = await store.history(GUILD.channel_id)
    assert [t.content for t in history] == ["q1", "a1", "q2", "a2"]
    ttl = await redis_client.ttl(store.keys.history(GUILD.channel_id))
    assert 2 * 86400 - 5 < ttl <= 2 * 86400
    forever = make_store(redis_client, retention_days=0)
    await one_turn(forever, GUILD, 1, "x", "y")
    assert await redis_client.ttl(store.keys.history(GUILD.channel_id)) == -1


async def test_channels_are_isolated_and_reset_keeps_persona(redis_client: aioredis.Redis) -> None:
    store = make_store(redis_client)
    other = Place(channel_id=99, channel_name="other", guild_id=1)
    await one_turn(store, GUILD, 1, "in general", "ok")
    await one_turn(store, other, 1, "in other", "ok")
    await store.set_persona("channel", GUILD.channel_id, StoredPersona("be terse"))
    assert await store.reset(GUILD.channel_id) == 2
    assert await store.history(GUILD.channel_id) == []
    assert (await store.history(other.channel_id))[0].content == "in other"
    assert (await store.get_persona("channel", GUILD.channel_id)) == StoredPersona("be terse")


async def test_concurrent_turns_in_one_channel_are_serialised_in_order(
    redis_client: aioredis.Redis,
) -> None:
    store = make_store(redis_client)
    order: list[int] = []

    async def speaker(i: int) -> None:
        async with store.turn(GUILD, i) as (_, lock):
            order.append(i)
            await asyncio.sleep(0.01)
            await store.commit(
                GUILD,
                [turn("user", f"q{i}"), turn("assistant", f"a{i}")],
                usage_rec(GUILD, i, 1, 1),
                lock,
            )

    await asyncio.gather(*(speaker(i) for i in range(5)))
    assert order == [0, 1, 2, 3, 4]
    contents = [t.content for t in await store.history(GUILD.channel_id)]
    assert contents == [x for i in range(5) for x in (f"q{i}", f"a{i}")]
    assert store._waiters == {}, "idle per-channel entries are dropped"


async def test_lock_is_shared_across_processes(
    redis_client: aioredis.Redis, redis_url: str, redis_backend: str
) -> None:
    """Two Store objects with separate connections stand in for two bot processes."""
    other_client = connect(redis_url, redis_backend)
    a, b = make_store(redis_client), make_store(other_client)
    events: list[str] = []

    async def hold(store: Store, name: str) -> None:
        async with store.turn(GUILD, 1) as (_, lock):
            events.append(f"{name} in")
            await asyncio.sleep(0.2)
            events.append(f"{name} out")
            await store.commit(
                GUILD,
                [turn("user", name), turn("assistant", name)],
                usage_rec(GUILD, 1, 1, 1),
                lock,
            )

    first = asyncio.create_task(hold(a, "a"))
    await asyncio.sleep(0.05)
    await asyncio.gather(first, hold(b, "b"))
    await other_client.aclose()
    assert events == ["a in", "a out", "b in", "b out"]


async def test_a_crashed_holder_frees_the_channel_by_lease(redis_client: aioredis.Redis) -> None:
    store = Store(redis_client, prefix="t", max_turns=10, retention_days=1, lock_lease_s=0.3)
    await redis_client.set(store.keys.lock(GUILD.channel_id), "dead-process", px=300)
    started = time.monotonic()
    await one_turn(store, GUILD, 1, "q", "a")
    assert 0.2 < time.monotonic() - started < 3


async def test_persona_fallback_chain(redis_client: aioredis.Redis) -> None:
    store = make_store(redis_client)
    service = PersonaService(store, PersonaConfig(default="DEFAULT {bot_name}"))
    assert (await service.current(THREAD)).source == "default"
    await service.set("server", 1, "server persona")
    assert (await service.current(THREAD)).text == "server persona"
    await service.set("channel", 10, "parent persona")
    resolved = await service.current(THREAD)
    assert (resolved.text, resolved.source) == ("parent persona", "parent channel")
    await service.set("channel", 11, "thread persona")
    assert (await service.current(THREAD)).source == "channel"
    await service.clear("channel", 11)
    await service.clear("channel", 10)
    assert (await service.current(THREAD)).source == "server"


async def test_persona_limits_presets_and_templates(redis_client: aioredis.Redis) -> None:
    service = PersonaService(
        make_store(redis_client),
        PersonaConfig(max_chars=50, presets={"pirate": "Arr", "tutor": "Teach"}),
    )
    with pytest.raises(PersonaTooLong) as info:
        await service.set("channel", 10, "x" * 51)
    assert "51" in info.value.user_text and "50" in info.value.user_text
    with pytest.raises(EmptyPersona):
        await service.set("channel", 10, "   ")
    with pytest.raises(UnknownPreset) as unknown:
        await service.use_preset("channel", 10, "ninja")
    assert "`pirate`" in unknown.value.user_text
    stored = await service.use_preset("channel", 10, "pirate")
    assert (stored.text, stored.preset) == ("Arr", "pirate")
    assert service.matching_presets("tu") == ["tutor"]
    assert service.matching_presets("t") == ["tutor", "pirate"], "prefix matches first"
    text = render("{bot_name} in #{channel} of {server} on {date} {json: {x}}", GUILD, "Bot", now=0)
    assert text == "Bot in #general of Guild on 1970-01-01 {json: {x}}"
    assert "a direct message" in render("{server}", Place(5), "Bot")
    assert resolve(await service.store.persona_layers(GUILD), "d").preset == "pirate"


async def test_usage_report_sums_and_cost(redis_client: aioredis.Redis) -> None:
    store = make_store(redis_client)
    service = UsageService(store, UsageConfig(prices={"m1": Price(prompt=1.0, completion=2.0)}))
    for p, c, est in [(100, 50, False), (10, 5, True)]:
        await store.record_usage(usage_rec(GUILD, 7, p, c, est=est))
    for scope, ident in [("user", 7), ("channel", 10), ("server", 1)]:
        report = await service.report(scope, ident)
        assert (report.today.prompt, report.today.completion, report.today.requests) == (110, 55, 2)
        assert report.month.total == 165
        assert (report.today.estimated_prompt, report.today.estimated_completion) == (10, 5)
        assert report.today.cost == pytest.approx((110 * 1 + 55 * 2) / 1e6)
        assert report.series[-1] == 165 and len(report.series) == 30
    assert sparkline([0, 5, 10]) == "▁▄█"
    assert (await service.report("user", 8)).today.total == 0


async def test_quota_counts_todays_tokens(redis_client: aioredis.Redis) -> None:
    store = make_store(redis_client)
    service = UsageService(store, UsageConfig(daily_token_quota=100))
    await store.record_usage(usage_rec(GUILD, 7, 60, 40))
    async with store.turn(GUILD, 7) as (loaded, _):
        assert loaded.user_tokens_today == 100
        with pytest.raises(QuotaExceeded) as info:
            service.check_quota(loaded.user_tokens_today)
    assert "100" in info.value.user_text
    service.check_quota(99)


def test_context_keeps_persona_and_fits_budget() -> None:
    history = [
        turn("user" if i % 2 == 0 else "assistant", f"message number {i} " * 20) for i in range(200)
    ]
    new = turn("user", "latest question")
    built = build_context(
        "SYSTEM", history, new, context_tokens=2000, reply_tokens=500, counter=COUNTER
    )
    assert built.messages[0] == {"role": "system", "content": "SYSTEM"}
    assert built.messages[-1] == {"role": "user", "content": "Ann: latest question"}
    assert 0 < built.history_used < 200 and built.history_dropped == 200 - built.history_used
    assert COUNTER.count_messages(built.messages) <= 2000 - 500
    # the newest history is what is kept, whole turns only
    assert built.messages[-2]["content"] == history[-1].content


def test_oversized_user_message_is_cut_with_a_note() -> None:
    new = turn("user", "word " * 5000)
    built = build_context("SYSTEM", [], new, context_tokens=1000, reply_tokens=200, counter=COUNTER)
    assert built.user_message_cut
    assert built.messages[-1]["content"].endswith(CUT_NOTE)
    assert COUNTER.count_messages(built.messages) <= 800


async def test_history_survives_a_restart_of_embedded_redis(tmp_path: object) -> None:
    from pathlib import Path

    data = Path(str(tmp_path)) / "data"
    with EmbeddedRedis(data) as server:
        client = aioredis.from_url(server.url, decode_responses=True)
        await one_turn(make_store(client), GUILD, 1, "remember me", "I will")
        await client.aclose()
    with EmbeddedRedis(data) as server:
        client = aioredis.from_url(server.url, decode_responses=True)
        history = await make_store(client).history(GUILD.channel_id)
        await client.aclose()
    assert [t.content for t in history] == ["remember me", "I will"]


async def test_arrival_order_holds_across_processes(
    redis_client: aioredis.Redis, redis_url: str, redis_backend: str
) -> None:
    """Messages 1, 2, 3 of one channel, seen by processes a, b, a: answered 1, 2, 3.

    Process a holds the channel for message 1 and then queues message 3 before process b
    asks for message 2's turn: a plain lock would let a take it again first.
    """
    other_client = connect(redis_url, redis_backend)
    a, b = make_store(redis_client), make_store(other_client)
    order: list[int] = []

    async def answer(store: Store, message_id: int, hold: float) -> None:
        async with store.turn(GUILD, 1, order=message_id) as (_, lock):
            order.append(message_id)
            await asyncio.sleep(hold)
            q, r = f"q{message_id}", f"a{message_id}"
            await store.commit(
                GUILD, [turn("user", q), turn("assistant", r)], usage_rec(GUILD, 1, 1, 1), lock
            )

    first = asyncio.create_task(answer(a, 1001, 0.3))
    await asyncio.sleep(0.05)
    third = asyncio.create_task(answer(a, 1003, 0))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(answer(b, 1002, 0))
    await asyncio.gather(first, second, third)
    await other_client.aclose()
    assert order == [1001, 1002, 1003]
    contents = [t.content for t in await a.history(GUILD.channel_id)]
    assert contents == ["q1001", "a1001", "q1002", "a1002", "q1003", "a1003"]
    assert not await redis_client.exists(a.keys.queue(GUILD.channel_id))


async def test_a_waiter_whose_process_died_leaves_the_line_by_lease(
    redis_client: aioredis.Redis,
) -> None:
    store = Store(redis_client, prefix="t", max_turns=10, retention_days=1, lock_lease_s=0.5)
    k = store.keys
    # A ticket ahead of ours whose process stopped polling: its lease ends in 0.4 s.
    await redis_client.zadd(k.queue(GUILD.channel_id), {f"{1:020d}:dead": 0})
    sec, usec = await redis_client.time()
    now_ms = int(sec) * 1000 + int(usec) // 1000
    await redis_client.zadd(k.leases(GUILD.channel_id), {f"{1:020d}:dead": now_ms + 400})
    started = time.monotonic()
    await one_turn(store, GUILD, 1, "q", "a")
    assert 0.2 < time.monotonic() - started < 3
    assert not await redis_client.exists(k.queue(GUILD.channel_id), k.leases(GUILD.channel_id))


async def test_a_turn_that_gives_up_waiting_leaves_the_line(redis_client: aioredis.Redis) -> None:
    store = make_store(redis_client)
    async with store.turn(GUILD, 1) as (_, lock):
        with pytest.raises(MemoryUnavailable):
            async with store.turn(GUILD, 2, max_wait=0.2):
                pass
        assert await redis_client.zcard(store.keys.queue(GUILD.channel_id)) == 0
        await store.commit(GUILD, [turn("user", "q"), turn("assistant", "a")],
                           usage_rec(GUILD, 1, 1, 1), lock)  # fmt: skip


async def test_commit_and_usage_writes_are_idempotent(redis_client: aioredis.Redis) -> None:
    """A commit retried after a lost reply (a failover) appends and counts once."""
    store = make_store(redis_client)
    rec = usage_rec(GUILD, 7, 10, 20)
    async with store.turn(GUILD, 7) as (_, lock):
        turns = [turn("user", "q"), turn("assistant", "a")]
        assert await store.commit(GUILD, turns, rec, lock) == 2
        lock.held = True  # as if the reply of the first attempt had been lost
        assert await store.commit(GUILD, turns, rec, lock) == 2
        # The failure path counts spent tokens again with the same turn: not twice either.
        await store.record_usage(rec, lock)
    assert len(await store.history(GUILD.channel_id)) == 2
    service = UsageService(store, UsageConfig())
    for scope, ident in [("user", 7), ("channel", 10), ("server", 1)]:
        report = await service.report(scope, ident)
        assert (report.today.prompt, report.today.completion, report.today.requests) == (10, 20, 1)
    assert await store.usage_users(1, [utc_day()]) == {7: 30}, "the server's top users too"
    # Without a turn (no lock), each call is its own reply and counts.
    await store.record_usage(rec)
    assert (await service.report("user", 7)).today.requests == 2
    assert await store.usage_users(1, [utc_day()]) == {7: 60}


async def test_store_uses_the_cluster_client_on_a_cluster(
    redis_client: aioredis.Redis, redis_backend: str
) -> None:
    assert make_store(redis_client).cluster is (redis_backend == "cluster")


async def test_a_long_turn_keeps_its_lock_by_renewing_the_lease(
    redis_client: aioredis.Redis, redis_url: str, redis_backend: str
) -> None:
    """The holder renews its lease (a script, also on a cluster) while it streams."""
    other_client = connect(redis_url, redis_backend)
    a = Store(redis_client, prefix="t", max_turns=10, retention_days=1, lock_lease_s=0.3)
    b = Store(other_client, prefix="t", max_turns=10, retention_days=1, lock_lease_s=0.3)
    events: list[str] = []

    async def long_turn() -> None:
        async with a.turn(GUILD, 1, order=1) as (_, lock):
            events.append("a in")
            await asyncio.sleep(1.0)  # more than three leases
            assert await redis_client.get(a.keys.lock(GUILD.channel_id)) == lock.token
            events.append("a out")
            await a.commit(GUILD, [turn("user", "a"), turn("assistant", "a")],
                           usage_rec(GUILD, 1, 1, 1), lock)  # fmt: skip

    first = asyncio.create_task(long_turn())
    await asyncio.sleep(0.1)
    async with b.turn(GUILD, 2, order=2) as (_, lock):
        events.append("b in")
        await b.commit(GUILD, [turn("user", "b"), turn("assistant", "b")],
                       usage_rec(GUILD, 2, 1, 1), lock)  # fmt: skip
    await first
    await other_client.aclose()
    assert events == ["a in", "a out", "b in"]
