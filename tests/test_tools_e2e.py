"""Tools over the wire: real discord.py against the Discord stand-in, the LLM stand-in
streaming tool calls, the real MCP test server over stdio, real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from bot.memory.redis_server import EmbeddedRedis
from tests.harness import MANAGE_CHANNELS, MARKER, BotHarness, running_bot
from tests.standin.llm_api import Behavior
from tests.test_tools import server_config, tool_messages


@pytest.fixture
async def h(redis_client: aioredis.Redis, redis_server: EmbeddedRedis) -> AsyncIterator[BotHarness]:
    overrides: dict[str, dict[str, Any]] = {
        "llm": {"tools": True},
        "mcp": {"servers": [server_config()]},
    }
    async with running_bot(redis_server.url, overrides=overrides) as harness:
        yield harness


async def test_tool_steps_are_shown_above_the_answer(h: BotHarness) -> None:
    h.llm.push(
        Behavior(
            tool_calls=[
                {"name": "slow_lookup", "arguments": {"query": "@everyone", "seconds": 1.2}},
                {"name": "nope", "arguments": {"q": "x"}},
            ],
            tool_chunk=3,
        ),
        Behavior(reply=lambda body: "Found: " + tool_messages(body)[0] + " @everyone"),
    )
    user_msg = await h.say("look it up")
    await h.settle()
    (reply,) = h.replies_to(user_msg)
    assert reply.content == (
        "-# 🔧 slow_lookup: `query=@everyone, seconds=1.2` ✓\n"
        "-# 🔧 nope: `x` ✗ unknown tool\n"
        "Found: No facts about '@everyone'. @everyone"
    )
    # While the tool ran, its line said so (and nothing pinged anyone).
    running = [e.content for e in reply.history if "seconds=1.2` …" in e.content]
    assert running and MARKER in running[0]
    assert all(am is not None and am["parse"] == [] for am in reply.allowed_mentions)
    # The stored answer has no step lines.
    history = await h.services.store.history(h.channel)  # type: ignore[union-attr]
    assert history[-1].content == "Found: No facts about '@everyone'. @everyone"


async def test_tools_command_lists_and_switches(h: BotHarness) -> None:
    listing = await h.slash("tools", user_id=h.user)
    assert listing.ephemeral
    assert "Tools are **on** here." in listing.content
    assert "• `lookup` (test): Look up a short fact" in listing.content
    denied = await h.slash("tools", {"mode": "off"}, user_id=h.user, permissions=0, strict=False)
    assert denied.ephemeral and "Manage Channels" in denied.content
    done = await h.slash("tools", {"mode": "off"}, permissions=MANAGE_CHANNELS, user_id=h.user)
    assert done.ephemeral and "now **off** in this channel" in done.content
    await h.ask("no tools please")
    assert "tools" not in h.llm.chat_requests[-1].body
    listing = await h.slash("tools", user_id=h.user)
    assert "Tools are **off** here." in listing.content
    # The server switch needs Manage Server, and the channel's own switch still wins.
    denied = await h.slash(
        "tools",
        {"mode": "on", "scope": "server"},
        permissions=MANAGE_CHANNELS,
        user_id=h.user,
        strict=False,
    )
    assert "Manage Server" in denied.content
    await h.slash("tools", {"mode": "on", "scope": "server"})
    await h.ask("still none")
    assert "tools" not in h.llm.chat_requests[-1].body
    await h.slash("tools", {"mode": "on"})
    await h.ask("tools again")
    assert [t["function"]["name"] for t in h.llm.chat_requests[-1].body["tools"]][:2] == [
        "lookup",
        "add",
    ]
