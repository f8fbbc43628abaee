"""Tools end to end below Discord: a real MCP server (tests/mcp_server.py, the official
SDK, over stdio), the loopback LLM stand-in streaming tool calls in many small chunks,
real Redis, and the bot's own services."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import sys
import time
import tomllib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis.asyncio as aioredis

from bot.config import (
    Config,
    HistoryConfig,
    LLMConfig,
    LoggingConfig,
    MCPConfig,
    MCPServerConfig,
    ModelConfig,
    PersonaConfig,
    RedisConfig,
    _build,
)
from bot.console import Console
from bot.errors import ConfigError, ToolStepsExhausted
from bot.memory.redis_server import EmbeddedRedis
from bot.models import Place, Speaker
from bot.ops.logs import secrets_from_config, setup_logging
from bot.services import Services, open_services
from bot.tools.loop import ToolStep
from bot.tools.mcp import ToolManager, ToolResult
from tests.standin.llm_api import Behavior, LLMStandIn

SERVER = str(Path(__file__).with_name("mcp_server.py"))
TOKEN = "tool-token-SECRET-4711"
HERE = Place(channel_id=100, channel_name="general", guild_id=1, guild_name="Guild")
THREAD = Place(channel_id=101, channel_name="thread", guild_id=1, guild_name="Guild", parent_id=100)
ANN = Speaker(1, "Ann")


def server_config(**kw: Any) -> MCPServerConfig:
    base = MCPServerConfig(
        name="test", command=sys.executable, args=[SERVER], env={"TOOL_TOKEN": TOKEN}, timeout_s=2
    )
    return replace(base, **kw)


def make_config(redis_url: str, llm_url: str, *, tools: bool = True, **mcp: Any) -> Config:
    return Config(
        llm=LLMConfig(
            base_url=llm_url,
            model="stand-in",
            max_tokens=200,
            context_tokens=8000,
            first_token_timeout=3,
            idle_timeout=2,
            total_timeout=20,
            max_retries=0,
            tools=tools,
        ),
        redis=RedisConfig(url=redis_url, key_prefix="test"),
        history=HistoryConfig(max_turns=50),
        persona=PersonaConfig(default="You are {bot_name}."),
        mcp=replace(MCPConfig(servers=[server_config()]), **mcp),
    )


@pytest.fixture
async def services(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis, llm: LLMStandIn
) -> AsyncIterator[Services]:
    async with open_services(make_config(redis_server.url, llm.base_url)) as built:
        yield built


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


def tool_messages(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "tool"]


def last_tool_result(body: dict[str, Any]) -> str:
    return "Answer: " + tool_messages(body)[-1]


async def ask(
    services: Services, text: str, place: Place = HERE
) -> tuple[str, list[list[ToolStep]]]:
    seen: list[list[ToolStep]] = []
    async with services.conversations.reply(place, ANN, text) as reply:
        reply.on_tool_steps = seen.append
        parts = [d async for d in reply]
    assert reply.outcome is not None
    assert "".join(parts) == reply.outcome.text
    return reply.outcome.text, seen


async def test_one_call_streamed_in_small_chunks(services: Services, llm: LLMStandIn) -> None:
    llm.push(
        Behavior(tool_calls=[call("lookup", query="capital of France")], tool_chunk=2),
        Behavior(reply=last_tool_result),
    )
    text, seen = await ask(services, "what is the capital of France?")
    assert text == "Answer: The capital of France is Paris."
    first, second = llm.chat_requests
    offered = [t["function"]["name"] for t in first.body["tools"]]
    assert {"lookup", "add", "multiply", "hang", "crash", "flood"} <= set(offered)
    assert "tool_choice" not in first.body
    assistant = second.body["messages"][-2]
    assert assistant["role"] == "assistant"
    (sent_call,) = assistant["tool_calls"]
    assert json.loads(sent_call["function"]["arguments"]) == {"query": "capital of France"}
    assert second.body["messages"][-1] == {
        "role": "tool",
        "tool_call_id": sent_call["id"],
        "content": "The capital of France is Paris.",
    }
    assert [(s.name, s.args, s.state) for s in seen[0]] == [
        ("lookup", "capital of France", "running")
    ]
    assert [(s.name, s.state) for s in seen[-1]] == [("lookup", "ok")]


async def test_usage_sums_every_model_call(
    services: Services, llm: LLMStandIn, redis_client: aioredis.Redis
) -> None:
    llm.push(Behavior(tool_calls=[call("add", a=2, b=3)]), Behavior(reply="It is 5."))
    await ask(services, "2+3?")
    first, second = llm.chat_requests
    usage = await redis_client.hgetall(services.store.keys.usage("user", ANN.id, _today()))
    assert int(usage["prompt"]) == first.prompt_tokens + second.prompt_tokens
    assert int(usage["requests"]) == 1  # one reply, two model calls
    assert second.prompt_tokens > first.prompt_tokens


async def test_two_calls_run_in_parallel(services: Services, llm: LLMStandIn) -> None:
    llm.push(
        Behavior(
            tool_calls=[
                call("slow_lookup", query="capital of france", seconds=1.0),
                call("slow_lookup", query="discord rate limits", seconds=1.0),
            ]
        ),
        Behavior(reply=lambda body: " | ".join(tool_messages(body))),
    )
    started = time.monotonic()
    text, seen = await ask(services, "two facts")
    assert time.monotonic() - started < 1.8, "the calls ran one after the other"
    assert text == (
        "The capital of France is Paris. | Discord allows 50 requests per second per bot, "
        "plus route limits."
    )
    assert [s.state for s in seen[-1]] == ["ok", "ok"]


async def test_a_chain_of_three_steps(services: Services, llm: LLMStandIn) -> None:
    llm.push(
        Behavior(tool_calls=[call("add", a=2, b=3)]),
        Behavior(reply="Now multiplying.", tool_calls=[call("multiply", a=5, b=4)]),
        Behavior(tool_calls=[call("add", a=20, b=1)]),
        Behavior(reply=lambda body: "Result: " + ",".join(tool_messages(body))),
    )
    text, seen = await ask(services, "(2+3)*4+1")
    assert text == "Now multiplying.\n\nResult: 5,20,21"
    assert len(llm.chat_requests) == 4
    assert [(s.name, s.state) for s in seen[-1]] == [
        ("add", "ok"),
        ("multiply", "ok"),
        ("add", "ok"),
    ]
    assert all("tool_choice" not in r.body for r in llm.chat_requests)
    # The assistant's words before a call go back with the call.
    third = llm.chat_requests[2].body["messages"]
    assert third[-2]["content"] == "Now multiplying."
    # The stand-in numbers its call ids per stream, as some servers do: ids stay unique.
    ids = [m["tool_call_id"] for m in llm.chat_requests[3].body["messages"] if m["role"] == "tool"]
    assert len(set(ids)) == 3


async def test_max_steps_then_the_model_must_answer(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis, llm: LLMStandIn
) -> None:
    config = make_config(redis_server.url, llm.base_url, max_steps=2)
    async with open_services(config) as services:
        llm.push(
            Behavior(tool_calls=[call("add", a=1, b=1)]),
            Behavior(tool_calls=[call("add", a=2, b=2)]),
            Behavior(reply="Enough tools: 4."),
        )
        text, _ = await ask(services, "count")
        assert text == "Enough tools: 4."
        assert [r.body.get("tool_choice") for r in llm.chat_requests] == [None, None, "none"]
        # A model that still only calls tools gets a clear error, and nothing is stored.
        llm.push(
            Behavior(tool_calls=[call("add", a=1, b=1)]),
            Behavior(tool_calls=[call("add", a=2, b=2)]),
            Behavior(tool_calls=[call("add", a=3, b=3)]),
        )
        with pytest.raises(ToolStepsExhausted):
            await ask(services, "again")
        assert len(await services.store.history(HERE.channel_id)) == 2


async def test_malformed_arguments_and_unknown_tool_become_error_results(
    services: Services, llm: LLMStandIn
) -> None:
    llm.push(
        Behavior(
            tool_calls=[
                {"name": "lookup", "arguments": '{"query": "capital'},
                {"name": "web_search", "arguments": '{"q": "x"}'},
                {"name": "lookup", "arguments": "[1]"},
            ]
        ),
        Behavior(reply="Sorry, the tools failed."),
    )
    text, seen = await ask(services, "break things")
    assert text == "Sorry, the tools failed."
    results = tool_messages(llm.chat_requests[1].body)
    assert "not valid JSON" in results[0]
    assert "no tool called 'web_search'" in results[1] and "lookup" in results[1]
    assert "JSON object" in results[2]
    echoed = llm.chat_requests[1].body["messages"][-4]["tool_calls"]
    assert echoed[0]["function"]["arguments"] == "{}"  # invalid JSON is not sent back
    assert [(s.state, s.note) for s in seen[-1]] == [
        ("error", "malformed arguments"),
        ("error", "unknown tool"),
        ("error", "malformed arguments"),
    ]
    metrics = services.metrics.render().decode()
    assert 'llmbot_tool_calls_total{outcome="error"} 3.0' in metrics
    assert 'llmbot_tool_calls_total{outcome="ok"} 0.0' in metrics


async def test_a_hanging_tool_times_out(services: Services, llm: LLMStandIn) -> None:
    llm.push(
        Behavior(tool_calls=[call("hang"), call("lookup", query="capital of france")]),
        Behavior(reply=lambda body: " | ".join(tool_messages(body))),
    )
    started = time.monotonic()
    text, seen = await ask(services, "hang please")
    assert 1.9 < time.monotonic() - started < 4
    assert text == "Error: no answer within 2 s | The capital of France is Paris."
    assert [s.state for s in seen[-1]] == ["error", "ok"]


async def test_a_crashing_server_is_restarted(services: Services, llm: LLMStandIn) -> None:
    llm.push(Behavior(tool_calls=[call("whoami")]), Behavior(reply=last_tool_result))
    before, _ = await ask(services, "pid?")
    llm.push(Behavior(tool_calls=[call("crash")]), Behavior(reply=last_tool_result))
    text, seen = await ask(services, "crash it")
    assert "stopped during the call" in text
    assert seen[-1][0].state == "error"
    # Restarted with backoff (about a second); a call meanwhile waits for it.
    llm.push(Behavior(tool_calls=[call("whoami")]), Behavior(reply=last_tool_result))
    after, _ = await ask(services, "pid now?")
    assert after.startswith("Answer: ") and after != before
    assert services.tools is not None
    assert services.tools.manager.servers["test"].restarts == 1


async def test_megabytes_of_output_are_capped(services: Services, llm: LLMStandIn) -> None:
    llm.push(Behavior(tool_calls=[call("flood", megabytes=3)]), Behavior(reply="Big."))
    _, seen = await ask(services, "flood")
    assert [(s.state, s.note) for s in seen[-1]] == [("ok", "result cut")]
    (result,) = tool_messages(llm.chat_requests[1].body)
    assert len(result) < 8100
    assert result.endswith("[… cut: the result had 3,145,728 characters]")


async def test_a_model_without_tools_gets_none(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis, llm: LLMStandIn
) -> None:
    async with open_services(make_config(redis_server.url, llm.base_url, tools=False)) as services:
        text, seen = await ask(services, "hello")
        assert text == "Echo: Ann: hello" and seen == []
        assert "tools" not in llm.chat_requests[-1].body


async def test_switching_tools_off_and_on_per_channel_and_server(
    services: Services, llm: LLMStandIn
) -> None:
    tools = services.tools
    assert tools is not None
    await tools.switch("channel", HERE.channel_id, False)
    await ask(services, "no tools here")
    assert "tools" not in llm.chat_requests[-1].body
    # A thread follows its parent channel; the channel's switch beats the server's.
    await ask(services, "nor in the thread", THREAD)
    assert "tools" not in llm.chat_requests[-1].body
    await tools.switch("server", 1, True)
    await ask(services, "still off: the channel says so")
    assert "tools" not in llm.chat_requests[-1].body
    await tools.switch("channel", HERE.channel_id, True)
    await ask(services, "tools again")
    assert "tools" in llm.chat_requests[-1].body
    await tools.switch("server", 1, False)
    other = Place(channel_id=300, channel_name="x", guild_id=1, guild_name="Guild")
    await ask(services, "server off", other)
    assert "tools" not in llm.chat_requests[-1].body


async def test_history_keeps_the_answer_and_a_note_not_the_results(
    services: Services, llm: LLMStandIn
) -> None:
    llm.push(
        Behavior(tool_calls=[call("lookup", query="capital of france"), call("crash_test_x")]),
        Behavior(reply="Paris."),
    )
    await ask(services, "capital?")
    user, answer = await services.store.history(HERE.channel_id)
    assert user.content == "capital?" and answer.content == "Paris."
    assert answer.tool_note == "[tools used: lookup(capital of france); crash_test_x() failed]"
    assert "Paris" not in answer.tool_note
    await ask(services, "and next?")
    sent = llm.chat_requests[-1].body["messages"]
    assert sent[2] == {
        "role": "assistant",
        "content": "[tools used: lookup(capital of france); crash_test_x() failed]\n\nParis.",
    }
    assert "tools" in llm.chat_requests[-1].body and not any(m["role"] == "tool" for m in sent)


async def test_results_kept_for_the_next_turn_when_configured(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis, llm: LLMStandIn
) -> None:
    config = make_config(redis_server.url, llm.base_url, keep_results=True)
    async with open_services(config) as services:
        llm.push(
            Behavior(tool_calls=[call("lookup", query="capital of france")]),
            Behavior(reply="Paris."),
        )
        await ask(services, "capital?")
        _, answer = await services.store.history(HERE.channel_id)
        assert answer.tool_note == (
            "[tool lookup(capital of france) returned: The capital of France is Paris.]"
        )


async def test_server_secrets_never_reach_the_logs(
    redis_client: aioredis.Redis,
    redis_server: EmbeddedRedis,
    llm: LLMStandIn,
    restore_logging: None,
) -> None:
    config = make_config(redis_server.url, llm.base_url)
    out = io.StringIO()
    setup_logging(LoggingConfig(level="DEBUG"), secrets_from_config(config), stream=out)
    assert TOKEN not in repr(config)
    async with open_services(config) as services:
        llm.push(Behavior(tool_calls=[call("lookup", query="x")]), Behavior(reply="ok"))
        await ask(services, "hi")
    logging.getLogger().handlers[-1].flush()
    text = out.getvalue()
    assert "test server starting, TOOL_TOKEN=***" in text  # the server's stderr, redacted
    assert TOKEN not in text


async def test_manager_filters_tools_and_stops_the_process() -> None:
    manager = ToolManager(
        MCPConfig(
            servers=[
                server_config(allowed_tools=["lookup", "whoami"]),
                server_config(name="second", allowed_tools=["lookup"]),
                server_config(name="broken", command="/nonexistent/server", args=[]),
            ]
        )
    )
    await manager.start()
    try:
        names = {(t.name, t.server, t.remote) for t in manager.tools()}
        assert names == {
            ("lookup", "test", "lookup"),
            ("whoami", "test", "whoami"),
            ("second_lookup", "second", "lookup"),
        }
        assert manager.servers["broken"].state != "ready"
        whoami = next(t for t in manager.tools() if t.name == "whoami")
        pid = int((await manager.call(whoami, {}, 100)).text)
        assert psutil.pid_exists(pid)
    finally:
        await manager.stop()
    await asyncio.sleep(0.1)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert all(s.state == "stopped" for s in manager.servers.values())


def _today() -> str:
    return time.strftime("%Y%m%d", time.gmtime())


async def test_a_server_that_dies_between_calls_is_noticed_and_restarted() -> None:
    manager = ToolManager(MCPConfig(servers=[server_config()]), ping_interval=0.3)
    await manager.start()
    try:
        tools = {t.name: t for t in manager.tools()}
        first = (await manager.call(tools["whoami"], {}, 100)).text
        assert (await manager.call(tools["exit_soon"], {}, 100)).text == "bye"
        server = manager.servers["test"]
        async with asyncio.timeout(10):
            while server.restarts == 0 or server.state != "ready":  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        second = (await manager.call(tools["whoami"], {}, 100)).text
        assert second != first
    finally:
        await manager.stop()


async def test_a_server_over_streamable_http() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        sys.executable, SERVER, "--http", str(port), stderr=asyncio.subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}/mcp"
    manager = ToolManager(
        MCPConfig(servers=[MCPServerConfig(name="web", url=url, headers={"X-Key": "k" * 8})])
    )
    try:
        await manager.start(wait=1)
        server = manager.servers["web"]
        assert await server.wait_ready(15), "the HTTP server never became ready"
        lookup = next(t for t in manager.tools() if t.name == "lookup")
        result = await manager.call(lookup, {"query": "capital of France"}, 100)
        assert result == ToolResult("The capital of France is Paris.", ok=True)
    finally:
        await manager.stop()
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)


def test_config_rules_for_tool_servers() -> None:
    def load(text: str) -> Config:
        data = tomllib.loads(text)
        return _build(Config, data, "")

    config = load(
        '[llm]\ntools = true\n[mcp]\nmax_steps = 3\n[[mcp.servers]]\nname = "search"\n'
        'command = "npx"\nargs = ["-y", "srv"]\nenv = { API_KEY = "sekrit-key" }\n'
        '[[mcp.servers]]\nname = "web"\nurl = "https://example.org/mcp"\n'
        'headers = { Authorization = "Bearer abcdef" }\nallowed_tools = ["fetch"]\n'
    )
    assert config.llm.tools and config.mcp.max_steps == 3
    assert [s.name for s in config.mcp.servers] == ["search", "web"]
    assert "sekrit" not in repr(config) and "abcdef" not in repr(config)
    assert {"sekrit-key", "Bearer abcdef"} <= set(secrets_from_config(config))
    with_key = load('[[mcp.servers]]\nname = "k"\nurl = "https://h/mcp?api_key=k%3D123&x=1"\n')
    assert {"k%3D123", "k=123"} == set(secrets_from_config(with_key))
    assert load("").mcp.servers == [] and not load("").llm.tools
    for text, message in (
        ('[[mcp.servers]]\nname = "x"\n', "needs exactly one of `command` (stdio) or `url`"),
        ('[[mcp.servers]]\nname = "x"\ncommand = "a"\nurl = "http://b"\n', "exactly one"),
        ('[[mcp.servers]]\nname = "a b"\ncommand = "a"\n', "mcp.servers[0].name = 'a b'"),
        ('[[mcp.servers]]\nname = "x"\nurl = "ftp://b"\n', "mcp.servers[0].url = 'ftp://b'"),
        ('[[mcp.servers]]\nname = "x"\ncommand = "a"\ntimeout_s = 0\n', "timeout_s = 0"),
        ("[mcp]\nmax_steps = 0\n", "mcp.max_steps = 0: must be a number from 1 to 50"),
        (
            '[[mcp.servers]]\nname = "x"\ncommand = "a"\n[[mcp.servers]]\nname = "x"\nurl = "http://b"\n',
            "the name 'x' is used twice",
        ),
    ):
        with pytest.raises(ConfigError) as err:
            load(text)
        assert message in str(err.value) and "\n" not in str(err.value)


async def test_console_shows_the_tool_steps(services: Services, llm: LLMStandIn) -> None:
    out = io.StringIO()
    console = Console(services, "desk", out=out, user="admin")
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    for line in ["capital?", None]:
        lines.put_nowait(line)
    llm.push(
        Behavior(tool_calls=[call("lookup", query="capital of france"), call("nope")]),
        Behavior(reply="Paris."),
    )
    await console.run(lines)
    assert "bot> [🔧 lookup: `capital of france` ✓] [🔧 nope ✗ unknown tool] Paris." in (
        out.getvalue()
    )


async def test_a_long_history_leaves_room_for_tool_results(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis, llm: LLMStandIn
) -> None:
    config = make_config(redis_server.url, llm.base_url)
    config = replace(
        config,
        llm=replace(config.llm, context_tokens=3000),
        # Old turns are dropped, not summarised: the summary has its own budget.
        history=replace(config.history, summarize=False),
    )
    async with open_services(config) as services:
        llm.default = Behavior(reply="ok " * 300)
        for i in range(8):
            await ask(services, f"turn {i} " + "word " * 300)
        llm.push(Behavior(tool_calls=[call("flood", megabytes=1)]), Behavior(reply="Big."))
        await ask(services, "flood now")
        first, second = llm.chat_requests[-2:]
        (result,) = tool_messages(second.body)
        # History was trimmed to leave the tools room: a useful result, and a prompt
        # that still fits the window with the reply reserve.
        assert len(result) > 1500
        assert second.prompt_tokens < 3000 - 200
        assert len(first.body["messages"]) < 17


async def test_a_changed_tool_list_is_fetched_again() -> None:
    manager = ToolManager(MCPConfig(servers=[server_config()]))
    await manager.start()
    try:
        tools = {t.name: t for t in manager.tools()}
        assert "shrink" not in tools
        assert (await manager.call(tools["grow"], {}, 100)).text == "grown"
        async with asyncio.timeout(5):
            while "shrink" not in {t.name for t in manager.tools()}:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        shrink = next(t for t in manager.tools() if t.name == "shrink")
        assert (await manager.call(shrink, {}, 100)).text == "shrunk"
    finally:
        await manager.stop()


async def test_tools_follow_the_models_own_flag(
    redis_client: aioredis.Redis, redis_server: EmbeddedRedis, llm: LLMStandIn
) -> None:
    config = make_config(redis_server.url, llm.base_url, tools=False)
    models = {
        "smart": ModelConfig(model="smart-1", context_tokens=8000, max_tokens=200, tools=True),
        "plain": ModelConfig(model="plain-1", context_tokens=8000, max_tokens=200),
    }
    async with open_services(replace(config, models=models)) as services:
        assert await services.conversations.model_offers_tools(HERE)
        await ask(services, "hi")
        assert llm.chat_requests[-1].body["model"] == "smart-1"
        assert "tools" in llm.chat_requests[-1].body
        await services.conversations.choices.set("channel", HERE.channel_id, "plain")
        assert not await services.conversations.model_offers_tools(HERE)
        await ask(services, "hi again")
        assert llm.chat_requests[-1].body["model"] == "plain-1"
        assert "tools" not in llm.chat_requests[-1].body
