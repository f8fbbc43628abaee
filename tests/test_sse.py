"""SSE framing and OpenAI chunk parsing: one test per server quirk, plus chunking properties."""

from __future__ import annotations

import json
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.llm.sse import (
    ChatChunkParser,
    ChatEvent,
    Done,
    Finish,
    Malformed,
    ModelName,
    SSEEvent,
    SSEParser,
    StreamError,
    TextDelta,
    Usage,
    parse_payload,
)


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> str:
    obj: dict[str, Any] = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": "m1",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
    }
    obj.update(extra)
    return "data: " + json.dumps(obj) + "\n\n"


def feed_all(data: bytes, step: int | None = None) -> list[ChatEvent]:
    parser = ChatChunkParser()
    out: list[ChatEvent] = []
    if step is None:
        out += parser.feed(data)
    else:
        for i in range(0, len(data), step):
            out += parser.feed(data[i : i + step])
    return out + parser.close()


def texts(events: list[ChatEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


OPENAI_STREAM = (
    chunk({"role": "assistant", "content": None})
    + chunk({"content": "Hel"})
    + chunk({"content": "lo"})
    + chunk({}, "stop")
    + 'data: {"id":"c1","model":"m1","choices":[],"usage":{"prompt_tokens":9,'
    '"completion_tokens":2,"total_tokens":11,"prompt_tokens_details":{"cached_tokens":3}}}\n\n'
    + "data: [DONE]\n\n"
)


# --- SSE framing ------------------------------------------------------------------------


def test_common_openai_shape() -> None:
    events = feed_all(OPENAI_STREAM.encode())
    assert events == [
        ModelName("m1"),
        TextDelta("Hel"),
        TextDelta("lo"),
        Finish("stop"),
        Usage(9, 2),
        Done(),
    ]


def test_every_single_byte_chunking_gives_the_same_events() -> None:
    data = OPENAI_STREAM.encode()
    assert feed_all(data, 1) == feed_all(data)


def test_data_without_space_and_crlf_and_cr_line_ends() -> None:
    for eol in ("\n", "\r\n", "\r"):
        raw = (OPENAI_STREAM.replace("data: ", "data:")).replace("\n", eol).encode()
        events = feed_all(raw, 3)
        assert texts(events) == "Hello", eol
        assert Finish("stop") in events and events[-1] == Done()


def test_crlf_split_between_cr_and_lf_is_one_line_end() -> None:
    parser = SSEParser()
    # If the LF after a chunk-final CR were taken as a second line end, "x" would be
    # dispatched alone (an empty line) instead of joining with "y".
    assert parser.feed(b"data: x\r") == []
    assert parser.feed(b"\ndata: y\r") == []
    assert parser.feed(b"\n") == []
    assert parser.feed(b"\r\n") == [SSEEvent("x\ny")]


def test_comments_and_unknown_fields_are_ignored() -> None:
    raw = (
        ": ping - 2025-01-01 00:00:00.000000+00:00\n\n"
        + chunk({"content": "a"})
        + ":\n"
        + "retry: 1000\nid: 7\nfoo: bar\n"
        + chunk({"content": "b"})
        + ": ping - 2025-01-01 00:00:15.000000+00:00\r\n\r\n"
        + "data: [DONE]\n\n"
    )
    events = feed_all(raw.encode(), 5)
    assert texts(events) == "ab"
    assert events[-1] == Done()


def test_multi_line_data_fields_join_with_newline() -> None:
    parser = SSEParser()
    events = parser.feed(b'data: {"choices":\ndata: [{"delta":{"content":"x"}}]}\n\n')
    assert events == [SSEEvent('{"choices":\n[{"delta":{"content":"x"}}]}')]
    assert parse_payload(events[0].data) == [TextDelta("x")]


def test_sse_event_type_and_id_and_empty_data() -> None:
    parser = SSEParser()
    assert parser.feed(b"event: ping\nid: 3\ndata\n\n") == [SSEEvent("", "ping", "3")]
    assert parser.feed(b"data: a\n\n") == [SSEEvent("a", "message", "3")]
    assert parser.feed(b"\n\n\n") == []  # blank lines with no data dispatch nothing


def test_multibyte_utf8_split_anywhere() -> None:
    text = "héllo 👋🏽 世界 — ok"
    raw = (chunk({"content": text}) + "data: [DONE]\n\n").encode()
    for step in (1, 2, 3, 5):
        assert texts(feed_all(raw, step)) == text


def test_line_separator_inside_json_is_not_a_line_end() -> None:
    text = "a\u2028b\u2029c\x85d\x0ce"  # str.splitlines would split on each of these
    raw = "data: " + json.dumps({"choices": [{"delta": {"content": text}}]}, ensure_ascii=False)
    assert texts(feed_all((raw + "\n\n").encode(), 2)) == text


def test_bom_at_start_is_dropped() -> None:
    raw = b"\xef\xbb" + b"\xbf" + chunk({"content": "x"}).encode()
    assert texts(feed_all(raw, 1)) == "x"


def test_close_flushes_final_event_without_blank_line() -> None:
    assert feed_all(b"data: [DONE]") == [Done()]
    assert feed_all(b"data: [DONE]\n") == [Done()]
    assert feed_all(b"data: [DONE]\r") == [Done()]


def test_giant_line_in_tiny_chunks_is_linear() -> None:
    text = "x" * 100_000
    raw = chunk({"content": text}).encode()
    start = time.perf_counter()
    events = feed_all(raw, 7)
    elapsed = time.perf_counter() - start
    assert texts(events) == text
    assert elapsed < 2.0  # quadratic re-joining would take far longer


# --- OpenAI chunk layer -----------------------------------------------------------------


def test_null_and_empty_content_are_skipped() -> None:
    raw = chunk({"role": "assistant", "content": None}) + chunk({"content": ""}) + chunk({})
    assert [e for e in feed_all(raw.encode()) if not isinstance(e, ModelName)] == []


def test_empty_choices_never_indexed() -> None:
    assert parse_payload('{"choices": []}') == []
    assert parse_payload('{"choices": null, "usage": null}') == []
    assert parse_payload("{}") == []
    assert parse_payload('{"choices": [null, 3, "x"]}') == []


def test_finish_reasons() -> None:
    for reason in ("stop", "length", "content_filter", "tool_calls"):
        assert parse_payload(chunk({}, reason)[6:]) == [ModelName("m1"), Finish(reason)]


def test_content_and_finish_in_one_chunk_keep_order() -> None:
    assert parse_payload(chunk({"content": "end"}, "stop")[6:])[1:] == [
        TextDelta("end"),
        Finish("stop"),
    ]


def test_usage_with_extra_fields_and_timings() -> None:
    payload = json.dumps(
        {
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
            "timings": {"prompt_n": 5, "predicted_per_second": 31.4},
        }
    )
    assert parse_payload(payload) == [Finish("stop"), Usage(5, 7)]
    assert Usage(5, 7).total_tokens == 12
    # Incomplete or non-numeric usage is ignored, not guessed.
    assert parse_payload('{"usage": {"prompt_tokens": 5}}') == []
    assert parse_payload('{"usage": {"prompt_tokens": true, "completion_tokens": 1}}') == []


def test_other_choice_indexes_are_ignored() -> None:
    payload = '{"choices": [{"index": 1, "delta": {"content": "no"}}, {"delta": {"content": "y"}}]}'
    assert parse_payload(payload) == [TextDelta("y")]


def test_message_and_legacy_text_shapes() -> None:
    full = (
        '{"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},'
        '"finish_reason":"stop"}]}'
    )
    assert parse_payload(full) == [TextDelta("hi"), Finish("stop")]
    assert parse_payload('{"choices":[{"text":"old"}]}') == [TextDelta("old")]


def test_model_is_reported_once_per_change() -> None:
    raw = chunk({"content": "a"}) + chunk({"content": "b"}) + chunk({}, "stop", model="m2")
    events = feed_all(raw.encode())
    assert [e for e in events if isinstance(e, ModelName)] == [ModelName("m1"), ModelName("m2")]


def test_malformed_json_is_a_protocol_event() -> None:
    [bad] = parse_payload('{"choices": [{"delta": {"content": "x')
    assert isinstance(bad, Malformed) and "invalid JSON" in bad.detail
    [not_obj] = parse_payload("[1, 2]")
    assert isinstance(not_obj, Malformed)
    # The parser keeps going after a bad line.
    raw = 'data: {"choices": [\n\n' + chunk({"content": "ok"})
    events = feed_all(raw.encode())
    assert isinstance(events[0], Malformed) and texts(events) == "ok"


def test_error_object_in_stream() -> None:
    payload = '{"error": {"message": "boom", "type": "server_error", "code": 500}}'
    assert parse_payload(payload) == [StreamError("boom", "500", "server_error")]
    assert parse_payload('{"error": "plain words"}') == [StreamError("plain words")]
    assert parse_payload('{"message": "x"}', event="error") == [StreamError("x")]
    assert parse_payload('{"error": null, "choices": []}') == []


def test_done_variants() -> None:
    assert parse_payload("[DONE]") == [Done()]
    assert parse_payload(" [DONE] ") == [Done()]
    assert parse_payload("") == []


# --- properties ---------------------------------------------------------------------------

_TEXT = st.lists(
    st.one_of(
        st.characters(codec="utf-8"),  # surrogates cannot be encoded, so never drawn
        st.sampled_from(["\n", "\r", "\r\n", "\u2028", "👋🏽", "é", '"', "\\", " ", "data: "]),
    ),
    max_size=12,
).map("".join)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[str], Usage | None, str]:
    deltas = draw(st.lists(_TEXT, max_size=12))
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    sep = draw(st.sampled_from(["data: ", "data:"]))
    ascii_json = draw(st.booleans())
    usage = draw(
        st.one_of(st.none(), st.builds(Usage, st.integers(0, 10**6), st.integers(0, 10**6)))
    )
    finish = draw(st.sampled_from(["stop", "length", "content_filter"]))

    def event(obj: Any) -> str:
        comment = f": ping - {draw(st.integers(0, 99))}{eol}{eol}" if draw(st.booleans()) else ""
        return comment + sep + json.dumps(obj, ensure_ascii=ascii_json) + eol + eol

    parts = [
        event(
            {
                "model": "m",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}],
            }
        )
    ]
    parts += [event({"choices": [{"index": 0, "delta": {"content": d}}]}) for d in deltas]
    parts.append(event({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}))
    if usage is not None:
        parts.append(
            event(
                {
                    "choices": [],
                    "usage": {
                        "prompt_tokens": usage.prompt_tokens,
                        "completion_tokens": usage.completion_tokens,
                        "prompt_tokens_details": {"cached_tokens": 0},
                    },
                }
            )
        )
    parts.append(f"{sep}[DONE]{eol}{eol}")
    return "".join(parts).encode(), deltas, usage, finish


def _rechunk(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in [*points, len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.lists(st.integers(min_value=0), max_size=40))
def test_any_chunking_parses_like_the_whole_stream(
    stream: tuple[bytes, list[str], Usage | None, str], cuts: list[int]
) -> None:
    data, deltas, usage, finish = stream
    whole = feed_all(data)
    parser = ChatChunkParser()
    chunked: list[ChatEvent] = []
    for piece in _rechunk(data, cuts):
        chunked += parser.feed(piece)
    chunked += parser.close()
    assert chunked == whole
    assert texts(whole) == "".join(deltas)
    assert [e for e in whole if isinstance(e, TextDelta)] == [TextDelta(d) for d in deltas if d]
    assert [e for e in whole if isinstance(e, Usage)] == ([usage] if usage else [])
    assert [e for e in whole if isinstance(e, Finish)] == [Finish(finish)]
    assert whole[-1] == Done()
    assert not any(isinstance(e, Malformed | StreamError) for e in whole)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(min_value=0), max_size=30))
def test_arbitrary_bytes_never_raise_and_ignore_chunking(data: bytes, cuts: list[int]) -> None:
    whole = SSEParser()
    expected = whole.feed(data) + whole.close()
    parser = SSEParser()
    got: list[SSEEvent] = []
    for piece in _rechunk(data, cuts):
        got += parser.feed(piece)
    assert got + parser.close() == expected
    for ev in expected:
        parse_payload(ev.data, ev.event)  # never raises
