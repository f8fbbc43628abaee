"""Stop, Regenerate and Retry over the wire: the Discord stand-in presses the buttons
(MESSAGE_COMPONENT interactions, 3 s to acknowledge, one acknowledgement), the LLM
stand-in sees the connection close, real Redis keeps the history."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from bot.memory.redis_server import EmbeddedRedis
from bot.models import Turn
from tests.harness import MARKER, BotHarness, running_bot
from tests.standin.discord_api import InteractionRecord
from tests.standin.discord_models import PERM_MANAGE_MESSAGES, MessageRecord
from tests.standin.llm_api import Behavior

STOPPED = "\n\n-# ⏹ Stopped."
LONG = 700  # filler words: a bit over 3000 characters, two messages


@pytest.fixture
async def h(redis_client: aioredis.Redis, redis_server: EmbeddedRedis) -> AsyncIterator[BotHarness]:
    async with running_bot(redis_server.url) as harness:
        yield harness


def button_ids(msg: MessageRecord) -> list[str]:
    return [c["custom_id"] for row in msg.components for c in row.get("components", [])]


def cid(action: str, question: MessageRecord, asker: int) -> str:
    return f"reply:{action}:{question.id}:{asker}"


async def press(
    h: BotHarness, msg: MessageRecord, custom_id: str, *, user: int | None = None
) -> InteractionRecord:
    record = await h.discord.invoke_component(msg.id, custom_id, user_id=user or h.user)
    await record.wait_response(5)
    return record


async def press_and_wait(
    h: BotHarness, msg: MessageRecord, custom_id: str, *, user: int | None = None
) -> InteractionRecord:
    """Press a button that starts a new answer and wait until it is shown."""
    before = len(h.llm.chat_requests)
    record = await press(h, msg, custom_id, user=user)
    assert record.response_type == 6, record.all_content
    await h.wait(lambda: len(h.llm.chat_requests) > before)
    await h.settle()
    return record


async def history(h: BotHarness) -> list[Turn]:
    assert h.services is not None
    return await h.services.store.history(h.channel)


async def streaming_part(h: BotHarness, question: MessageRecord) -> MessageRecord:
    """The reply's message once it streamed a little (a few edits, Stop showing)."""
    return await h.discord.wait_for_bot_message(
        h.channel,
        lambda m: m.referenced_message_id == question.id and len(m.history) >= 3,
        timeout=10,
    )


async def test_stop_closes_the_llm_connection_and_keeps_what_was_shown(h: BotHarness) -> None:
    h.llm.default = Behavior(reply_tokens=600, tps=25)
    question = await h.say("tell me a very long story")
    part = await streaming_part(h, question)
    assert button_ids(part) == [cid("stop", question, h.user)]
    assert MARKER in part.content

    record = await press(h, part, cid("stop", question, h.user))
    pressed = time.monotonic()
    assert record.response_type == 6  # silent: the reply's own edit shows the stop
    request = h.llm.chat_requests[-1]
    await h.wait(lambda: request.disconnected is not None, timeout=3)
    assert request.disconnected is not None and request.disconnected - pressed < 1.0
    assert request.outcome == "client_gone" and len(request.chunks) < 600

    await h.settle()
    parts = h.replies_to(question)
    assert len(parts) == 1
    shown = parts[0].content
    assert shown.endswith(STOPPED) and MARKER not in shown
    assert button_ids(parts[0]) == [cid("regen", question, h.user)], "Stop is gone"
    turns = await history(h)
    assert [t.role for t in turns] == ["user", "assistant"]
    assert turns[1].stopped and turns[1].content == shown.removesuffix(STOPPED)
    assert not turns[0].stopped

    # The model is told its answer was cut.
    h.llm.default = Behavior()
    await h.ask("go on")
    sent = h.llm.chat_requests[-1].body["messages"]
    assert sent[2]["role"] == "assistant"
    assert sent[2]["content"] == turns[1].content + "\n\n[stopped by the user at this point]"
    assert h.discord.count_429() == 0


async def test_regenerate_edits_in_place_and_replaces_the_stored_answer(h: BotHarness) -> None:
    h.llm.push(Behavior(reply_tokens=LONG))
    question = await h.say("question one")
    await h.settle()
    parts = h.replies_to(question)
    assert len(parts) == 2
    regen = cid("regen", question, h.user)
    assert button_ids(parts[0]) == [] and button_ids(parts[1]) == [regen]
    first_prompt = h.llm.chat_requests[-1].body["messages"]

    # Shorter: the first message is edited, the second deleted.
    h.llm.push(Behavior(reply="A short new answer."))
    await press_and_wait(h, parts[1], regen)
    assert h.llm.chat_requests[-1].body["messages"] == first_prompt, "same question, history"
    again = h.replies_to(question)
    assert [m.id for m in again] == [parts[0].id]
    assert again[0].content == "A short new answer." and button_ids(again[0]) == [regen]
    assert h.discord.messages[parts[1].id].deleted
    turns = await history(h)
    assert [(t.role, t.content) for t in turns] == [
        ("user", "question one"),
        ("assistant", "A short new answer."),
    ]

    # Longer again: the first message is edited, a second one posted after it.
    h.llm.push(Behavior(reply_tokens=LONG, tps=400))
    await press_and_wait(h, again[0], regen)
    third = h.replies_to(question)
    assert len(third) == 2 and third[0].id == parts[0].id and third[1].id != parts[1].id
    assert button_ids(third[0]) == [] and button_ids(third[1]) == [regen]
    turns = await history(h)
    assert len(turns) == 2 and turns[1].content == h.llm.chat_requests[-1].text
    assert "\n".join(m.content for m in third).replace("\n", " ").split() == (
        turns[1].content.split()
    )
    assert h.discord.count_429() == 0


async def test_stop_during_a_regeneration_keeps_the_partial_new_answer(h: BotHarness) -> None:
    question = await h.say("first")
    await h.settle()
    last = h.replies_to(question)[-1]
    h.llm.push(Behavior(reply_tokens=300, tps=30))
    await press(h, last, cid("regen", question, h.user))
    await h.wait(
        lambda: cid("stop", question, h.user) in button_ids(last) and len(last.history) > 4
    )
    record = await press(h, last, cid("stop", question, h.user))
    assert record.response_type == 6
    await h.settle()
    assert last.content.endswith(STOPPED)
    assert button_ids(last) == [cid("regen", question, h.user)]
    turns = await history(h)
    assert len(turns) == 2 and turns[1].stopped
    assert turns[1].content == last.content.removesuffix(STOPPED)
    assert h.llm.chat_requests[-1].disconnected is not None


async def test_only_the_latest_answer_keeps_regenerate(h: BotHarness) -> None:
    first_q = await h.say("first")
    await h.settle()
    first = h.replies_to(first_q)[-1]
    assert button_ids(first) == [cid("regen", first_q, h.user)]
    edits = len(first.history)
    second_q = await h.say("second")
    await h.settle()
    assert button_ids(first) == [], "the older reply lost its button"
    assert len(first.history) == edits + 1, "with one edit"
    assert first.allowed_mentions[-1] == {"parse": []}, "which pings nobody"

    # After a restart the bot no longer knows which message to take the button from:
    # pressing an older one is refused privately and changes nothing.
    second = h.replies_to(second_q)[-1]
    await h.stop()
    await h.start()
    await h.ask("third")
    assert button_ids(second) == [cid("regen", second_q, h.user)]
    record = await press(h, second, cid("regen", second_q, h.user))
    await record.wait_until(lambda r: r.followups)
    assert record.response_type == 6 and record.followups[0].ephemeral
    assert "Only the latest answer" in record.all_content
    await h.wait(lambda: button_ids(second) == [])
    assert second.content == "Echo: alice: second", "the stale button went, nothing else"
    assert len(h.llm.chat_requests) == 3
    assert len(await history(h)) == 6


async def test_only_the_asker_or_message_managers_may_press(h: BotHarness) -> None:
    bob = h.discord.add_user("bob", guild_id=h.guild)
    mod = h.discord.add_user("mod", guild_id=h.guild)
    h.discord.add_member(h.guild, mod, permissions=PERM_MANAGE_MESSAGES | (1 << 10) | (1 << 11))
    await h.discord.flush()
    h.llm.default = Behavior(reply_tokens=300, tps=30)
    question = await h.say("hello")
    part = await streaming_part(h, question)
    refused = await press(h, part, cid("stop", question, h.user), user=bob)
    assert refused.response_type == 4 and refused.ephemeral
    assert "Manage Messages" in refused.content
    stopped = await press(h, part, cid("stop", question, h.user), user=mod)
    assert stopped.response_type == 6
    h.llm.default = Behavior()
    await h.settle()
    assert h.replies_to(question)[-1].content.endswith(STOPPED)

    last = h.replies_to(question)[-1]
    requests = len(h.llm.chat_requests)
    refused = await press(h, last, cid("regen", question, h.user), user=bob)
    assert refused.ephemeral and "Manage Messages" in refused.content
    assert len(h.llm.chat_requests) == requests
    h.llm.default = Behavior(reply="Regenerated by a moderator.")
    await press_and_wait(h, last, cid("regen", question, h.user), user=mod)
    assert h.replies_to(question)[-1].content == "Regenerated by a moderator."
    turns = await history(h)
    assert turns[1].content == "Regenerated by a moderator." and not turns[1].stopped


async def test_retry_asks_a_failed_question_again(h: BotHarness) -> None:
    h.llm.push(Behavior.error(500))
    question = await h.say("are you there?")
    await h.settle()
    failed = h.replies_to(question)
    assert len(failed) == 1 and failed[0].content.startswith("⚠️")
    retry = cid("retry", question, h.user)
    assert button_ids(failed[0]) == [retry]
    assert await history(h) == []

    h.llm.push(Behavior(reply="Yes, now I am."))
    await press_and_wait(h, failed[0], retry)
    parts = h.replies_to(question)
    assert [m.id for m in parts] == [failed[0].id], "the failed reply is edited in place"
    assert parts[0].content == "Yes, now I am."
    assert button_ids(parts[0]) == [cid("regen", question, h.user)]
    turns = await history(h)
    assert [(t.role, t.content) for t in turns] == [
        ("user", "are you there?"),
        ("assistant", "Yes, now I am."),
    ]
    assert h.discord.count_429() == 0

    # A question deleted since cannot be asked again: the presser is told, nothing changes.
    h.llm.push(Behavior.error(500))
    gone = await h.say("soon deleted")
    await h.settle()
    failed = h.replies_to(gone)
    await h.discord.dispatch_delete(gone.id)
    record = await press(h, failed[0], cid("retry", gone, h.user))
    await record.wait_until(lambda r: r.followups)
    assert "deleted" in record.all_content and record.followups[0].ephemeral
    assert button_ids(failed[0]) == [cid("retry", gone, h.user)]
    assert len(await history(h)) == 2


async def test_buttons_work_after_a_restart(h: BotHarness) -> None:
    question = await h.say("remember me")
    await h.settle()
    last = h.replies_to(question)[-1]
    await h.stop()
    await h.start()
    h.llm.push(Behavior(reply="Answered again after a restart."))
    await press_and_wait(h, last, cid("regen", question, h.user))
    assert h.replies_to(question)[-1].content == "Answered again after a restart."
    turns = await history(h)
    assert len(turns) == 2 and turns[1].content == "Answered again after a restart."


async def test_double_press_and_regenerate_while_another_reply_runs(h: BotHarness) -> None:
    question = await h.say("first")
    await h.settle()
    last = h.replies_to(question)[-1]
    regen = cid("regen", question, h.user)

    # A double press: one new answer; the second press is told privately.
    h.llm.push(Behavior(reply_tokens=40, tps=40))
    one, two = await asyncio.gather(
        h.discord.invoke_component(last.id, regen, user_id=h.user),
        h.discord.invoke_component(last.id, regen, user_id=h.user),
    )
    await one.wait_response()
    await two.wait_response()
    answers = sorted([one, two], key=lambda r: r.response_type or 0)
    assert answers[0].response_type == 4 and answers[0].ephemeral
    assert "being written" in answers[0].content
    assert answers[1].response_type == 6
    await h.wait(lambda: len(h.llm.chat_requests) == 2)
    await h.settle()
    assert len(h.llm.chat_requests) == 2
    turns = await history(h)
    assert len(turns) == 2 and turns[1].content == h.llm.chat_requests[-1].text

    # Regenerate while another question is being answered in the channel.
    h.llm.push(Behavior(reply_tokens=200, tps=40))
    second = await h.say("second")
    await streaming_part(h, second)
    refused = await press(h, h.replies_to(question)[-1], regen)
    assert refused.ephemeral and "being written" in refused.content
    await h.settle()
    assert len(await history(h)) == 4
    assert h.discord.count_429() == 0


async def test_stop_pressed_as_the_stream_ends(h: BotHarness) -> None:
    # The last edit is slow to arrive: Stop is still showing after the model finished.
    h.discord.add_latency(1.0, rf"/channels/{h.channel}/messages/\d+$", "PATCH")
    h.llm.push(Behavior(reply="A quick answer."))
    question = await h.say("short one")
    part = await h.discord.wait_for_bot_message(
        h.channel, lambda m: m.referenced_message_id == question.id, timeout=10
    )
    request = h.llm.chat_requests[-1]
    await h.wait(lambda: request.finished is not None)
    assert button_ids(part) == [cid("stop", question, h.user)]
    late = await press(h, part, cid("stop", question, h.user))
    again = await press(h, part, cid("stop", question, h.user))  # and a double press
    assert late.response_type == 6 and again.response_type == 6
    await h.settle()
    assert button_ids(part) == [cid("regen", question, h.user)], "no stuck Stop"
    assert part.content == "A quick answer."
    turns = await history(h)
    assert len(turns) == 2 and turns[1].content == "A quick answer." and not turns[1].stopped
    h.discord.clear_faults()

    # Pressed twice while streaming: one stop, a consistent history.
    h.discord._latency_rules.clear()
    h.llm.push(Behavior(reply_tokens=100, tps=40))
    second = await h.say("another one")
    part = await streaming_part(h, second)
    first_press, double = await asyncio.gather(
        h.discord.invoke_component(part.id, cid("stop", second, h.user), user_id=h.user),
        h.discord.invoke_component(part.id, cid("stop", second, h.user), user_id=h.user),
    )
    assert (await first_press.wait_response()).type == 6
    assert (await double.wait_response()).type == 6
    await h.settle()
    final = h.replies_to(second)[-1]
    assert button_ids(final) == [cid("regen", second, h.user)]
    assert final.content.endswith(STOPPED)
    turns = await history(h)
    assert len(turns) == 4 and turns[3].stopped
    assert turns[3].content == final.content.removesuffix(STOPPED)
    assert h.discord.count_429() == 0


async def test_a_stop_left_behind_is_put_right(h: BotHarness) -> None:
    # Discord refuses the reply's last edits: Stop stays under a finished reply.
    h.discord.fail_next("PATCH", rf"/channels/{h.channel}/messages/\d+$", 403, count=6)
    question = await h.say("hello")
    await h.settle()
    part = h.replies_to(question)[-1]
    assert button_ids(part) == [cid("stop", question, h.user)]
    record = await press(h, part, cid("stop", question, h.user))
    assert record.response_type == 7, "the press itself puts the final buttons back"
    assert button_ids(part) == [cid("regen", question, h.user)]
    await record.wait_until(lambda r: r.followups)
    assert "already finished" in record.all_content and record.followups[0].ephemeral
    assert record.payload["type"] == 3 and record.payload["message"]["id"] == str(part.id)
    assert "permissions" in record.payload["member"]
    assert record.callback is not None and record.callback.time - record.created < 3

    # After a restart nothing is known about it: the stale Stop is just taken away.
    h.discord.fail_next("PATCH", rf"/channels/{h.channel}/messages/\d+$", 403, count=6)
    second = await h.say("hello again")
    await h.settle()
    stale = h.replies_to(second)[-1]
    assert button_ids(stale) == [cid("stop", second, h.user)]
    h.discord.clear_faults()
    await h.stop()
    await h.start()
    record = await press(h, stale, cid("stop", second, h.user))
    assert record.response_type == 7 and button_ids(stale) == []
    assert record.callback is not None
    assert record.callback.data["allowed_mentions"] == {"parse": []}, "never a ping"
    turns = await history(h)
    assert len(turns) == 4 and not any(t.stopped for t in turns)
