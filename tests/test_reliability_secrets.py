"""Reliability: recognisable fake secrets never reach logs, Discord or the LLM's bodies.

The bot runs with a fake Discord token, a fake LLM API key and a Redis URL with a
password (a private Redis with `requirepass`), with logging at DEBUG through the real
`bot.ops.logs.setup_logging` handler, while errors that tend to carry secrets happen: an LLM
401 and 500 whose bodies quote the key, an error object inside the stream quoting it,
Discord 5xx and 429s, and Redis going away. Three views of the logs are checked:

* raw: every record rendered the moment it is emitted, before any redaction (so the
  code itself never puts a secret in a log call);
* caplog at DEBUG;
* the real handler's output (text lines).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis.asyncio as aioredis

from bot.config import LoggingConfig
from bot.memory.redis_server import EmbeddedRedis
from bot.ops.logs import redis_url_secrets, setup_logging
from tests.harness import running_bot
from tests.reliability_report import reliability_report  # noqa: F401
from tests.standin.llm_api import Behavior

DISCORD_TOKEN = "MTA5ODc2NTQzMjEwOTg3NjU0.FAKE-discord.token-Xy7Qz9SECRET"
LLM_KEY = "sk-live-FAKEkey0123456789abcdefSECRET"
REDIS_PASSWORD = "r3dis-FAKE-pa55/word-SECRET"
SECRETS = (DISCORD_TOKEN, LLM_KEY, REDIS_PASSWORD, quote(REDIS_PASSWORD, safe=""))


class RawCapture(logging.Handler):
    """Renders each record when emitted, before later handlers' filters can touch it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "private-redis")
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


@pytest.mark.usefixtures("restore_logging")
async def test_secrets_never_leak(
    private_redis: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    admin = aioredis.from_url(private_redis.url)
    await admin.config_set("requirepass", REDIS_PASSWORD)
    await admin.aclose()
    url = f"unix://:{quote(REDIS_PASSWORD, safe='')}@{private_redis.socket_path}"
    assert REDIS_PASSWORD in redis_url_secrets(url)

    caplog.set_level(logging.DEBUG)
    raw = RawCapture()
    logging.getLogger().addHandler(raw)  # before the real handler: sees unredacted records
    stream = io.StringIO()
    try:
        setup_logging(
            LoggingConfig(level="DEBUG"),
            [DISCORD_TOKEN, LLM_KEY, *redis_url_secrets(url)],
            stream=stream,
        )
        async with running_bot(
            url, token=DISCORD_TOKEN, overrides={"llm": {"api_key": LLM_KEY}}
        ) as h:
            await h.ask("hello with secrets around")
            h.llm.push(
                Behavior.error(
                    401,
                    {"error": {"message": f"Incorrect API key provided: {LLM_KEY}", "code": 401}},
                ),
                Behavior.error(500, f"upstream failed; Authorization: Bearer {LLM_KEY}"),
                Behavior(
                    reply_tokens=30,
                    tps=300,
                    error_after=10,
                    error_object={"error": {"message": f"key {LLM_KEY} over quota"}},
                ),
            )
            for question in ("bad key?", "server error?", "error mid-stream?"):
                parts = await h.ask(question)
                assert parts and "⚠️" in parts[-1].content
            h.discord.fail_next("PATCH", r"/messages/\d+$", 502)
            h.discord.force_429(r"/messages", count=2, retry_after=0.2)
            h.llm.default = Behavior(reply_tokens=40, tps=60)
            await h.ask("through Discord trouble")
            await h.slash("usage")
            await h.slash("persona show")
            await asyncio.to_thread(private_redis.stop)
            parts = await h.ask("memory gone?")
            assert parts and "memory" in parts[0].content.lower()
    finally:
        logging.getLogger().removeHandler(raw)

    assert raw.lines and stream.getvalue() and caplog.records
    assert any("401" in line or "auth" in line for line in raw.lines)
    for i, line in enumerate(raw.lines):
        assert not leaks(line), f"raw log record {i} carries a secret: {line[:300]}"
    assert not leaks(caplog.text), "a secret in caplog"
    for record in caplog.records:
        assert not leaks(str(record.__dict__)), f"a secret on a record: {record.name}"
    assert not leaks(stream.getvalue()), "a secret in the real handler's output"

    for r in h.discord.request_log:
        sent = json.dumps(r.json) + r.path + json.dumps(r.query)
        sent += "".join(data.decode("utf-8", "replace") for _, _, data in r.files)
        assert not leaks(sent), f"a secret sent to Discord: {r.method} {r.path}"
    for m in h.discord.messages.values():
        assert not leaks(json.dumps([e.content for e in m.history] + [m.content, m.embeds]))
    for rec in h.llm.requests:
        assert not leaks(rec.raw.decode("utf-8", "replace")), "a secret in an LLM request body"
        assert rec.headers.get("Authorization") == f"Bearer {LLM_KEY}"  # the one place for it
