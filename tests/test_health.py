"""The health/metrics HTTP server, exercised over real loopback sockets on port 0."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import aiohttp
import pytest

from bot.config import HealthConfig
from bot.ops.health import DEFAULT_CHECK_TIMEOUT, Check, HealthServer
from bot.ops.metrics import CONTENT_TYPE, Metrics

Factory = Callable[..., Awaitable[HealthServer]]


async def _true() -> bool:
    return True


async def _false() -> bool:
    return False


async def _hang() -> bool:
    await asyncio.sleep(30)
    return True


async def _boom() -> bool:
    raise ConnectionError("redis://:hunter2-secret@db:6379 refused")


@pytest.fixture
async def make_server() -> AsyncIterator[Factory]:
    servers: list[HealthServer] = []

    async def factory(
        checks: Mapping[str, Check] | None = None,
        metrics: Metrics | None = None,
        check_timeout: float = DEFAULT_CHECK_TIMEOUT,
    ) -> HealthServer:
        server = HealthServer(
            HealthConfig(enabled=True, host="127.0.0.1", port=0),
            metrics or Metrics(process=False),
            checks,
            check_timeout=check_timeout,
        )
        await server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.stop()


async def _get(server: HealthServer, path: str) -> tuple[int, str, str]:
    assert server.url is not None
    async with (
        aiohttp.ClientSession() as session,
        session.get(server.url + path, timeout=aiohttp.ClientTimeout(total=10)) as resp,
    ):
        return resp.status, resp.headers["Content-Type"], await resp.text()


async def test_binds_port_zero_to_a_real_port(make_server: Factory) -> None:
    server = await make_server()
    assert server.running
    assert isinstance(server.port, int) and server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"


async def test_healthz_ok_when_all_checks_pass(make_server: Factory) -> None:
    server = await make_server({"gateway": _true, "redis": _true})
    status, ctype, body = await _get(server, "/healthz")
    assert status == 200
    assert ctype.startswith("application/json")
    assert json.loads(body) == {"status": "ok", "gateway": True, "redis": True}


async def test_healthz_accepts_sync_checks(make_server: Factory) -> None:
    server = await make_server({"gateway": lambda: True, "redis": _true})
    status, _, _ = await _get(server, "/healthz")
    assert status == 200


async def test_healthz_503_names_the_failing_check(make_server: Factory) -> None:
    server = await make_server({"gateway": _true, "redis": _false})
    status, _, body = await _get(server, "/healthz")
    data = json.loads(body)
    assert status == 503
    assert data["status"] == "fail"
    assert data["gateway"] is True
    assert data["redis"] is False
    assert data["failed"] == ["redis"]


async def test_healthz_bounds_a_hanging_check(make_server: Factory) -> None:
    server = await make_server({"gateway": _hang, "redis": _true}, check_timeout=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, _, body = await _get(server, "/healthz")
    assert loop.time() - started < 5
    data = json.loads(body)
    assert status == 503
    assert data["failed"] == ["gateway"]
    assert data["reasons"] == {"gateway": "timeout"}


async def test_healthz_raising_check_fails_without_leaking_its_text(make_server: Factory) -> None:
    server = await make_server({"gateway": _true, "redis": _boom})
    status, _, body = await _get(server, "/healthz")
    assert status == 503
    assert json.loads(body)["reasons"] == {"redis": "error: ConnectionError"}
    assert "hunter2" not in body


async def test_metrics_content_type_and_counters_move(make_server: Factory) -> None:
    metrics = Metrics(process=False)
    server = await make_server(metrics=metrics)

    status, ctype, before = await _get(server, "/metrics")
    assert status == 200
    assert ctype.startswith("text/plain")
    assert "version=0.0.4" in ctype
    assert ctype == CONTENT_TYPE
    assert "llmbot_replies_started_total 0.0" in before

    metrics.reply_started()
    metrics.reply_started()
    metrics.reply_finished()
    metrics.reply_failed("llm_timeout")
    metrics.add_tokens(120, 30)
    metrics.observe_first_token(0.4)
    metrics.observe_final_edit(3.2)
    metrics.discord_request("send")
    metrics.discord_request("edit")
    metrics.discord_request("edit")
    metrics.discord_rate_limited()
    metrics.redis_error()
    metrics.stream_opened()

    _, _, after = await _get(server, "/metrics")
    assert "llmbot_replies_started_total 2.0" in after
    assert "llmbot_replies_finished_total 1.0" in after
    assert 'llmbot_replies_failed_total{kind="llm_timeout"} 1.0' in after
    assert "llmbot_tokens_in_total 120.0" in after
    assert "llmbot_tokens_out_total 30.0" in after
    assert 'llmbot_time_to_first_token_seconds_bucket{le="0.5"} 1.0' in after
    assert "llmbot_time_to_first_token_seconds_count 1.0" in after
    assert 'llmbot_time_to_final_edit_seconds_bucket{le="3.0"} 0.0' in after
    assert 'llmbot_time_to_final_edit_seconds_bucket{le="5.0"} 1.0' in after
    assert 'llmbot_discord_requests_total{kind="edit"} 2.0' in after
    assert 'llmbot_discord_requests_total{kind="typing"} 0.0' in after
    assert "llmbot_discord_rate_limited_total 1.0" in after
    assert "llmbot_redis_errors_total 1.0" in after
    assert "llmbot_active_streams 1.0" in after


async def test_unknown_path_is_404(make_server: Factory) -> None:
    server = await make_server()
    status, _, _ = await _get(server, "/nope")
    assert status == 404


async def test_port_in_use_raises_and_leaves_nothing_running(make_server: Factory) -> None:
    first = await make_server()
    assert first.port is not None
    second = HealthServer(
        HealthConfig(enabled=True, host="127.0.0.1", port=first.port), Metrics(process=False)
    )
    with pytest.raises(OSError):
        await second.start()
    assert not second.running
    assert second.port is None


async def test_disabled_server_does_not_listen() -> None:
    server = HealthServer(HealthConfig(enabled=False, port=0), Metrics(process=False), {})
    await server.start()
    assert not server.running
    assert server.port is None
    await server.stop()  # safe when never started


async def test_stop_releases_the_port(make_server: Factory) -> None:
    server = await make_server()
    url = server.url
    await server.stop()
    assert not server.running
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"{url}/healthz", timeout=aiohttp.ClientTimeout(total=5))


# --- Metrics on its own ----------------------------------------------------------------


def test_fresh_registries_are_independent() -> None:
    a, b = Metrics(process=False), Metrics(process=False)
    a.reply_started()
    assert b"llmbot_replies_started_total 1.0" in a.render()
    assert b"llmbot_replies_started_total 0.0" in b.render()


def test_process_collectors_are_included_by_default() -> None:
    assert b"python_info" in Metrics().render()


def test_bad_values_are_clamped_not_raised() -> None:
    m = Metrics(process=False)
    m.add_tokens(-5, -1)
    m.observe_first_token(-0.3)
    text = m.render().decode()
    assert "llmbot_tokens_in_total 0.0" in text
    assert 'llmbot_time_to_first_token_seconds_bucket{le="0.05"} 1.0' in text


def test_unknown_discord_kind_is_bucketed_as_other() -> None:
    m = Metrics(process=False)
    m.discord_request("delete-everything")
    text = m.render().decode()
    assert 'llmbot_discord_requests_total{kind="other"} 1.0' in text
    assert "delete-everything" not in text


def test_stream_context_manager_balances_the_gauge() -> None:
    m = Metrics(process=False)
    with pytest.raises(RuntimeError), m.stream():
        assert "llmbot_active_streams 1.0" in m.render().decode()
        raise RuntimeError("reply broke")
    assert "llmbot_active_streams 0.0" in m.render().decode()


def test_histogram_buckets_cover_50ms_to_60s() -> None:
    text = Metrics(process=False).render().decode()
    les = re.findall(r'llmbot_time_to_first_token_seconds_bucket\{le="([^"]+)"\}', text)
    assert les[0] == "0.05"
    assert "60.0" in les
    assert les[-1] == "+Inf"
