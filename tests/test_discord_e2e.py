"""The bot over the wire: real discord.py, the Discord stand-in, the LLM stand-in, real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from bot.memory.redis_server import EmbeddedRedis
from tests.harness import MANAGE_CHANNELS, MARKER, BotHarness, running_bot
from tests.standin.latency import Latency
from tests.standin.llm_api import Behavior


@pytest.fixture
async def h(
    redis_client: aioredis.Redis, redis_url: str, latency: Latency | None
) -> AsyncIterator[BotHarness]:
    async with running_bot(redis_url, latency=latency) as harness:
        yield harness


# Streaming, errors and slash commands also run against a Discord that takes 50-400 ms
# per request, as the real one does (a 1 ms stand-in hid replies shown 8 s late).
both_latencies = pytest.mark.parametrize("latency", ["none", "realistic"], indirect=True)


@both_latencies
async def test_answers_a_mention_with_a_streamed_reply(h: BotHarness) -> None:
    h.llm.default = Behavior(reply_tokens=40, tps=40)
    user_msg = await h.say("hello there")
    await h.settle()
    parts = h.replies_to(user_msg)
    assert len(parts) == 1
    reply = parts[0]
    expected = h.llm.chat_requests[-1].text
    assert reply.content == expected
    assert len(reply.history) >= 2, "the reply was edited while streaming"
    assert any(MARKER in e.content for e in reply.history[:-1])
    assert MARKER not in reply.content
    assert reply.allowed_mentions[0] == {"parse": [], "replied_user": False}
    assert all(am is not None and am["parse"] == [] for am in reply.allowed_mentions)
    assert reply.referenced_message_id == user_msg.id
    assert h.discord.count_429() == 0


async def test_typing_while_waiting_for_the_first_token(h: BotHarness) -> None:
    h.llm.default = Behavior(ttft=0.6)
    parts = await h.ask("think first")
    assert h.discord.typing_count(h.channel) >= 1
    typing_at = h.discord.typing[0][0]
    assert typing_at < parts[0].history[0].time


@pytest.mark.cluster
async def test_memory_across_turns_and_isolation_between_channels(h: BotHarness) -> None:
    other = h.discord.add_channel(h.guild, "other")
    await h.discord.flush()
    await h.ask("my favourite colour is teal")
    await h.ask("what is my favourite colour?")
    sent = [m["content"] for m in h.llm.chat_requests[-1].body["messages"]]
    assert sent[1] == "alice: my favourite colour is teal"
    assert sent[2] == "Echo: alice: my favourite colour is teal"
    await h.ask("fresh start here", channel=other)
    sent = [m["content"] for m in h.llm.chat_requests[-1].body["messages"]]
    assert not any("teal" in c for c in sent)


async def test_only_addressed_messages_and_never_bots(h: BotHarness) -> None:
    await h.say("just chatting among ourselves", mention=False)
    robot = h.discord.add_user("robot", bot=True, guild_id=h.guild)
    await h.discord.flush()
    await h.say("hello bot, from a bot", author=robot)
    await h.settle()
    assert h.llm.chat_requests == []
    record = await h.slash("chat", {"mode": "on"})
    assert "every message" in record.content
    parts = await h.ask("no mention needed now", mention=False)
    assert parts and parts[0].content == "Echo: alice: no mention needed now"
    await h.slash("chat", {"mode": "off"})
    await h.say("quiet again", mention=False)
    await h.settle()
    assert len(h.llm.chat_requests) == 1


async def test_attachment_only_message_gets_a_note(h: BotHarness) -> None:
    message = await h.say("", attachments=[("cat.png", b"png-bytes")])
    note = await h.discord.wait_for_bot_message(
        h.channel, lambda m: m.referenced_message_id == message.id
    )
    assert "nothing to read" in note.content and h.llm.chat_requests == []
    assert "can't see images" in note.content


async def test_replying_to_the_bot_continues_the_conversation(h: BotHarness) -> None:
    first = await h.ask("first question")
    parts = await h.ask("a follow-up", mention=False, reference=first[0].id)
    assert parts and parts[0].content == "Echo: alice: a follow-up"


@pytest.mark.cluster
@both_latencies
async def test_persona_commands_change_the_system_prompt(h: BotHarness) -> None:
    record = await h.slash("persona set", {"text": "You are terse. Server {server}."})
    assert record.ephemeral and "Persona set" in record.content
    await h.ask("hi")
    assert (
        h.llm.chat_requests[-1].body["messages"][0]["content"]
        == "You are terse. Server Test Guild."
    )
    record = await h.slash("persona preset", {"name": "pirate"})
    assert "pirate" in record.content
    await h.ask("hi again")
    assert h.llm.chat_requests[-1].body["messages"][0]["content"] == "You are a pirate."
    show = await h.slash("persona show")
    assert show.ephemeral and show.embeds[0]["description"] == "You are a pirate."
    assert "preset `pirate`" in show.embeds[0]["footer"]["text"]
    await h.slash("persona clear")
    await h.ask("and now?")
    assert h.llm.chat_requests[-1].body["messages"][0]["content"].endswith("default persona.")


async def test_persona_modal_autocomplete_and_thread_inheritance(h: BotHarness) -> None:
    record = await h.discord.invoke_slash(
        "persona set", {}, channel_id=h.channel, user_id=h.discord.owner_user.id, guild_id=h.guild
    )
    await record.wait_response(5)
    modal = record.modal
    assert modal is not None
    long_persona = "You are a meticulous librarian. " * 100
    input_id = modal["components"][0]["components"][0]["custom_id"]
    submitted = await h.discord.submit_modal(
        modal["custom_id"],
        {input_id: long_persona},
        channel_id=h.channel,
        user_id=h.discord.owner_user.id,
        guild_id=h.guild,
    )
    await submitted.wait_response(5)
    assert "Persona set" in submitted.content
    complete = await h.discord.invoke_autocomplete(
        "persona preset",
        {"name": "po"},
        "name",
        channel_id=h.channel,
        user_id=h.discord.owner_user.id,
        guild_id=h.guild,
    )
    await complete.wait_response(5)
    assert [c["name"] for c in complete.choices] == ["poet"]
    thread = h.discord.add_thread(h.channel, "side topic")
    await h.discord.flush()
    await h.ask("in the thread", channel=thread)
    assert h.llm.chat_requests[-1].body["messages"][0]["content"] == long_persona.strip()


@pytest.mark.cluster
async def test_reset_forgets_but_keeps_the_persona(h: BotHarness) -> None:
    await h.slash("persona preset", {"name": "poet"})
    await h.ask("one")
    await h.ask("two")
    record = await h.slash("reset")
    assert "4 messages forgotten" in record.content
    await h.ask("three")
    messages = h.llm.chat_requests[-1].body["messages"]
    assert messages[0]["content"] == "You write verse." and len(messages) == 2


@pytest.mark.cluster
@both_latencies
async def test_usage_shows_what_the_server_reported(h: BotHarness) -> None:
    await h.ask("count me")
    await h.ask("and me")
    reported = sum(r.prompt_tokens + len(r.chunks) for r in h.llm.chat_requests)
    record = await h.slash("usage", user_id=h.user)
    embed = record.embeds[0]
    assert record.ephemeral
    today = next(f for f in embed["fields"] if f["name"] == "Today")
    assert f"**{reported:,}** tokens" in today["value"]
    assert embed["image"]["url"] == "attachment://usage.png"


@both_latencies
async def test_long_reply_with_code_splits_correctly(h: BotHarness) -> None:
    from bot.delivery.splitter import plan_split

    code = "\n".join(f"    result_{i} = compute(value_{i}) + {i}" for i in range(64))
    prose = " ".join(["This paragraph explains the code in some detail."] * 12)
    text = f"{prose}\n\n```python\n{code}\n```\n\n{prose}\n\n```js\n{code}\n```\n\nDone."
    assert len(text) > 6000
    h.llm.default = Behavior(reply=text, tps=2000)
    parts = await h.ask("write lots of code")
    expected = [p.body for p in plan_split(text)]
    assert [m.content for m in parts] == expected
    assert len(parts) >= 4
    for m in parts:
        assert 0 < len(m.content) <= 2000 and MARKER not in m.content
        assert m.content.count("```") % 2 == 0, "every part closes its code block"
    assert parts[1].content.startswith("```python") or any(
        p.content.startswith("```") for p in parts[1:]
    )
    assert h.discord.count_429() == 0


async def test_twenty_channels_stream_at_once_without_429s(h: BotHarness) -> None:
    channels = [h.discord.add_channel(h.guild, f"room-{i}") for i in range(20)]
    await h.discord.flush()
    h.llm.default = Behavior(reply_tokens=120, tps=40)
    asked = [await h.say(f"channel {i} question", channel=c) for i, c in enumerate(channels)]
    await h.settle(timeout=60)
    assert h.discord.count_429() == 0
    by_question = {r.body["messages"][-1]["content"]: r.text for r in h.llm.chat_requests}
    for i, message in enumerate(asked):
        parts = h.replies_to(message)
        assert "".join(p.content for p in parts) == by_question[f"alice: channel {i} question"]
        assert len(parts[0].history) > 2, "each reply streamed by edits"


@both_latencies
async def test_failure_mid_stream_shows_a_note_and_keeps_history(h: BotHarness) -> None:
    await h.ask("this one works")
    h.llm.push(Behavior(reply_tokens=100, tps=50, drop_after=30))
    parts = await h.ask("this one breaks")
    final = parts[-1].content
    assert "⚠️" in final and "cut off" in final and MARKER not in final
    assert h.services is not None
    history = await h.services.store.history(h.channel)
    assert [t.content for t in history] == ["this one works", "Echo: alice: this one works"]


@both_latencies
async def test_error_before_any_text_is_a_plain_note(h: BotHarness) -> None:
    h.llm.push(Behavior.error(401))
    parts = await h.ask("anyone there?")
    assert len(parts) == 1 and "API key" in parts[0].content and "sk-e2e" not in parts[0].content


async def test_a_restarted_bot_remembers(h: BotHarness) -> None:
    await h.ask("remember the number 42")
    await h.stop()
    await h.start()
    await h.ask("what was the number?")
    contents = [m["content"] for m in h.llm.chat_requests[-1].body["messages"]]
    assert "alice: remember the number 42" in contents


async def test_permission_refusals_are_ephemeral_and_say_what_is_needed(h: BotHarness) -> None:
    everyone_can_use = dict(strict=False, permissions=0, user_id=h.user)
    record = await h.slash("reset", **everyone_can_use)
    assert record.ephemeral and "Manage Channels" in record.content
    record = await h.slash(
        "persona set",
        {"text": "x", "scope": "server"},
        strict=False,
        permissions=MANAGE_CHANNELS,
        user_id=h.user,
    )
    assert record.ephemeral and "Manage Server" in record.content
    record = await h.slash("usage", {"scope": "server"}, **everyone_can_use)
    assert record.ephemeral and "Manage Channels" in record.content
    await h.ask("still works for everyone")
    assert h.llm.chat_requests


async def test_model_output_pings_nobody(h: BotHarness) -> None:
    role = h.discord.add_role(h.guild, "mods", mentionable=True)
    await h.discord.flush()
    h.llm.default = Behavior(reply=f"Hey @everyone and @here, <@&{role}> and <@{h.user}>!", tps=200)
    parts = await h.ask("ping everybody please")
    assert "@everyone" in parts[0].content
    creates_and_edits = [
        r
        for r in h.discord.requests(path_contains=f"/channels/{h.channel}/messages")
        if r.method in ("POST", "PATCH")
    ]
    assert creates_and_edits
    for request in creates_and_edits:
        mentions = request.json.get("allowed_mentions")
        assert mentions is not None and mentions.get("parse") == []
        assert not mentions.get("users") and not mentions.get("roles")


async def test_direct_messages_only_when_allowed(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis
) -> None:
    for allowed in (False, True):
        async with running_bot(redis_server.url, allow_dms=allowed) as h:
            dm = h.discord.open_dm(h.user)
            await h.discord.flush()
            message = await h.say("hello in private", channel=dm, mention=False)
            await h.settle()
            assert bool(h.replies_to(message)) is allowed


async def test_a_global_429_holds_every_stream(h: BotHarness) -> None:
    assert h.bot is not None
    before = h.bot.budget.granted
    h.discord.force_429(
        rf"^/channels/{h.channel}/messages$", count=1, retry_after=0.5, is_global=True
    )
    parts = await h.ask("hello after a global limit")
    assert [p.content for p in parts] == ["Echo: alice: hello after a global limit"]
    # The shared budget learned the global hold from the 429's headers.
    assert h.bot.budget._hold_until > 0 and h.bot.budget.granted > before
