"""The streaming LLM client against the loopback stand-in server, over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.config import LLMConfig
from bot.errors import (
    LLMAuthError,
    LLMBadRequest,
    LLMContextTooLong,
    LLMCutOff,
    LLMError,
    LLMModelNotFound,
    LLMProtocolError,
    LLMRateLimited,
    LLMServerError,
    LLMTimeout,
    LLMUnreachable,
    user_message,
)
from bot.llm.client import ChatStream, LLMClient, Usage, classify_http_error, parse_retry_after
from tests.standin.llm_api import (
    CONTEXT_LENGTH_LLAMACPP,
    CONTEXT_LENGTH_OPENAI,
    Behavior,
    LLMStandIn,
)

KEY = "sk-test-SECRET-0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent
MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a bot."},
    {"role": "user", "content": "Hello, world!"},
]
# The stand-in's own count: words+punctuation ("You are a bot ." = 5, "Hello , world !" = 4),
# plus 4 per message, plus 3.
EXPECTED_PROMPT_TOKENS = 5 + 4 + 2 * 4 + 3


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def make_client(session: aiohttp.ClientSession, base_url: str, **overrides: Any) -> LLMClient:
    values: dict[str, Any] = {
        "base_url": base_url,
        "api_key": KEY,
        "model": "test-model",
        "temperature": 0.3,
        "max_tokens": 200,
        "connect_timeout": 1.0,
        "first_token_timeout": 2.0,
        "idle_timeout": 2.0,
        "total_timeout": 5.0,
        "max_retries": 2,
    }
    values.update(overrides)
    return LLMClient(session, LLMConfig(**values), backoff_base=0.05, backoff_cap=0.2)


async def run(client: LLMClient, messages: list[dict[str, Any]] | None = None) -> ChatStream:
    """Stream to the end; the ChatStream is attached to any exception as `.stream`."""
    s = client.stream(messages or MESSAGES)
    try:
        async with s:
            deltas = [d async for d in s]
    except LLMError as exc:
        exc.stream = s  # type: ignore[attr-defined]
        raise
    assert all(isinstance(d, str) and d for d in deltas)
    assert "".join(deltas) == s.text
    return s


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


# --- happy paths ---------------------------------------------------------------------------


async def test_full_reply_with_usage(llm: LLMStandIn, session: aiohttp.ClientSession) -> None:
    client = make_client(session, llm.base_url)
    s = client.stream(MESSAGES)
    async with s:
        deltas = [d async for d in s]
    # Tokens that arrive (and are read) together come up as one delta.
    assert all(deltas) and "".join(deltas) == "Echo: Hello, world!"
    assert s.text == "Echo: Hello, world!"
    assert s.finish_reason == "stop"
    assert s.usage == Usage(prompt_tokens=EXPECTED_PROMPT_TOKENS, completion_tokens=3)
    assert s.model == "test-model"
    assert s.attempts == 1 and s.first_token_s is not None and s.duration_s is not None

    [req] = llm.requests
    assert req.path == "/v1/chat/completions"
    assert req.body == {
        "model": "test-model",
        "messages": MESSAGES,
        "temperature": 0.3,
        "max_tokens": 200,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert req.headers["Authorization"] == f"Bearer {KEY}"
    assert [c.text for c in req.chunks] == ["Echo:", "Echo: Hello,", "Echo: Hello, world!"]
    assert all(a.t <= b.t for a, b in zip(req.chunks, req.chunks[1:], strict=False))


async def test_server_without_usage(llm: LLMStandIn, session: aiohttp.ClientSession) -> None:
    llm.push(Behavior(reply="no usage here", usage=False))
    s = await run(make_client(session, llm.base_url))
    assert s.text == "no usage here" and s.finish_reason == "stop" and s.usage is None


async def test_wire_format_variants(llm: LLMStandIn, session: aiohttp.ClientSession) -> None:
    pieces = ["héllo", " 👋🏽", "\nline two\r\n", " 世界", " \u2028 done"]
    variants = [
        Behavior(chunks=pieces, write_size=1),
        Behavior(chunks=pieces, line_end="\r\n", data_prefix="data:", compact_json=True),
        Behavior(chunks=pieces, line_end="\r", write_size=3),
        Behavior(chunks=pieces, keepalive=0.01, tps=100),
    ]
    llm.push(*variants)
    client = make_client(session, llm.base_url)
    for _ in variants:
        s = await run(client)
        assert s.text == "".join(pieces)
        assert s.usage == Usage(EXPECTED_PROMPT_TOKENS, len(pieces))


async def test_giant_chunk(llm: LLMStandIn, session: aiohttp.ClientSession) -> None:
    big = "x" * 100_000
    llm.push(Behavior(chunks=["a", big, "b"]))
    s = await run(make_client(session, llm.base_url))
    assert s.text == "a" + big + "b"


@pytest.mark.parametrize("reason", ["length", "content_filter", "tool_calls"])
async def test_other_finish_reasons(
    llm: LLMStandIn, session: aiohttp.ClientSession, reason: str
) -> None:
    llm.push(Behavior(reply="partial answer", finish_reason=reason))
    s = await run(make_client(session, llm.base_url))
    assert s.finish_reason == reason and s.text == "partial answer"


async def test_finish_reason_without_done_is_complete(
    llm: LLMStandIn, session: aiohttp.ClientSession
) -> None:
    llm.push(Behavior(reply="all here", send_done=False))
    s = await run(make_client(session, llm.base_url))
    assert s.text == "all here" and s.finish_reason == "stop" and s.usage is not None


async def test_server_that_ignores_stream_true(
    llm: LLMStandIn, session: aiohttp.ClientSession
) -> None:
    # extra_body overrides `stream`: the stand-in then answers with one JSON completion.
    client = make_client(session, llm.base_url, extra_body={"stream": False})
    s = await run(client)
    assert s.text == "Echo: Hello, world!" and s.finish_reason == "stop"
    assert s.usage == Usage(EXPECTED_PROMPT_TOKENS, 3)


async def test_extra_headers_and_body_reach_the_server(
    llm: LLMStandIn, session: aiohttp.ClientSession
) -> None:
    client = make_client(
        session,
        llm.base_url,
        extra_headers={"X-Title": "my bot", "HTTP-Referer": "https://example.org"},
        extra_body={"top_p": 0.9, "repeat_penalty": 1.1, "temperature": 0.0},
    )
    await run(client)
    [req] = llm.requests
    assert req.headers["X-Title"] == "my bot"
    assert req.headers["HTTP-Referer"] == "https://example.org"
    assert req.body["top_p"] == 0.9 and req.body["repeat_penalty"] == 1.1
    assert req.body["temperature"] == 0.0  # extra_body wins
    assert req.body["stream"] is True


async def test_no_authorization_header_without_key(
    llm: LLMStandIn, session: aiohttp.ClientSession
) -> None:
    await run(make_client(session, llm.base_url, api_key=""))
    assert "Authorization" not in llm.requests[0].headers


async def test_content_parts_and_trailing_slash_base_url(
    llm: LLMStandIn, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, llm.base_url + "/")
    s = await run(client, [{"role": "user", "content": [{"type": "text", "text": "hi there"}]}])
    assert s.text == "Echo: hi there"
    assert s.usage == Usage(2 + 4 + 3, 3)


async def test_early_break_closes_the_stream(
    llm: LLMStandIn, session: aiohttp.ClientSession
) -> None:
    llm.push(Behavior(reply_tokens=200, tps=50))
    client = make_client(session, llm.base_url)
    start = time.monotonic()
    async with client.stream(MESSAGES) as s:
        async for _ in s:
            break
    assert time.monotonic() - start < 1.0
    assert s.text == "the" and s.finish_reason is None
    # The connection is usable again for the next call.
    assert (await run(client)).text == "Echo: Hello, world!"


async def test_parallel_streams(llm: LLMStandIn, session: aiohttp.ClientSession) -> None:
    client = make_client(session, llm.base_url)
    convs = [[{"role": "user", "content": f"number {i}"}] for i in range(8)]
    results = await asyncio.gather(*(run(client, m) for m in convs))
    assert [r.text for r in results] == [f"Echo: number {i}" for i in range(8)]


async def test_list_models(llm: LLMStandIn, session: aiohttp.ClientSession) -> None:
    llm.models = ["a-model", "b-model"]
    assert await make_client(session, llm.base_url).list_models() == ["a-model", "b-model"]
    with pytest.raises(LLMUnreachable):
        await make_client(session, f"http://127.0.0.1:{closed_port()}/v1").list_models()


# --- HTTP errors ---------------------------------------------------------------------------

ERROR_CASES = [
    (
        Behavior.error(401, {"error": {"message": f"Incorrect API key provided: {KEY}"}}),
        LLMAuthError,
    ),
    (Behavior.error(403, "forbidden"), LLMAuthError),
    (Behavior.error(404, {"error": {"message": "model 'x' not found"}}), LLMModelNotFound),
    (Behavior.error(429, headers={"Retry-After": "7"}), LLMRateLimited),
    (Behavior.error(400, CONTEXT_LENGTH_OPENAI), LLMContextTooLong),
    (Behavior.error(400, CONTEXT_LENGTH_LLAMACPP), LLMContextTooLong),
    (Behavior.error(400, "prompt exceeds the context window"), LLMContextTooLong),
    (Behavior.error(400, {"error": {"message": "unknown role 'bot'"}}), LLMBadRequest),
    (Behavior.error(422, {"detail": [{"loc": ["body", "messages"], "msg": "x"}]}), LLMBadRequest),
    (Behavior.error(500, "Internal Server Error"), LLMServerError),
    (Behavior.error(503, {"error": "overloaded"}), LLMServerError),
]


@pytest.mark.parametrize(("behavior", "expected"), ERROR_CASES)
async def test_http_errors_map_to_typed_errors(
    llm: LLMStandIn,
    session: aiohttp.ClientSession,
    behavior: Behavior,
    expected: type[LLMError],
) -> None:
    llm.push(behavior)
    client = make_client(session, llm.base_url, max_retries=0)
    with pytest.raises(expected) as info:
        await run(client)
    exc = info.value
    assert type(exc) is expected
    assert len(llm.requests) == 1
    # A plain sentence for people: no status codes, JSON or key.
    text = user_message(exc)
    assert text == exc.user_text and text.endswith(".")
    assert "{" not in text and "HTTP" not in text and KEY not in text
    assert f"HTTP {behavior.status}" in str(exc)
    if expected is LLMRateLimited:
        assert isinstance(exc, LLMRateLimited) and exc.retry_after == 7.0
        assert "7 s" in exc.user_text


async def test_stream_options_rejected_is_retried_without_them(
    llm: LLMStandIn, session: aiohttp.ClientSession
) -> None:
    msg = "Unrecognized request argument supplied: stream_options"
    llm.push(Behavior.error(400, {"error": {"message": msg}}))
    client = make_client(session, llm.base_url, max_retries=0)
    s = await run(client)
    assert s.text == "Echo: Hello, world!"
    assert "stream_options" in llm.requests[0].body
    assert "stream_options" not in llm.requests[1].body
    assert s.usage is None  # the stand-in only reports usage when asked to


def test_retry_after_header_forms() -> None:
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"Retry-After": "1.5", "retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({}) is None
    assert parse_retry_after({"Retry-After": "soon"}) is None
    later = email.utils.formatdate(time.time() + 20, usegmt=True)
    assert 15 < (parse_retry_after({"Retry-After": later}) or 0) <= 20


def test_classify_reads_bodies_defensively() -> None:
    assert isinstance(classify_http_error(400, b""), LLMBadRequest)
    assert isinstance(classify_http_error(400, b"\xff\xfe not json"), LLMBadRequest)
    assert isinstance(classify_http_error(400, b'{"error": ["odd"]}'), LLMBadRequest)
    assert isinstance(classify_http_error(413, b"request too large"), LLMBadRequest)
    body = b'{"error":{"code":"context_length_exceeded","message":"too long"}}'
    assert isinstance(classify_http_error(400, body), LLMContextTooLong)
    assert isinstance(classify_http_error(500, b"context size exceeded"), LLMContextTooLong)
    assert isinstance(classify_http_error(502, b"<html>bad gateway</html>"), LLMServerError)
    assert isinstance(classify_http_error(307, b""), LLMBadRequest)


# --- retries -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first",
    [
        Behavior.error(500, "boom"),
        Behavior.error(503, "busy", headers={"Retry-After": "0.2"}),
        Behavior.error(429, headers={"Retry-After": "0.2"}),
        Behavior(empty_body=True),
        Behavior(send_done=True, finish_reason=None, chunks=[]),
        Behavior(drop_after=0),
    ],
    ids=["500", "503-retry-after", "429-retry-after", "empty-200", "no-token-done", "drop-0"],
)
async def test_retry_before_first_token_succeeds(
    llm: LLMStandIn, session: aiohttp.ClientSession, first: Behavior
) -> None:
    llm.push(first)
    start = time.monotonic()
    s = await run(make_client(session, llm.base_url))
    elapsed = time.monotonic() - start
    assert s.text == "Echo: Hello, world!" and s.attempts == 2
    assert len(llm.requests) == 2
    waited = 0.2 if "Retry-After" in first.headers else 0.0
    assert waited <= elapsed < waited + 1.0


async def test_nothing_from_a_failed_attempt_leaks_into_the_retry(
    llm: LLMStandIn, session: aiohttp.ClientSession
) -> None:
    # Attempt 1: usage and model, but no text and no finish_reason; attempt 2: no usage.
    llm.push(Behavior(chunks=[], finish_reason=None, model="other"), Behavior(usage=False))
    s = await run(make_client(session, llm.base_url))
    assert s.attempts == 2 and s.usage is None and s.model == "test-model"
    assert s.text == "Echo: Hello, world!"


async def test_retries_stop_at_max_retries(llm: LLMStandIn, session: aiohttp.ClientSession) -> None:
    llm.push(*[Behavior.error(500, "boom")] * 5)
    with pytest.raises(LLMServerError):
        await run(make_client(session, llm.base_url, max_retries=2))
    assert len(llm.requests) == 3


async def test_empty_body_every_time_is_a_cut_off(
    llm: LLMStandIn, session: aiohttp.ClientSession
) -> None:
    llm.push(*[Behavior(empty_body=True)] * 3)
    with pytest.raises(LLMCutOff):
        await run(make_client(session, llm.base_url, max_retries=1))
    assert len(llm.requests) == 2


async def test_retry_after_beyond_cap_is_not_waited_for(
    llm: LLMStandIn, session: aiohttp.ClientSession
) -> None:
    llm.push(Behavior.error(429, headers={"Retry-After": "2"}))
    client = make_client(session, llm.base_url, total_timeout=10.0)
    client.retry_after_cap = 0.5
    start = time.monotonic()
    with pytest.raises(LLMRateLimited) as info:
        await run(client)
    assert time.monotonic() - start < 1.0
    assert info.value.retry_after == 2.0 and len(llm.requests) == 1


@pytest.mark.parametrize(
    "behavior",
    [
        Behavior(reply="one two three four", drop_after=2),
        Behavior(reply="one two three four", finish_reason=None),
        Behavior(reply="one two three four", finish_reason=None, send_done=False),
    ],
    ids=["dropped", "done-without-finish", "eof-without-finish"],
)
async def test_no_retry_after_first_token_and_text_is_kept(
    llm: LLMStandIn, session: aiohttp.ClientSession, behavior: Behavior
) -> None:
    llm.push(behavior)
    with pytest.raises(LLMCutOff) as info:
        await run(make_client(session, llm.base_url))
    s: ChatStream = info.value.stream  # type: ignore[attr-defined]
    expected = "one two" if behavior.drop_after else "one two three four"
    assert s.text == expected and s.finish_reason is None
    assert len(llm.requests) == 1


async def test_retries_share_the_total_timeout(
    llm: LLMStandIn, session: aiohttp.ClientSession
) -> None:
    llm.push(*[Behavior.error(503, "busy", headers={"Retry-After": "0.4"})] * 5)
    start = time.monotonic()
    with pytest.raises(LLMServerError):
        await run(make_client(session, llm.base_url, max_retries=5, total_timeout=1.0))
    assert time.monotonic() - start < 1.2
    assert len(llm.requests) <= 3


# --- timeouts ------------------------------------------------------------------------------


async def test_first_token_timeout_ignores_keepalive_comments(
    llm: LLMStandIn, session: aiohttp.ClientSession
) -> None:
    llm.push(Behavior(hang_after=0, keepalive=0.05))
    client = make_client(session, llm.base_url, first_token_timeout=0.5)
    start = time.monotonic()
    with pytest.raises(LLMTimeout) as info:
        await run(client)
    assert info.value.phase == "first_token"
    assert 0.45 <= time.monotonic() - start < 1.5
    assert len(llm.requests) == 1  # timeouts are not retried


async def test_first_token_timeout_covers_waiting_for_headers(
    llm: LLMStandIn, session: aiohttp.ClientSession
) -> None:
    llm.push(Behavior(headers_delay=10))
    start = time.monotonic()
    with pytest.raises(LLMTimeout) as info:
        await run(make_client(session, llm.base_url, first_token_timeout=0.4))
    assert info.value.phase == "first_token"
    assert time.monotonic() - start < 1.5


async def test_slow_first_token_within_limit(
    llm: LLMStandIn, session: aiohttp.ClientSession
) -> None:
    llm.push(Behavior(ttft=0.3, keepalive=0.05))
    s = await run(make_client(session, llm.base_url, first_token_timeout=1.0, idle_timeout=0.1))
    assert s.text == "Echo: Hello, world!"
    assert s.first_token_s is not None and s.first_token_s >= 0.3


async def test_idle_timeout_mid_stream_keeps_text(
    llm: LLMStandIn, session: aiohttp.ClientSession
) -> None:
    llm.push(Behavior(reply="one two three", hang_after=2))
    client = make_client(session, llm.base_url, idle_timeout=0.4)
    start = time.monotonic()
    with pytest.raises(LLMTimeout) as info:
        await run(client)
    assert info.value.phase == "idle"
    assert info.value.stream.text == "one two"  # type: ignore[attr-defined]
    assert time.monotonic() - start < 1.5
    assert len(llm.requests) == 1


async def test_keepalive_after_first_token_counts_as_activity(
    llm: LLMStandIn, session: aiohttp.ClientSession
) -> None:
    # A 0.6 s gap between tokens, but pings every 0.1 s: bytes keep arriving.
    llm.push(Behavior(chunks=["a", "b"], tps=1 / 0.6, keepalive=0.1))
    s = await run(make_client(session, llm.base_url, idle_timeout=0.4))
    assert s.text == "ab"


async def test_steady_slow_tokens_are_not_idle(
    llm: LLMStandIn, session: aiohttp.ClientSession
) -> None:
    llm.push(Behavior(reply_tokens=6, tps=10))
    s = await run(make_client(session, llm.base_url, idle_timeout=0.4))
    assert len(s.text.split()) == 6


async def test_total_timeout(llm: LLMStandIn, session: aiohttp.ClientSession) -> None:
    llm.push(Behavior(reply_tokens=50, tps=10))
    start = time.monotonic()
    with pytest.raises(LLMTimeout) as info:
        await run(make_client(session, llm.base_url, total_timeout=0.6))
    assert info.value.phase == "total"
    assert 0.55 <= time.monotonic() - start < 1.2
    assert info.value.stream.text  # type: ignore[attr-defined]


@contextlib.contextmanager
def unaccepting_listener() -> Iterator[int]:
    """A port whose accept queue is full, so new connection attempts hang (SYNs dropped)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            c = socket.socket()
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                c.connect(("127.0.0.1", port))
            fillers.append(c)
        probe = socket.socket()
        probe.settimeout(0.2)
        try:
            probe.connect(("127.0.0.1", port))
        except TimeoutError:
            pass
        else:
            pytest.skip("this kernel accepts connections beyond the listen backlog")
        finally:
            probe.close()
        yield port
    finally:
        for c in fillers:
            c.close()
        server.close()


async def test_connect_timeout(
    session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with unaccepting_listener() as port:
        client = make_client(session, f"http://127.0.0.1:{port}/v1", connect_timeout=0.3)
        start = time.monotonic()
        with pytest.raises(LLMTimeout) as info:
            await run(client)
        assert info.value.phase == "connect"
        assert time.monotonic() - start < 1.5
    assert KEY not in "".join(traceback.format_exception(info.value)) + caplog.text


# --- connection and protocol failures --------------------------------------------------------


async def test_connection_refused_is_unreachable_after_retries(
    session: aiohttp.ClientSession,
) -> None:
    client = make_client(session, f"http://127.0.0.1:{closed_port()}/v1", max_retries=2)
    start = time.monotonic()
    with pytest.raises(LLMUnreachable) as info:
        await run(client)
    assert info.value.stream.attempts == 3  # type: ignore[attr-defined]
    assert time.monotonic() - start < 1.5


async def test_retry_after_connection_refused_then_up(session: aiohttp.ClientSession) -> None:
    port = closed_port()
    client = make_client(session, f"http://127.0.0.1:{port}/v1", max_retries=3)
    client.backoff_base = 0.3
    server = LLMStandIn(port=port)

    async def start_later() -> None:
        await asyncio.sleep(0.1)
        await server.start()

    starter = asyncio.create_task(start_later())
    try:
        s = await run(client)
        assert s.text == "Echo: Hello, world!" and s.attempts >= 2
    finally:
        await starter
        await server.close()


@pytest.mark.parametrize("after", [0, 2])
async def test_malformed_json_is_a_protocol_error(
    llm: LLMStandIn, session: aiohttp.ClientSession, after: int
) -> None:
    llm.push(Behavior(reply="one two three", malformed_after=after))
    with pytest.raises(LLMProtocolError) as info:
        await run(make_client(session, llm.base_url))
    assert info.value.stream.text == ("one two" if after else "")  # type: ignore[attr-defined]
    assert len(llm.requests) == 1


async def test_error_object_mid_stream(llm: LLMStandIn, session: aiohttp.ClientSession) -> None:
    llm.push(Behavior(reply="one two three", error_after=1))
    with pytest.raises(LLMProtocolError) as info:
        await run(make_client(session, llm.base_url))
    assert "error inside the stream" in str(info.value)
    assert info.value.stream.text == "one"  # type: ignore[attr-defined]


async def test_context_error_object_in_stream(
    llm: LLMStandIn, session: aiohttp.ClientSession
) -> None:
    llm.push(Behavior(error_after=0, error_object=CONTEXT_LENGTH_LLAMACPP))
    with pytest.raises(LLMContextTooLong):
        await run(make_client(session, llm.base_url))


async def test_html_page_is_a_protocol_error(session: aiohttp.ClientSession) -> None:
    async def html(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.Response(text="<html>hi</html>", content_type="text/html")

    app = aiohttp.web.Application()
    app.router.add_post("/v1/chat/completions", html)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        with pytest.raises(LLMProtocolError):
            await run(make_client(session, f"http://127.0.0.1:{port}/v1"))
    finally:
        await runner.cleanup()


async def test_standin_close_does_not_hang_with_requests_in_flight(
    session: aiohttp.ClientSession,
) -> None:
    server = await LLMStandIn(Behavior(hang_after=0)).start()
    client = make_client(session, server.base_url, max_retries=0)
    calls = [asyncio.create_task(run(client)) for _ in range(3)]
    await asyncio.sleep(0.2)
    start = time.monotonic()
    await server.close()
    assert time.monotonic() - start < 3.0
    for call in calls:
        with pytest.raises(LLMError):
            await call


# --- the API key stays secret ----------------------------------------------------------------

SECRET_CASES: list[tuple[Behavior | None, dict[str, Any]]] = [
    (Behavior.error(401, {"error": {"message": f"Incorrect API key provided: {KEY}."}}), {}),
    (Behavior.error(403, f"key {KEY} is not allowed"), {}),
    (Behavior.error(404, f"no model for {KEY}"), {}),
    (Behavior.error(429, {"error": {"message": f"slow down {KEY}"}}), {"max_retries": 1}),
    (Behavior.error(400, CONTEXT_LENGTH_OPENAI), {}),
    (Behavior.error(422, f"bad {KEY}"), {}),
    (Behavior.error(500, f"crash with {KEY}"), {"max_retries": 1}),
    (Behavior(reply="a b c", drop_after=1), {}),
    (Behavior(reply="a b c", finish_reason=None), {}),
    (Behavior(hang_after=0), {"first_token_timeout": 0.2}),
    (Behavior(reply="a b c", hang_after=1), {"idle_timeout": 0.2}),
    (Behavior(reply_tokens=50, tps=20), {"total_timeout": 0.3}),
    (Behavior(reply="a b c", malformed_after=1), {}),
    (Behavior(error_after=0, error_object={"error": {"message": f"bad key {KEY}"}}), {}),
    (None, {}),  # connection refused
]


@pytest.mark.parametrize(("behavior", "overrides"), SECRET_CASES)
async def test_api_key_never_in_logs_or_errors(
    llm: LLMStandIn,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    behavior: Behavior | None,
    overrides: dict[str, Any],
) -> None:
    caplog.set_level(logging.DEBUG)
    if behavior is None:
        base_url = f"http://127.0.0.1:{closed_port()}/v1"
    else:
        base_url = llm.base_url
        llm.push(behavior, behavior)
    client = make_client(session, base_url, **overrides)
    with pytest.raises(LLMError) as info:
        await run(client)
    exc = info.value
    shown = [
        str(exc),
        repr(exc),
        exc.user_text,
        str(exc.detail),
        "".join(traceback.format_exception(exc)),
        repr(client),
        repr(client.config),
        repr(info.value.stream),  # type: ignore[attr-defined]
        caplog.text,
    ]
    for text in shown:
        assert KEY not in text
    assert caplog.records, "the failure should have been logged"


async def test_prompt_and_reply_never_logged_at_info(
    llm: LLMStandIn, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    llm.push(Behavior.error(500, "x"), Behavior(reply="TOPSECRETREPLY"))
    await run(make_client(session, llm.base_url), [{"role": "user", "content": "PRIVATEPROMPT"}])
    for rec in caplog.records:
        assert "PRIVATEPROMPT" not in rec.getMessage()
        assert "TOPSECRETREPLY" not in rec.getMessage()


# --- the stand-in as its own process ---------------------------------------------------------


async def test_standin_runs_as_a_process_and_stops_on_sigterm(
    session: aiohttp.ClientSession,
) -> None:
    cmd = [
        sys.executable,
        "-m",
        "tests.standin.llm_api",
        "--port",
        "0",
        "--ttft",
        "0.05",
        "--tps",
        "500",
        "--reply-tokens",
        "30",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=10)
        base_url = line.decode().strip()
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        s = await run(make_client(session, base_url))
        assert len(s.text.split()) == 30
        assert s.usage is not None and s.usage.completion_tokens == 30
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=5) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
