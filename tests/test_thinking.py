"""Thinking vs answer: every format servers send, and re-chunking properties."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bot.config import Config, _build, resolve_models
from bot.delivery.thinking import (
    ATTACHED,
    ThinkingStatus,
    parse_thinking_id,
    thinking_button,
    thoughts_message,
)
from bot.errors import ConfigError
from bot.llm.sse import ChatChunkParser, Finish, ReasoningDelta, TextDelta, Usage
from bot.llm.thinking import CLOSE_TAG, OPEN_TAG, StreamDelta, ThinkingSplitter


def event(delta: dict[str, Any], finish: str | None = None) -> str:
    obj = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "m1",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return "data: " + json.dumps(obj) + "\n\n"


def run(
    data: bytes, cuts: list[int] | None = None, *, starts_open: bool = False
) -> tuple[str, str, str | None]:
    """Bytes through the SSE parser and the splitter: (thinking, answer, finish_reason)."""
    parser, splitter = ChatChunkParser(), ThinkingSplitter(starts_open=starts_open)
    pieces, last = [], 0
    for cut in sorted({c % (len(data) + 1) for c in cuts or []}):
        pieces.append(data[last:cut])
        last = cut
    pieces.append(data[last:])
    finish = None
    events = [e for p in pieces for e in parser.feed(p)] + parser.close()
    for e in events:
        if isinstance(e, TextDelta):
            splitter.content(e.text)
        elif isinstance(e, ReasoningDelta):
            splitter.reasoning(e.text)
        elif isinstance(e, Finish):
            finish = e.reason
    splitter.close(finish)
    return splitter.thinking, splitter.answer, finish


# --- the exact shapes real servers send -------------------------------------------------

LLAMACPP_REASONING_CONTENT = (
    event({"role": "assistant", "content": None})
    + event({"reasoning_content": "Okay, the user"})
    + event({"reasoning_content": " says hi."})
    + event({"content": "Hello"})
    + event({"content": "!"})
    + event({}, "stop")
    + 'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":9,'
    '"completion_tokens_details":{"reasoning_tokens":6}}}\n\n' + "data: [DONE]\n\n"
)
OLLAMA_REASONING = (
    event({"role": "assistant", "content": "", "reasoning": "Okay, the user"})
    + event({"role": "assistant", "content": "", "reasoning": " says hi."})
    + event({"role": "assistant", "content": "Hello!"})
    + event({"role": "assistant", "content": ""}, "stop")
    + "data: [DONE]\n\n"
)
OPENROUTER_REASONING = (
    event(
        {
            "role": "assistant",
            "content": "",
            "reasoning": "Okay, the user",
            "reasoning_details": [
                {
                    "type": "reasoning.text",
                    "text": "Okay, the user",
                    "format": "unknown",
                    "index": 0,
                }
            ],
        }
    )
    + event(
        {
            "role": "assistant",
            "content": "",
            "reasoning": None,
            "reasoning_details": [
                {"type": "reasoning.text", "text": " says hi.", "format": "unknown", "index": 0}
            ],
        }
    )
    + event({"role": "assistant", "content": "Hello!"})
    + event({"role": "assistant", "content": ""}, "stop")
    + "data: [DONE]\n\n"
)
INLINE = (
    event({"role": "assistant", "content": None})
    + event({"content": "<thi"})
    + event({"content": "nk>"})
    + event({"content": "Okay, the user says hi."})
    + event({"content": "</th"})
    + event({"content": "ink>\n\n"})
    + event({"content": "Hello!"})
    + event({}, "stop")
    + "data: [DONE]\n\n"
)
CLOSING_ONLY = (
    event({"role": "assistant", "content": None})
    + event({"content": "Okay, the user says hi."})
    + event({"content": "\n</think>"})
    + event({"content": "\n\nHello!"})
    + event({}, "stop")
    + "data: [DONE]\n\n"
)


def test_reasoning_content_llamacpp() -> None:
    assert run(LLAMACPP_REASONING_CONTENT.encode()) == (
        "Okay, the user says hi.",
        "Hello!",
        "stop",
    )
    parser = ChatChunkParser()
    usage = [e for e in parser.feed(LLAMACPP_REASONING_CONTENT.encode()) if isinstance(e, Usage)]
    assert usage == [Usage(5, 9)]  # thinking tokens are part of completion_tokens


def test_reasoning_ollama_and_openrouter_details_counted_once() -> None:
    assert run(OLLAMA_REASONING.encode()) == ("Okay, the user says hi.", "Hello!", "stop")
    assert run(OPENROUTER_REASONING.encode()) == ("Okay, the user says hi.", "Hello!", "stop")


def test_inline_tags_split_across_chunks() -> None:
    assert run(INLINE.encode()) == ("Okay, the user says hi.", "Hello!", "stop")


def test_closing_tag_only_with_starts_open() -> None:
    assert run(CLOSING_ONLY.encode(), starts_open=True) == (
        "Okay, the user says hi.\n",
        "Hello!",
        "stop",
    )
    # Without it, a bare closing tag is dropped and the text is the answer.
    thinking, answer, _ = run(CLOSING_ONLY.encode())
    assert thinking == "" and CLOSE_TAG not in answer


def test_starts_open_model_that_did_not_think_answers_at_the_end() -> None:
    splitter = ThinkingSplitter(starts_open=True)
    got = splitter.content("Hello") + splitter.content(" there")
    assert all(d.thinking for d in got)  # shown to nobody, only as a status
    assert splitter.close("stop") == [StreamDelta("answer", "Hello there")]
    assert splitter.answer == "Hello there" and splitter.thinking == ""


def test_length_cut_in_the_middle_of_thinking() -> None:
    for fmt in ("inline", "reasoning_content", "starts_open"):
        if fmt == "inline":
            body = event({"content": "<think>Let me think about"}) + event({"content": " this"})
        elif fmt == "reasoning_content":
            body = event({"reasoning_content": "Let me think about"}) + event(
                {"reasoning_content": " this"}
            )
        else:
            body = event({"content": "Let me think about"}) + event({"content": " this"})
        data = (body + event({}, "length") + "data: [DONE]\n\n").encode()
        thinking, answer, finish = run(data, starts_open=fmt == "starts_open")
        assert (thinking, answer, finish) == ("Let me think about this", "", "length"), fmt


def test_plain_answers_stream_at_once_and_stray_tags_are_dropped() -> None:
    splitter = ThinkingSplitter()
    assert splitter.content("Hi") == [StreamDelta("answer", "Hi")]
    assert splitter.content(" there </think>ok<") == [StreamDelta("answer", " there ok")]
    assert splitter.content("b>") == [StreamDelta("answer", "<b>")]
    assert splitter.close() == []
    assert splitter.answer == "Hi there ok<b>"
    assert splitter.bare_close, "a closing tag with no thinking before it is noticed"


# --- re-chunking properties -------------------------------------------------------------

_ALPHABET = st.sampled_from([*list("ab <>/thinké\n💭"), "<think", "</thin", "nk>"])
_text = (
    st.lists(_ALPHABET, max_size=30)
    .map("".join)
    .filter(lambda t: OPEN_TAG not in t and CLOSE_TAG not in t)
)
_cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=25)


def _split_direct(content: str, cuts: list[int], starts_open: bool) -> tuple[str, str]:
    splitter = ThinkingSplitter(starts_open=starts_open)
    last = 0
    for cut in sorted({c % (len(content) + 1) for c in cuts}):
        splitter.content(content[last:cut])
        last = cut
    splitter.content(content[last:])
    splitter.close("stop")
    return splitter.thinking, splitter.answer


@settings(max_examples=400, deadline=None)
@given(_text, _text, _cuts)
def test_inline_any_rechunking_gives_the_same_split(
    thought: str, answer: str, cuts: list[int]
) -> None:
    content = f"{OPEN_TAG}{thought}{CLOSE_TAG}{answer}"
    assert _split_direct(content, cuts, False) == (thought, answer.lstrip())
    assert _split_direct(content, cuts, True) == (thought, answer.lstrip())


@settings(max_examples=300, deadline=None)
@given(_text, _text, _cuts)
def test_closing_only_any_rechunking_gives_the_same_split(
    thought: str, answer: str, cuts: list[int]
) -> None:
    content = f"{thought}{CLOSE_TAG}{answer}"
    assert _split_direct(content, cuts, True) == (thought.lstrip(), answer.lstrip())


@settings(max_examples=300, deadline=None)
@given(_text, _cuts)
def test_plain_answer_any_rechunking_is_the_answer(answer: str, cuts: list[int]) -> None:
    assert _split_direct(answer, cuts, False) == ("", answer.lstrip())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_text, min_size=1, max_size=5),
    st.lists(_text, min_size=1, max_size=5),
    st.sampled_from(["reasoning_content", "reasoning", "reasoning_details"]),
    _cuts,
)
def test_reasoning_fields_any_byte_chunking(
    thoughts: list[str], answers: list[str], field: str, cuts: list[int]
) -> None:
    joined = "".join(answers)
    assume(OPEN_TAG not in joined and CLOSE_TAG not in joined)  # pieces may join into a tag
    body = event({"role": "assistant", "content": None})
    for t in thoughts:
        if field == "reasoning_details":
            body += event(
                {"content": "", "reasoning_details": [{"type": "reasoning.text", "text": t}]}
            )
        else:
            body += event({"content": "", field: t})
    for a in answers:
        body += event({"content": a})
    body += event({}, "stop") + "data: [DONE]\n\n"
    data = body.encode()
    assert run(data, cuts) == ("".join(thoughts), "".join(answers).lstrip(), "stop")


def test_show_thinking_config_is_checked() -> None:
    assert _build(Config, {}, "").discord.show_thinking == "button"
    assert _build(Config, {"discord": {"show_thinking": "off"}}, "").discord.show_thinking == "off"
    with pytest.raises(ConfigError, match=r'discord.show_thinking = .*"button" or "off"'):
        _build(Config, {"discord": {"show_thinking": "always"}}, "")


def test_thinking_status_line_and_thoughts_message() -> None:
    shown: list[str | None] = []
    now = [100.0]
    status = ThinkingStatus(shown.append, clock=lambda: now[0])
    status("\n\n")  # an empty thinking block shows nothing
    assert shown == []
    status("Hmm")
    now[0] += 14.6
    status(" ok")
    assert shown == ["💭 Thinking…", "💭 Thinking… 14 s"]
    assert status.text == "\n\nHmm ok"
    button = thinking_button(123, "abcdef")
    assert parse_thinking_id(button.custom_id) == (123, "abcdef")
    assert len(button.custom_id) <= 100
    assert thoughts_message("  short  ") == ("short", None)
    assert thoughts_message("x" * 2001) == (ATTACHED, b"x" * 2001)


def test_thinking_starts_open_per_model() -> None:
    config = _build(
        Config,
        {
            "llm": {"thinking_starts_open": True},
            "models": {"r1": {"thinking_starts_open": True}, "plain": {}},
        },
        "",
    )
    specs = resolve_models(config)
    assert specs["r1"].llm.thinking_starts_open and not specs["plain"].llm.thinking_starts_open
