"""Tool-call parsing and the tool steps display (pure code), and the renderer's header."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import aiohttp
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.config import LLMConfig
from bot.delivery.renderer import ReplyRenderer
from bot.llm.client import LLMClient
from bot.llm.sse import ChatChunkParser, TextDelta, ToolCallDelta, parse_payload
from bot.llm.toolcalls import ToolCall, ToolCallAccumulator
from bot.tools.loop import ToolStep, shown_args, step_line, steps_header
from tests.standin.llm_api import Behavior, LLMStandIn
from tests.test_render import FakeDiscord, FakeSink, make_budget


def sse_bytes(behavior: Behavior) -> bytes:
    """The stand-in's tool-call chunks of `behavior` as an SSE byte stream."""
    events = []
    for part in behavior.tool_call_deltas():
        chunk = {"choices": [{"index": 0, "delta": {"tool_calls": [part]}}]}
        events.append(f"data: {json.dumps(chunk)}\n\n")
    finish = {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
    events.append(f"data: {json.dumps(finish)}\n\ndata: [DONE]\n\n")
    return "".join(events).encode()


CALLS = [
    {"name": "lookup", "arguments": {"query": 'caf\u00e9 \u2603 "quoted" {braces}'}, "id": "a1"},
    {"name": "add", "arguments": '{"a": 2, "b": 3}', "id": "b2"},
]


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=200))
def test_tool_calls_survive_any_split_of_the_stream(cuts: list[int]) -> None:
    data = sse_bytes(Behavior(tool_calls=CALLS, tool_chunk=3))
    parser, acc = ChatChunkParser(), ToolCallAccumulator()
    pos = 0
    for n in cuts * (len(data) // max(sum(cuts), 1) + 1):
        for ev in parser.feed(data[pos : pos + n]):
            if isinstance(ev, ToolCallDelta):
                acc.add(ev)
        pos += n
        if pos >= len(data):
            break
    for ev in parser.close():
        if isinstance(ev, ToolCallDelta):
            acc.add(ev)
    calls = acc.calls
    assert [(c.id, c.name) for c in calls] == [("a1", "lookup"), ("b2", "add")]
    assert calls[0].parsed_arguments() == CALLS[0]["arguments"]
    assert calls[1].parsed_arguments() == {"a": 2, "b": 3}


def test_whole_calls_at_one_index_and_odd_shapes() -> None:
    acc = ToolCallAccumulator()
    # Ollama style: every call whole, each at index 0; arguments as an object.
    chunk = {
        "choices": [
            {
                "delta": {
                    "content": "Let me check.",
                    "tool_calls": [
                        {"id": "x", "function": {"name": "lookup", "arguments": {"query": "q"}}}
                    ],
                }
            }
        ]
    }
    events = parse_payload(json.dumps(chunk))
    assert events[0] == TextDelta("Let me check.")
    second = {"index": 0, "id": "y", "function": {"name": "add", "arguments": "{}"}}
    events += parse_payload(json.dumps({"choices": [{"delta": {"tool_calls": [second]}}]}))
    events += parse_payload('{"choices": [{"delta": {"tool_calls": [null, 5, {"index": "x"}]}}]}')
    for ev in events:
        if isinstance(ev, ToolCallDelta):
            acc.add(ev)
    calls = acc.calls
    assert [(c.id, c.name, c.arguments) for c in calls[:2]] == [
        ("x", "lookup", '{"query": "q"}'),
        ("y", "add", "{}"),
    ]
    assert calls[2].id == "call_2"  # a call without an id gets one


def test_arguments_parsing_errors() -> None:
    assert ToolCall("1", "t", "").parsed_arguments() == {}
    for bad, reason in (('{"a": 1', "not valid JSON"), ("[1, 2]", "JSON object")):
        try:
            ToolCall("1", "t", bad).parsed_arguments()
        except ValueError as exc:
            assert reason in str(exc)
        else:
            raise AssertionError("no error for " + bad)


def test_step_lines_are_short_small_and_inert() -> None:
    assert shown_args('{"query": "discord rate limits"}') == "discord rate limits"
    assert shown_args('{"a": 2, "b": 3}') == "a=2, b=3"
    assert shown_args('{"q": "```\\n@everyone\\nbreak"}') == "''' @everyone break"
    assert len(shown_args(json.dumps({"q": "x" * 500}))) == 60
    assert shown_args('{"broken') == '{"broken'
    ok = ToolStep("search", "discord rate limits", "ok")
    assert step_line(ok) == "-# 🔧 search: `discord rate limits` ✓"
    assert step_line(ToolStep("hang", "", "error", "no answer within 2 s")) == (
        "-# 🔧 hang ✗ no answer within 2 s"
    )
    assert step_line(ToolStep("t", "x")).endswith("…")
    assert step_line(ToolStep("a`b\n# @everyone", "")) == "-# 🔧 a_b____everyone …"
    long = ToolStep("n" * 99, "x" * 99, "error", "e" * 999)
    many = steps_header([long] * 40)
    assert many.count("\n") == 9 and "31 earlier calls" in many and len(many) < 1900


async def test_renderer_header_sits_above_the_text_in_the_first_message() -> None:
    discord = FakeDiscord()
    sink = FakeSink(discord)
    r = ReplyRenderer(sink, make_budget(), edit_interval=0.05)
    r.set_header("-# 🔧 lookup: `q` …")
    await discord_wait(lambda: sink.shown() != [])
    assert sink.shown()[0].startswith("-# 🔧 lookup: `q` …")
    r.set_header("-# 🔧 lookup: `q` ✓")
    r.push("The answer " + "is long. " * 400)
    await r.finish()
    shown = sink.shown()
    assert shown[0].startswith("-# 🔧 lookup: `q` ✓\nThe answer")
    assert len(shown) >= 2 and all(len(m) <= 2000 for m in shown)
    assert r.text.startswith("The answer")  # the header is not part of the text
    assert not any("⏳" in m for m in shown)


async def discord_wait(cond: Callable[[], bool], timeout: float = 3.0) -> None:  # noqa: ASYNC109
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_client_sends_tools_and_reads_calls_cut_into_tiny_writes() -> None:
    spec = {"type": "function", "function": {"name": "lookup", "parameters": {}}}
    async with LLMStandIn() as llm, aiohttp.ClientSession() as session:
        client = LLMClient(session, LLMConfig(base_url=llm.base_url, max_retries=0))
        llm.push(Behavior(reply="Checking.", tool_calls=CALLS, tool_chunk=1, write_size=3))
        async with client.stream([{"role": "user", "content": "hi"}], tools=[spec]) as s:
            text = "".join([d async for d in s])
        assert text == "Checking." and s.finish_reason == "tool_calls"
        assert [(c.id, c.name) for c in s.tool_calls] == [("a1", "lookup"), ("b2", "add")]
        assert s.tool_calls[0].parsed_arguments() == CALLS[0]["arguments"]
        body = llm.chat_requests[-1].body
        assert body["tools"] == [spec] and "tool_choice" not in body
        llm.push(Behavior(reply="Done."))
        async with client.stream([], tools=[spec], tool_choice="none") as s:
            assert "".join([d async for d in s]) == "Done." and s.tool_calls == []
        assert llm.chat_requests[-1].body["tool_choice"] == "none"
        async with client.stream([{"role": "user", "content": "x"}]) as s:
            _ = [d async for d in s]
        assert "tools" not in llm.chat_requests[-1].body
