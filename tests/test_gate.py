"""When the bot answers, and per-user flood control."""

from __future__ import annotations

from dataclasses import replace

from bot.config import DiscordConfig
from bot.delivery.gate import Cooldown, MessageFacts, Verdict, decide, needs_chat_mode

BASE = MessageFacts(author_is_bot=False, is_dm=False, guild_id=1, channel_id=10, mentions_bot=True)
CONFIG = DiscordConfig()


def test_mention_reply_and_chat_mode_trigger_an_answer() -> None:
    assert decide(BASE, CONFIG, chat_mode=False) is Verdict.ANSWER
    quiet = replace(BASE, mentions_bot=False)
    assert decide(quiet, CONFIG, chat_mode=False) is Verdict.IGNORE
    assert decide(quiet, CONFIG, chat_mode=True) is Verdict.ANSWER
    assert decide(replace(quiet, replies_to_bot=True), CONFIG, chat_mode=False) is Verdict.ANSWER
    off = replace(CONFIG, reply_on_reply=False)
    assert decide(replace(quiet, replies_to_bot=True), off, chat_mode=False) is Verdict.IGNORE
    assert needs_chat_mode(quiet, CONFIG) and not needs_chat_mode(BASE, CONFIG)


def test_never_answers_bots() -> None:
    assert decide(replace(BASE, author_is_bot=True), CONFIG, chat_mode=True) is Verdict.IGNORE


def test_dms_only_when_allowed() -> None:
    dm = MessageFacts(author_is_bot=False, is_dm=True, channel_id=5)
    assert decide(dm, CONFIG, chat_mode=False) is Verdict.IGNORE
    assert decide(dm, replace(CONFIG, allow_dms=True), chat_mode=False) is Verdict.ANSWER


def test_attachment_only_gets_a_note() -> None:
    assert decide(replace(BASE, has_text=False), CONFIG, chat_mode=False) is Verdict.NO_TEXT


def test_allow_and_deny_lists_by_id() -> None:
    in_thread = replace(BASE, channel_id=11, parent_id=10, category_id=3, role_ids=frozenset({7}))
    cases = [
        (replace(CONFIG, denied_guilds=[1]), Verdict.IGNORE),
        (replace(CONFIG, allowed_guilds=[2]), Verdict.IGNORE),
        (replace(CONFIG, allowed_guilds=[1]), Verdict.ANSWER),
        (replace(CONFIG, denied_channels=[10]), Verdict.IGNORE),  # the thread's parent
        (replace(CONFIG, denied_channels=[3]), Verdict.IGNORE),  # the category
        (replace(CONFIG, allowed_channels=[3]), Verdict.ANSWER),
        (replace(CONFIG, allowed_channels=[99]), Verdict.IGNORE),
        (replace(CONFIG, allowed_roles=[7]), Verdict.ANSWER),
        (replace(CONFIG, allowed_roles=[8]), Verdict.IGNORE),
        (replace(CONFIG, denied_roles=[7]), Verdict.IGNORE),
        (replace(CONFIG, allowed_channels=[10], denied_channels=[11]), Verdict.IGNORE),
    ]
    for config, expected in cases:
        assert decide(in_thread, config, chat_mode=False) is expected, config


def test_cooldown_bounds_each_user_separately() -> None:
    now = [0.0]
    cooldown = Cooldown(burst=3, per_s=10, clock=lambda: now[0])
    results = [cooldown.hit(1) for _ in range(20)]
    assert results[:3] == [None, None, None]
    assert all(r is not None and 0 < r <= 10 for r in results[3:])
    assert cooldown.hit(2) is None, "other users are unaffected"
    assert cooldown.should_warn(1, 10) and not cooldown.should_warn(1, 10)
    now[0] = 10.5
    assert cooldown.hit(1) is None
