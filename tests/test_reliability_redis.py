"""Reliability: Redis going away and coming back, and what /reset and retention promise.

The session Redis (`redis_server`) runs with AOF `appendfsync everysec`. `stop()` is a
graceful SIGTERM: Redis fsyncs the AOF and exits, so every acknowledged write survives.
`kill()` is SIGKILL, like a crash: only writes older than the last fsync (at most ~1 s) are
guaranteed, so the kill test waits 1.5 s after the turns it requires to survive. Every
test leaves the session Redis running.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis.asyncio as aioredis

import bot.services
from bot.errors import MemoryUnavailable
from bot.memory.redis_server import EmbeddedRedis
from tests.harness import MARKER, BotHarness, running_bot
from tests.reliability_report import measure, reliability_report  # noqa: F401
from tests.standin.llm_api import Behavior

MEMORY_NOTE = "⚠️ " + MemoryUnavailable.user_text


@pytest.fixture
def keep_redis_running(redis_server: EmbeddedRedis) -> Iterator[EmbeddedRedis]:
    yield redis_server
    if not redis_server.running:
        redis_server.start()


async def stored(h: BotHarness) -> list[tuple[str, str]]:
    assert h.services is not None
    return [(t.role, t.content) for t in await h.services.store.history(h.channel)]


def exchange(text: str) -> list[tuple[str, str]]:
    return [("user", text), ("assistant", f"Echo: alice: {text}")]


async def ask_during_outage(h: BotHarness, text: str) -> float:
    started = time.monotonic()
    parts = await h.ask(text)
    assert [p.content for p in parts] == [MEMORY_NOTE]
    return time.monotonic() - started


async def test_redis_stopped_gracefully_and_restarted(
    redis_client: aioredis.Redis, keep_redis_running: EmbeddedRedis, pytestconfig: pytest.Config
) -> None:
    server = keep_redis_running
    async with running_bot(server.url) as h:
        await h.ask("one")
        await h.ask("two")  # committed just before the stop: SIGTERM must keep it
        calls = len(h.llm.chat_requests)
        await asyncio.to_thread(server.stop)
        took = await ask_during_outage(h, "during the outage")
        await ask_during_outage(h, "still down?")
        assert len(h.llm.chat_requests) == calls, "the model was called without memory"
        measure(pytestconfig, f"Redis down: the memory note came after {took:.2f} s")
        await asyncio.to_thread(server.start)
        parts = await h.ask("three")
        assert [p.content for p in parts] == ["Echo: alice: three"]
        sent = [m["content"] for m in h.llm.chat_requests[-1].body["messages"][1:]]
        assert sent == [
            "alice: one",
            "Echo: alice: one",
            "alice: two",
            "Echo: alice: two",
            "alice: three",
        ]
        assert await stored(h) == exchange("one") + exchange("two") + exchange("three")


async def test_redis_killed_mid_conversation_and_restarted(
    redis_client: aioredis.Redis, keep_redis_running: EmbeddedRedis
) -> None:
    server = keep_redis_running
    async with running_bot(server.url) as h:
        await h.ask("one")
        await h.ask("two")
        await asyncio.sleep(1.5)  # AOF everysec: these two turns are on disk now
        h.llm.push(Behavior(reply_tokens=80, tps=40))
        streaming = await h.say("answer slowly")
        await h.wait(lambda: h.replies_to(streaming))
        await asyncio.to_thread(server.kill)
        await h.settle(timeout=60)
        parts = h.replies_to(streaming)
        assert parts and MEMORY_NOTE in parts[-1].content
        assert all(MARKER not in p.content for p in parts)
        await ask_during_outage(h, "during the outage")
        await asyncio.to_thread(server.start)
        # The lock of the reply that was streaming could not be released while Redis was
        # down (and the AOF kept it): the channel must not wait out its 30 s lease.
        started = time.monotonic()
        parts = await h.ask("three")
        assert time.monotonic() - started < 5
        assert [p.content for p in parts] == ["Echo: alice: three"]
        assert await stored(h) == exchange("one") + exchange("two") + exchange("three")


# --- unreachable at start -------------------------------------------------------------


async def test_redis_unreachable_at_start_then_comes_up(
    redis_client: aioredis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.services")
    late = EmbeddedRedis(tmp_path / "late-redis")
    try:
        starting = asyncio.create_task(_start_bot_with(late.url))
        await asyncio.sleep(2.0)
        assert not starting.done(), "start-up gave up (or crashed) while Redis was down"
        await asyncio.to_thread(late.start)
        h, stack = await asyncio.wait_for(starting, 30)
        async with stack:
            parts = await h.ask("hello late redis")
            assert [p.content for p in parts] == ["Echo: alice: hello late redis"]
    finally:
        late.cleanup()
    retries = [r.getMessage() for r in caplog.records if "Redis unreachable" in r.getMessage()]
    assert len(retries) >= 2
    delays = [float(m.rsplit("retrying in ", 1)[1].split()[0]) for m in retries]
    assert delays == sorted(delays) and delays[-1] > delays[0], f"no backoff: {delays}"
    assert all(
        r.levelno == logging.WARNING and not r.exc_info
        for r in caplog.records
        if "Redis unreachable" in r.getMessage()
    )


async def _start_bot_with(url: str) -> tuple[BotHarness, contextlib.AsyncExitStack]:
    stack = contextlib.AsyncExitStack()
    h = await stack.enter_async_context(running_bot(url))
    return h, stack


@pytest.mark.usefixtures("restore_logging")
async def test_redis_unreachable_at_start_gives_up_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m bot` (its real `main`) with a Redis that never answers."""
    from bot.__main__ import main

    for var in ("DISCORD_TOKEN", "LLM_API_KEY", "REDIS_URL", "BOT_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    # The real schedule is 8 attempts from 0.5 s doubling to 10 s (35 s); same code, faster.
    fast = functools.partial(bot.services.wait_for_redis, first_delay=0.05)
    monkeypatch.setattr(bot.services, "wait_for_redis", fast)
    config = tmp_path / "config.toml"
    config.write_text(
        '[discord]\ntoken = "some-token-value"\n'
        f'[redis]\nurl = "unix://{tmp_path}/no-such-redis.sock"\n'
        '[llm]\nbase_url = "http://127.0.0.1:9/v1"\n'
    )
    started = time.monotonic()
    code = await asyncio.to_thread(main, ["--config", str(config)])
    took = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    retries = [line for line in lines if "Redis unreachable (attempt" in line]
    assert len(retries) == 7, err
    assert "retrying in 0.1 s" in retries[0] and "retrying in 3.2 s" in retries[-1]
    assert lines[-1].startswith("Cannot start: Redis is unreachable after 8 attempts")
    assert "redis.url / REDIS_URL" in lines[-1]
    assert "Traceback" not in err
    assert took < 30


# --- what /reset and retention promise --------------------------------------------------


async def test_reset_and_retention_do_what_they_promise(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    async with running_bot(redis_server.url, overrides={"history": {"retention_days": 2}}) as h:
        assert h.services is not None
        keys = h.services.store.keys
        await h.slash("persona set", {"text": "You are terse."})
        await h.slash("chat", {"mode": "on"})
        await h.ask("my secret-sauce-phrase is basil")
        await h.ask("remember it")
        hist = keys.history(h.channel)
        assert 2 * 86_400 - 10 <= await redis_client.ttl(hist) <= 2 * 86_400
        assert not await redis_client.exists(keys.lock(h.channel)), "a lock was left behind"
        all_keys = set(await redis_client.keys("e2e:*"))
        usage = {k for k in all_keys if ":usage:" in k}
        assert len(usage) == 3, "usage is counted per user, channel and server"
        for key in usage:
            assert 39 * 86_400 < await redis_client.ttl(key) <= 40 * 86_400
            values = await redis_client.hgetall(key)
            assert not any("basil" in f or "basil" in v for f, v in values.items())
        # One "counted" marker per reply in the channel's, the user's and the server's slot.
        done = {k for k in all_keys if ":done:" in k}
        assert len(done) == 3 * 2
        for key in done:
            assert 0 < await redis_client.ttl(key) <= 3600
            assert await redis_client.get(key) in ("0", "1")
        # Per server and day, each user's total (no text), for /usage's top users.
        users = {k for k in all_keys if ":usage_users:" in k}
        assert len(users) == 1 and all(f.isdigit() for f in await redis_client.hkeys(*users))
        assert 39 * 86_400 < await redis_client.ttl(*users) <= 40 * 86_400
        usage |= users
        persona, chat = keys.channel_persona(h.channel), keys.chat_mode(h.channel)
        assert all_keys == {hist, persona, chat, *usage, *done}, "an undocumented key is stored"
        assert await redis_client.ttl(persona) == -1 and await redis_client.ttl(chat) == -1
        for key in (persona, chat):
            assert "basil" not in (await redis_client.get(key) or "")

        record = await h.slash("reset")
        assert "4 messages forgotten" in record.content
        assert not await redis_client.exists(hist), "/reset left the history"
        assert await redis_client.exists(persona) and await redis_client.exists(chat)
        # /reset leaves one counter (no text) so a reply streaming meanwhile is not kept.
        epoch = keys.epoch(h.channel)
        assert set(await redis_client.keys("e2e:*")) == {persona, chat, epoch, *usage, *done}
        assert (await redis_client.get(epoch) or "").isdigit()
        assert 0 < await redis_client.ttl(epoch) <= 86_400
        await h.ask("what was it?")
        messages = h.llm.chat_requests[-1].body["messages"]
        assert [m["role"] for m in messages] == ["system", "user"]
        assert messages[0]["content"] == "You are terse."

        # retention_days = 0 keeps a conversation until /reset: no TTL at all.
        await h.stop()
        await h.start(replace(h.config, history=replace(h.config.history, retention_days=0)))
        await h.ask("keep this forever")
        assert await redis_client.ttl(hist) == -1
