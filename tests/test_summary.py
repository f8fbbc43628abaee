"""The rolling summary: planning, the store's atomic fold, the background summariser
against a real Redis and the loopback LLM stand-in (which summarises deterministically),
/memory and the console's /memory and /export."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.chat.context import SUMMARY_HEADING
from bot.chat.summary import (
    KEEP,
    summarising_messages,
    summary_cap,
    transcript,
    turns_to_fold,
)
from bot.config import (
    Config,
    HistoryConfig,
    LLMConfig,
    PersonaConfig,
    RedisConfig,
    load_config,
)
from bot.console import Console
from bot.errors import ConfigError
from bot.llm.tokens import PER_MESSAGE, TokenCounter
from bot.memory.redis_server import EmbeddedRedis
from bot.memory.store import Store, UsageRecord
from bot.models import Place, Speaker, Summary, TokenUsage, Turn
from bot.services import Services, open_services
from tests.harness import running_bot
from tests.standin.llm_api import Behavior, LLMStandIn, lorem, summarize_reply

COUNTER = TokenCounter()
HERE = Place(channel_id=300, channel_name="general", guild_id=7, guild_name="Guild")
ANN = Speaker(1, "Ann")
LOCKER = "my locker code is 7731"


def turn(role: str, text: str, at: float | None = None) -> Turn:
    return Turn(
        role,
        text,
        COUNTER.count(text),
        time.time() if at is None else at,
        1 if role == "user" else None,
        "Ann" if role == "user" else None,
    )


def exchanges(n: int, words: int = 10) -> list[Turn]:
    out: list[Turn] = []
    for i in range(n):
        out += [turn("user", f"q{i} {lorem(words)}"), turn("assistant", f"a{i} {lorem(words)}")]
    return out


# --- planning (pure) ------------------------------------------------------------------


def test_nothing_is_folded_while_everything_fits() -> None:
    history = exchanges(3)
    assert turns_to_fold(history, budget=10_000, max_turns=100, counter=COUNTER) == 0


def test_folds_whole_exchanges_down_to_keep_of_the_budget() -> None:
    history = exchanges(10)
    cost = sum(t.tokens + PER_MESSAGE for t in history)
    budget = cost - 1  # one token too many
    count = turns_to_fold(history, budget=budget, max_turns=100, counter=COUNTER)
    assert count > 0 and count % 2 == 0, "whole exchanges"
    rest = history[count:]
    assert rest[0].role == "user"
    assert sum(t.tokens + PER_MESSAGE for t in rest) <= budget * KEEP
    # Not more than needed: one exchange fewer would not be enough.
    assert sum(t.tokens + PER_MESSAGE for t in history[count - 2 :]) > budget * KEEP


def test_folds_when_past_max_turns_even_if_tokens_fit() -> None:
    history = exchanges(6)
    count = turns_to_fold(history, budget=10_000, max_turns=8, counter=COUNTER)
    assert len(history) - count <= 8 * KEEP and count % 2 == 0


def test_summary_cap_leaves_room_in_small_contexts() -> None:
    llm = LLMConfig(context_tokens=1000, max_tokens=600)
    assert summary_cap(HistoryConfig(summary_tokens=512), llm) == 100
    assert summary_cap(HistoryConfig(summary_tokens=64), LLMConfig()) == 64


def test_the_summarising_request_holds_the_old_summary_and_the_turns() -> None:
    previous = Summary("- Bob: likes tea", 5, turns=2)
    lines = transcript([turn("user", LOCKER), turn("assistant", "Noted.")], "Botty")
    messages = summarising_messages("Summarise in {max_words} words.", previous, lines, 100)
    assert messages[0] == {"role": "system", "content": "Summarise in 75 words."}
    body = messages[1]["content"]
    assert "- Bob: likes tea" in body and f"Ann: {LOCKER}" in body and "Botty: Noted." in body
    # The stand-in's deterministic summariser keeps the old facts and adds the new ones.
    assert summarize_reply({"messages": messages}) == (
        f"- Bob: likes tea\n- Ann: {LOCKER}\n- Botty: Noted."
    )


def test_config_keys_and_defaults(tmp_path: Path) -> None:
    config = Config()
    assert config.history.summarize and config.history.summary_tokens == 512
    assert config.history.summary_model == ""
    assert "{max_words}" in config.history.summary_prompt
    assert config.history.stored_turns_cap == 200
    off = tmp_path / "off.toml"
    off.write_text("[history]\nsummarize = false\nmax_turns = 10\n")
    assert load_config(off, environ={}).history.stored_turns_cap == 10
    bad = tmp_path / "bad.toml"
    bad.write_text("[history]\nsummary_tokens = 5\n")
    with pytest.raises(ConfigError, match=r"^history.summary_tokens = 5: must be a number"):
        load_config(bad, environ={})


# --- the store's atomic fold ---------------------------------------------------------


def make_store(client: aioredis.Redis, **kw: int) -> Store:
    return Store(
        client,
        prefix="s",
        max_turns=kw.get("max_turns", 100),
        retention_days=kw.get("retention_days", 30),
    )


async def append(store: Store, turns: list[Turn]) -> None:
    async with store.turn(HERE, 1) as (_, lock):
        rec = UsageRecord(1, HERE.channel_id, HERE.guild_id, "m", TokenUsage(1, 1))
        await store.commit(HERE, turns, rec, lock)


async def test_fold_replaces_the_oldest_turns_by_the_summary(redis_client: aioredis.Redis) -> None:
    store = make_store(redis_client)
    history = exchanges(3)
    await append(store, history)
    snap = await store.snapshot(HERE.channel_id)
    assert snap.summary is None and len(snap.history) == 6
    assert await store.fold(HERE.channel_id, snap, 2, Summary("- q0", 3, turns=2))
    assert [t.content for t in await store.history(HERE.channel_id)] == [
        t.content for t in history[2:]
    ]
    async with store.turn(HERE, 1) as (loaded, _):
        assert loaded.summary == Summary("- q0", 3, turns=2)
    ttl = await redis_client.ttl(store.keys.summary(HERE.channel_id))
    assert 29 * 86_400 < ttl <= 30 * 86_400


async def test_fold_refuses_when_the_channel_changed(redis_client: aioredis.Redis) -> None:
    store = make_store(redis_client)
    await append(store, exchanges(3))
    cid = HERE.channel_id
    snap = await store.snapshot(cid)
    # Another fold got there first: the summary differs and the head moved.
    assert await store.fold(cid, snap, 2, Summary("first", 1, turns=2))
    assert not await store.fold(cid, snap, 2, Summary("second", 1, turns=2))
    assert (await store.snapshot(cid)).summary == Summary("first", 1, turns=2)
    assert len(await store.history(cid)) == 4
    # A /reset in between: nothing comes back.
    snap = await store.snapshot(cid)
    await store.reset(cid)
    assert not await store.fold(cid, snap, 2, Summary("late", 1, turns=4))
    after = await store.snapshot(cid)
    assert after.history == [] and after.summary is None
    # New turns appended meanwhile are fine: the head is unchanged.
    await append(store, exchanges(2))
    snap = await store.snapshot(cid)
    await append(store, [turn("user", "new"), turn("assistant", "newer")])
    assert await store.fold(cid, snap, 2, Summary("ok", 1, turns=2))
    assert [t.content for t in await store.history(cid)][-2:] == ["new", "newer"]
    assert len(await store.history(cid)) == 4


async def test_reset_removes_the_summary_and_commit_keeps_its_ttl(
    redis_client: aioredis.Redis,
) -> None:
    store = make_store(redis_client, retention_days=2)
    await append(store, exchanges(2))
    snap = await store.snapshot(HERE.channel_id)
    assert await store.fold(HERE.channel_id, snap, 2, Summary("s", 1, turns=2))
    key = store.keys.summary(HERE.channel_id)
    await redis_client.expire(key, 10)
    await append(store, exchanges(1))
    assert await redis_client.ttl(key) > 86_400, "a reply refreshes the summary's TTL"
    assert await store.reset(HERE.channel_id) == 4
    assert not await redis_client.exists(key)


async def test_the_summarising_lease_is_taken_once(redis_client: aioredis.Redis) -> None:
    store = make_store(redis_client)
    assert await store.claim_summarizing(HERE.channel_id, "a", 30)
    assert not await store.claim_summarizing(HERE.channel_id, "b", 30)
    await store.release_summarizing(HERE.channel_id, "b")  # not b's to release
    assert not await store.claim_summarizing(HERE.channel_id, "b", 30)
    await store.release_summarizing(HERE.channel_id, "a")
    assert await store.claim_summarizing(HERE.channel_id, "b", 30)


# --- the summariser end to end -------------------------------------------------------


def small_config(redis_url: str, llm_url: str, **history: Any) -> Config:
    """A small context, so a few padded messages push the oldest out of the window."""
    return Config(
        llm=LLMConfig(
            base_url=llm_url,
            model="stand-in",
            max_tokens=100,
            context_tokens=700,
            first_token_timeout=5,
            idle_timeout=5,
            total_timeout=10,
            max_retries=0,
        ),
        redis=RedisConfig(url=redis_url, key_prefix="sum"),
        history=HistoryConfig(max_turns=50, summary_tokens=150, **history),
        persona=PersonaConfig(default="You are {bot_name}."),
    )


@pytest.fixture
async def services(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis, llm: LLMStandIn
) -> AsyncIterator[Services]:
    async with open_services(small_config(redis_server.url, llm.base_url)) as built:
        built.summaries.retry_delays = (0.2,)
        yield built


async def ask(services: Services, text: str, who: Speaker = ANN) -> str:
    async with services.conversations.reply(HERE, who, text) as reply:
        async for _ in reply:
            pass
    assert reply.outcome is not None
    return reply.outcome.text


def padded(i: int) -> str:
    return f"topic {i}: {lorem(40)}"


def knows_the_code(body: dict[str, Any]) -> str:
    """A model that answers from whatever context it was given."""
    seen = json.dumps(body["messages"])
    return "Your locker code is 7731." if "7731" in seen else "I don't know your locker code."


async def chat_until_folded(services: Services, start: int = 0, limit: int = 12) -> int:
    """Padded messages until a summary was stored; returns the next topic number."""
    i = start
    while services.summaries.folds == 0:
        assert i < start + limit, "no summary was written"
        await ask(services, padded(i))
        await services.summaries.wait_idle()
        i += 1
    return i


async def test_an_early_fact_is_answered_from_the_summary(
    services: Services, llm: LLMStandIn
) -> None:
    await ask(services, LOCKER)
    await chat_until_folded(services)
    for i in range(100, 104):  # more talk: the summary is carried forward
        await ask(services, padded(i))
        await services.summaries.wait_idle()
    llm.push(Behavior(reply=knows_the_code))
    assert await ask(services, "what is my locker code?") == "Your locker code is 7731."
    sent = llm.chat_requests[-1].body["messages"]
    assert sent[0]["role"] == "system" and sent[0]["content"].startswith("You are Assistant.")
    assert SUMMARY_HEADING in sent[0]["content"] and "7731" in sent[0]["content"]
    assert not any("7731" in m["content"] for m in sent[1:]), "it left the window"
    stored = await services.store.history(HERE.channel_id)
    assert not any(LOCKER in t.content for t in stored), "it left the stored history"
    assert sum(1 for m in sent if m["role"] == "system") == 1
    # The summary is counted in the budget: the prompt fits the context.
    assert llm.chat_requests[-1].prompt_tokens <= 700 - 100


async def test_without_summaries_the_fact_is_forgotten(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis, llm: LLMStandIn
) -> None:
    config = small_config(redis_server.url, llm.base_url, summarize=False)
    async with open_services(config) as services:
        await ask(services, LOCKER)
        for i in range(8):
            await ask(services, padded(i))
        llm.push(Behavior(reply=knows_the_code))
        assert await ask(services, "what is my locker code?") == "I don't know your locker code."
        assert llm.summary_requests == []


def check_nothing_lost(history: list[Turn], summary: Summary | None, total: int) -> None:
    """Every turn is either in the summary (counted) or stored, once, in order, in pairs."""
    covered = summary.turns if summary else 0
    assert covered + len(history) == total
    assert covered % 2 == 0 and [t.role for t in history] == ["user", "assistant"] * (
        len(history) // 2
    )


async def test_replies_go_on_during_a_slow_summary(services: Services, llm: LLMStandIn) -> None:
    llm.summarizer = Behavior(reply=summarize_reply, ttft=1.5)
    i = 0
    while not llm.summary_requests:
        await ask(services, padded(i))
        i += 1
    sent_during = []
    for j in range(3):
        started = time.monotonic()
        await ask(services, f"during the summary {j}")
        sent_during.append(time.monotonic() - started)
    summary_request = llm.summary_requests[0]
    assert summary_request.finished is None, "the replies did not wait for the summary"
    assert max(sent_during) < 1.0
    await services.summaries.wait_idle()
    snap = await services.store.snapshot(HERE.channel_id)
    check_nothing_lost(snap.history, snap.summary, 2 * (i + 3))
    assert snap.summary is not None
    assert [t.content for t in snap.history][-2:] == [
        "during the summary 2",
        "Echo: Ann: during the summary 2",
    ]
    # The summary holds exactly the user messages it covers, oldest first.
    folded_users = [padded(k) for k in range(snap.summary.turns // 2)]
    assert snap.summary.text.splitlines() == [f"- Ann: {t}" for t in folded_users]


async def test_a_failing_summary_keeps_everything_and_is_retried(
    services: Services, llm: LLMStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    services.summaries.retry_delays = (1.0,)
    llm.push_summary(Behavior.error(500))
    caplog.set_level(logging.WARNING, logger="bot.chat.summary")
    i = 0
    while not llm.summary_requests:
        await ask(services, padded(i))
        i += 1
    await asyncio.wait_for(_until(lambda: llm.summary_requests[0].finished is not None), 5)
    await asyncio.sleep(0.2)
    snap = await services.store.snapshot(HERE.channel_id)
    assert snap.summary is None and len(snap.history) == 2 * i, "nothing dropped"
    assert "failed kind=server_error; retrying in 1.0 s" in caplog.text
    await services.summaries.wait_idle()
    assert len(llm.summary_requests) == 2
    snap = await services.store.snapshot(HERE.channel_id)
    assert snap.summary is not None
    check_nothing_lost(snap.history, snap.summary, 2 * i)


async def test_when_every_retry_fails_the_next_reply_tries_again(
    services: Services, llm: LLMStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    llm.push_summary(Behavior.error(503), Behavior.error(503))
    caplog.set_level(logging.WARNING, logger="bot.chat.summary")
    i = 0
    while len(llm.summary_requests) < 2:
        await ask(services, padded(i))
        await services.summaries.wait_idle()
        i += 1
    assert "the next reply tries again" in caplog.text
    assert (await services.store.snapshot(HERE.channel_id)).summary is None
    await ask(services, padded(i))
    await services.summaries.wait_idle()
    snap = await services.store.snapshot(HERE.channel_id)
    assert snap.summary is not None
    check_nothing_lost(snap.history, snap.summary, 2 * (i + 1))


async def test_reset_during_a_summary_wins(services: Services, llm: LLMStandIn) -> None:
    llm.summarizer = Behavior(reply=summarize_reply, ttft=1.0)
    i = 0
    while not llm.summary_requests:
        await ask(services, padded(i))
        i += 1
    assert await services.conversations.reset(HERE.channel_id) == 2 * i
    await services.summaries.wait_idle()
    assert llm.summary_requests[0].outcome == "complete"
    snap = await services.store.snapshot(HERE.channel_id)
    assert snap.history == [] and snap.summary is None
    await ask(services, "fresh start")
    sent = llm.chat_requests[-1].body["messages"]
    assert sent == [
        {"role": "system", "content": "You are Assistant."},
        {"role": "user", "content": "Ann: fresh start"},
    ]


async def test_summary_calls_are_counted_apart_for_channel_and_server(
    services: Services, llm: LLMStandIn
) -> None:
    await chat_until_folded(services)
    summaries = llm.summary_requests
    assert summaries
    spent = sum(r.prompt_tokens + len(r.chunks) for r in summaries)
    replies = sum(r.prompt_tokens + len(r.chunks) for r in llm.chat_requests)
    channel = await services.usage.report("channel", HERE.channel_id)
    assert channel.today.summary_requests == len(summaries)
    assert channel.today.summary_total == spent
    assert channel.today.total == replies + spent
    assert channel.today.requests == len(llm.chat_requests)
    server = await services.usage.report("server", 7)
    assert server.today.summary_total == spent
    user = await services.usage.report("user", ANN.id)
    assert user.today.summary_requests == 0 and user.today.total == replies


async def test_memory_report_and_export(services: Services, llm: LLMStandIn) -> None:
    await ask(services, LOCKER)
    await chat_until_folded(services)
    report = await services.memory.report(HERE, "Assistant")
    history = await services.store.history(HERE.channel_id)
    assert report.stored_turns == len(history)
    assert 0 < report.fitting_turns <= len(history)
    fitting = history[len(history) - report.fitting_turns :]
    assert report.fitting_tokens == sum(t.tokens + PER_MESSAGE for t in fitting)
    assert report.summary is not None and "7731" in report.summary.text

    exported = await services.memory.export(HERE, "Assistant")
    data = json.loads(exported.json)
    assert data["summary"]["text"] == report.summary.text
    assert [t["content"] for t in data["turns"]] == [t.content for t in history]
    assert data["channel_id"] == HERE.channel_id
    md = exported.markdown
    assert md.startswith("# Conversation in #general in Guild")
    assert f"## Summary of {report.summary.turns} earlier messages" in md
    assert "- Ann: my locker code is 7731" in md
    assert history[-1].content in md and "**Ann** · " in md and "**Assistant** · " in md
    assert exported.stem.startswith("general-")


async def test_console_memory_and_export(
    services: Services, llm: LLMStandIn, tmp_path: Path
) -> None:
    out = io.StringIO()
    console = Console(services, "general", out=out, user="Ann")
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    for text in ("hello there", "/memory", f"/export {tmp_path / 'conv.md'}", None):
        lines.put_nowait(text)
    await console.run(lines)
    text = out.getvalue()
    assert "**2** messages stored; the newest **2** fit the next request" in text
    assert "No summary yet" in text
    assert f"Saved {tmp_path / 'conv.md'} and {tmp_path / 'conv.json'}." in text
    data = json.loads((tmp_path / "conv.json").read_text())
    assert [t["content"] for t in data["turns"]] == ["hello there", "Echo: Ann: hello there"]
    assert "hello there" in (tmp_path / "conv.md").read_text()


async def _until(predicate: Any) -> None:
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise TimeoutError(predicate)


# --- /memory over the wire -----------------------------------------------------------


async def test_memory_show_and_export_in_discord(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    overrides = {
        "llm": {"context_tokens": 700, "max_tokens": 100},
        "history": {"summary_tokens": 150},
    }
    async with running_bot(redis_server.url, overrides=overrides) as h:
        assert h.services is not None
        summaries = h.services.summaries
        await h.ask(LOCKER)
        i = 0
        while summaries.folds == 0:
            assert i < 12, "no summary was written"
            await h.ask(padded(i))
            await summaries.wait_idle()
            i += 1
        history = await h.services.store.history(h.channel)
        snap = await h.services.store.snapshot(h.channel)
        assert snap.summary is not None

        show = await h.slash("memory show", user_id=h.user)
        assert show.ephemeral
        text = show.embeds[0]["description"]
        assert f"**{len(history)}** messages stored" in text
        assert f"Summary of {snap.summary.turns} earlier messages" in text
        assert LOCKER in text

        export = await h.slash("memory export", user_id=h.user)
        assert export.ephemeral
        files = {a["filename"].rsplit(".", 1)[1]: a for a in export.original.attachments}
        assert set(files) == {"md", "json"}
        blob = h.discord.attachment_blobs
        data = json.loads(blob[int(files["json"]["id"])][0])
        assert data["summary"]["text"] == snap.summary.text
        assert [t["content"] for t in data["turns"]] == [t.content for t in history]
        md = blob[int(files["md"]["id"])][0].decode()
        assert "## Summary of" in md and LOCKER in md and history[-1].content in md
        assert not any(LOCKER in t.content for t in history), "only the summary has it"

        usage = await h.slash("usage", {"scope": "channel"})
        fields = {f["name"]: f["value"] for f in usage.embeds[0]["fields"]}
        calls = len(h.llm.summary_requests)
        spent = sum(r.prompt_tokens + len(r.chunks) for r in h.llm.summary_requests)
        noun = "summary" if calls == 1 else "summaries"
        assert f"incl. {spent:,} for {calls} {noun} of old messages" in fields["Today"]


async def test_memory_show_in_a_dm_and_after_reset(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    async with running_bot(redis_server.url, allow_dms=True) as h:
        dm = h.discord.open_dm(h.user)
        await h.discord.flush()
        in_dm = {"strict": False, "channel_id": dm, "user_id": h.user, "guild_id": None}
        await h.ask("hello in private", channel=dm, mention=False)
        record = await h.slash("memory show", {}, **in_dm)
        assert record.ephemeral
        assert "**2** messages stored; the newest **2** fit" in record.embeds[0]["description"]
        await h.slash("reset", {}, **in_dm)
        record = await h.slash("memory show", {}, **in_dm)
        assert "**0** messages stored" in record.embeds[0]["description"]
        export = await h.slash("memory export", {}, **in_dm)
        md = next(a for a in export.original.attachments if a["filename"].endswith(".md"))
        text = h.discord.attachment_blobs[int(md["id"])][0].decode()
        assert "Nothing is stored for this channel." in text


async def test_summary_model_and_cap_reach_the_server(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis, llm: LLMStandIn
) -> None:
    config = small_config(redis_server.url, llm.base_url, summary_model="small-summariser")
    async with open_services(config) as services:
        await chat_until_folded(services)
    body = llm.summary_requests[0].body
    assert body["model"] == "small-summariser" and body["max_tokens"] == 150
    assert body["messages"][0]["content"].startswith("You keep the running summary")
    assert all(r.body["model"] == "stand-in" for r in llm.chat_requests)


async def test_a_summary_cut_off_mid_way_counts_its_tokens_and_stores_nothing(
    services: Services, llm: LLMStandIn
) -> None:
    llm.push_summary(Behavior(reply=summarize_reply, drop_after=2))
    services.summaries.retry_delays = ()
    i = 0
    while not llm.summary_requests:
        await ask(services, padded(i))
        await services.summaries.wait_idle()
        i += 1
    assert llm.summary_requests[0].outcome == "drop"
    snap = await services.store.snapshot(HERE.channel_id)
    assert snap.summary is None and len(snap.history) == 2 * i
    channel = await services.usage.report("channel", HERE.channel_id)
    assert channel.today.summary_requests == 1 and channel.today.summary_completion > 0


async def test_turns_past_max_turns_are_folded_too(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis, llm: LLMStandIn
) -> None:
    config = small_config(redis_server.url, llm.base_url)
    config = Config(
        llm=LLMConfig(base_url=llm.base_url, model="stand-in", max_retries=0),
        redis=config.redis,
        history=HistoryConfig(max_turns=6),
        persona=config.persona,
    )
    async with open_services(config) as services:
        for i in range(5):
            await ask(services, f"short {i}")
            await services.summaries.wait_idle()
        snap = await services.store.snapshot(HERE.channel_id)
    assert snap.summary is not None
    assert len(snap.history) <= 6
    check_nothing_lost(snap.history, snap.summary, 10)
    assert snap.summary.text.splitlines()[0] == "- Ann: short 0"
