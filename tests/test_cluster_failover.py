"""A primary of the Redis Cluster dies mid-conversation; the bot carries on.

The cluster (3 primaries + 3 replicas, node time-out 1 s) is this module's own, so killing
a node disturbs no other test. The conversation service runs as the bot runs it
(`open_services` against a cluster node's URL, `redis.cluster = "auto"`).

What is promised (README, "Scaling out"): while the replica takes over, a request either
waits (the store retries for up to FAILOVER_WAIT_S) or gets the "memory unavailable"
answer; afterwards everything works again; every turn whose commit was acknowledged is
still there (replication is asynchronous, so a commit acknowledged in the last instant
before a crash could in principle be lost; it was not in any run here), and a turn whose
commit failed is stored whole or not at all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from bot.errors import MemoryUnavailable
from bot.memory.store import FAILOVER_WAIT_S, Store, UsageRecord
from bot.models import Place, Speaker, TokenUsage, Turn
from bot.services import open_services
from tests.cluster import LocalCluster, connect
from tests.standin.llm_api import Behavior, LLMStandIn
from tests.test_conversation import ANN, HERE, THERE, ask, make_config

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def failover_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("failover-cluster"), node_timeout_ms=1000)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


async def test_a_primary_killed_mid_reply_loses_no_committed_turn(
    failover_cluster: LocalCluster, llm: LLMStandIn
) -> None:
    cluster = failover_cluster
    async with open_services(make_config(cluster.url, llm.base_url)) as services:
        store = services.store
        assert store.cluster, "auto-detected from the node's INFO"
        for i in range(3):
            await ask(services, HERE, ANN, f"here {i}")
            await ask(services, THERE, ANN, f"there {i}")
        committed_here = [t.content for t in await store.history(HERE.channel_id)]
        committed_there = [t.content for t in await store.history(THERE.channel_id)]
        assert len(committed_here) == len(committed_there) == 6

        victim = cluster.primary_for(store.keys.history(HERE.channel_id))
        # A reply that streams for about a second: its commit comes during the takeover.
        llm.push(Behavior(reply_tokens=40, tps=40))
        in_flight_ok: bool | None = None

        async def in_flight() -> None:
            nonlocal in_flight_ok
            try:
                async with services.conversations.reply(HERE, ANN, "mid failover") as reply:
                    async for _ in reply:
                        if victim.running:
                            cluster.kill(victim)
                in_flight_ok = reply.outcome is not None
            except MemoryUnavailable as exc:
                assert exc.user_text, "a clear message for the user"
                in_flight_ok = False

        killed_at = time.monotonic()
        await asyncio.wait_for(in_flight(), 30)
        assert not victim.running

        # Keep talking until the channel answers again; every failure is the clear one.
        unavailable = 0
        recovered_after = None
        deadline = time.monotonic() + 30
        bob = Speaker(2, "Bob")
        while time.monotonic() < deadline:
            try:
                await ask(services, HERE, bob, "are you back?")
                recovered_after = time.monotonic() - killed_at
                break
            except MemoryUnavailable:
                unavailable += 1
                await asyncio.sleep(0.2)
        assert recovered_after is not None, "the bot did not recover within 30 s"
        print(
            f"\nfailover: in-flight reply stored={in_flight_ok}, "
            f"'memory unavailable' answers={unavailable}, back after {recovered_after:.1f} s"
        )

        here = [t.content for t in await store.history(HERE.channel_id)]
        assert here[:6] == committed_here, "no acknowledged turn was lost"
        rest = here[6:]
        if in_flight_ok:
            assert rest[0] == "mid failover" and rest[1].startswith("the quick brown fox")
            rest = rest[2:]
        else:
            assert "mid failover" not in here, "a failed turn is not half stored"
        assert rest == ["are you back?", "Echo: Bob: are you back?"]
        assert [t.content for t in await store.history(THERE.channel_id)] == committed_there
        # The channel's lock was not left behind on the promoted replica.
        await ask(services, HERE, ANN, "and once more")
        report = await services.usage.report("channel", HERE.channel_id)
        replies = 3 + (1 if in_flight_ok else 0) + 2
        assert report.today.requests in (replies, replies + 1), "counted at most once each"
        assert recovered_after < 10 + FAILOVER_WAIT_S

    # The dead node comes back as a replica of the one that took over.
    cluster.restart(victim)
    await asyncio.to_thread(cluster.wait_healthy, 30)
    assert victim not in cluster.primaries()


async def test_writes_acknowledged_before_a_crash_survive_it(
    failover_cluster: LocalCluster,
) -> None:
    """Measure what a failover loses: writers commit as fast as they can while the
    primary of their channels is killed; every acknowledged commit must be there after."""
    cluster = failover_cluster
    await asyncio.to_thread(cluster.wait_healthy, 30)
    client = connect(cluster.url, "cluster")
    store = Store(client, prefix="loss", max_turns=10_000, retention_days=1)
    victim = cluster.primary_for(store.keys.history(1))
    channels = [c for c in range(1, 400) if cluster.primary_for(store.keys.history(c)) == victim]
    channels = channels[:4]
    acknowledged: dict[int, list[str]] = {c: [] for c in channels}
    failed = 0
    stop = asyncio.Event()

    async def writer(channel: int) -> None:
        nonlocal failed
        place = Place(channel_id=channel, guild_id=1)
        n = 0
        while not stop.is_set():
            n += 1
            text = f"{channel}-{n}"
            try:
                async with store.turn(place, 1) as (_, lock):
                    await store.commit(
                        place,
                        [
                            Turn("user", text, 1, time.time()),
                            Turn("assistant", "ok", 1, time.time()),
                        ],
                        UsageRecord(1, channel, 1, "m", TokenUsage(1, 1)),
                        lock,
                    )
                acknowledged[channel].append(text)
            except MemoryUnavailable:
                failed += 1
                await asyncio.sleep(0.1)

    tasks = [asyncio.create_task(writer(c)) for c in channels]
    await asyncio.sleep(1.0)
    cluster.kill(victim)
    killed_acked = sum(len(v) for v in acknowledged.values())
    await asyncio.sleep(4.0)
    stop.set()
    await asyncio.gather(*tasks)
    lost = []
    for channel in channels:
        stored = {t.content for t in await store.history(channel) if t.role == "user"}
        lost += [text for text in acknowledged[channel] if text not in stored]
    total = sum(len(v) for v in acknowledged.values())
    await client.aclose()
    print(
        f"\nfailover under writes: {killed_acked} commits acknowledged before the kill, "
        f"{total} in all, {failed} refused while unavailable, lost {len(lost)}: {lost[:5]}"
    )
    assert total > killed_acked, "writes went on after the takeover"
    assert lost == []
    cluster.restart(victim)  # back as a replica, for the next test
    await asyncio.to_thread(cluster.wait_healthy, 30)


async def test_a_shard_with_no_node_left_gives_the_clear_answer_quickly(
    failover_cluster: LocalCluster, llm: LLMStandIn
) -> None:
    """No replica to promote (primary and replica both down): no long hang, the clear
    "memory unavailable" answer, and all is well once the nodes are back."""
    cluster = failover_cluster
    await asyncio.to_thread(cluster.wait_healthy, 30)
    async with open_services(make_config(cluster.url, llm.base_url)) as services:
        await ask(services, HERE, ANN, "before")
        primary = cluster.primary_for(services.store.keys.history(HERE.channel_id))
        replicas = []
        for node in cluster.nodes:
            if node is not primary and node.running:
                with node.client() as c:
                    info = c.info("replication")
                if info.get("master_port") == primary.port:
                    replicas.append(node)
        assert replicas
        for node in [primary, *replicas]:
            cluster.kill(node)
        started = time.monotonic()
        with pytest.raises(MemoryUnavailable) as info:
            await ask(services, HERE, ANN, "anyone there?")
        assert "memory" in info.value.user_text.lower()
        assert time.monotonic() - started < FAILOVER_WAIT_S + 8
        for node in [primary, *replicas]:
            cluster.restart(node)
        await asyncio.to_thread(cluster.wait_healthy, 60)
        deadline = time.monotonic() + 20
        while True:
            try:
                await ask(services, HERE, ANN, "back?")
                break
            except MemoryUnavailable:
                assert time.monotonic() < deadline, "the bot did not recover"
                await asyncio.sleep(0.3)
        history = [t.content for t in await services.store.history(HERE.channel_id)]
        assert history[-4:] == ["before", "Echo: Ann: before", "back?", "Echo: Ann: back?"]
        assert "anyone there?" not in history
