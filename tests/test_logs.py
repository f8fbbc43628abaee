"""Logging set-up: formats, quieted libraries and secret redaction."""

from __future__ import annotations

import io
import json
import logging
import warnings

import pytest

from bot.config import Config, DiscordConfig, LLMConfig, LoggingConfig, RedisConfig
from bot.ops import logs
from bot.ops.logs import RedactingFilter, redis_url_secrets, secrets_from_config, setup_logging

TOKEN = "MTIzNDU2Nzg5.discord-token-Xy7"
API_KEY = "sk-test-api-key-0123456789"
REDIS_PASSWORD = "p@ss/word-42"


def _setup(fmt: str = "text", level: str = "INFO", secrets: tuple[str, ...] = ()) -> io.StringIO:
    stream = io.StringIO()
    setup_logging(LoggingConfig(level=level, format=fmt), secrets, stream=stream)
    return stream


def _json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line]


# --- formats ---------------------------------------------------------------------------


@pytest.mark.usefixtures("restore_logging")
def test_text_format() -> None:
    stream = _setup("text")
    logging.getLogger("bot.test").info("hello %s", "world")
    line = stream.getvalue().strip()
    assert line.endswith(" INFO bot.test: hello world")
    assert line[:4].isdigit()  # starts with asctime


@pytest.mark.usefixtures("restore_logging")
def test_json_format_has_fields_and_extras() -> None:
    stream = _setup("json")
    logging.getLogger("bot.test").warning(
        "reply %d done", 7, extra={"channel_id": 42, "ts": "clash", "meta": {"a": [1]}}
    )
    (entry,) = _json_lines(stream)
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "bot.test"
    assert entry["msg"] == "reply 7 done"
    assert isinstance(entry["ts"], str) and entry["ts"].endswith("Z")
    assert entry["channel_id"] == 42
    assert entry["meta"] == {"a": [1]}
    assert entry["ts_"] == "clash"  # an extra never overwrites a fixed key
    assert "exc" not in entry


@pytest.mark.usefixtures("restore_logging")
def test_json_one_line_per_record_with_exception() -> None:
    stream = _setup("json")
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        logging.getLogger("bot.test").exception("it broke\non two lines")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["msg"] == "it broke\non two lines"
    assert "Traceback" in entry["exc"]
    assert "ValueError: bad" in entry["exc"]


@pytest.mark.usefixtures("restore_logging")
def test_json_survives_unserializable_extras() -> None:
    stream = _setup("json")
    circular: dict[str, object] = {}
    circular["self"] = circular
    logging.getLogger("bot.test").info("odd", extra={"obj": object(), "loop": circular})
    (entry,) = _json_lines(stream)
    assert entry["msg"] == "odd"
    assert entry["loop"] == repr(circular)


@pytest.mark.usefixtures("restore_logging")
def test_setup_twice_does_not_double_lines() -> None:
    _setup("text")
    stream = _setup("text")
    logging.getLogger("bot.test").info("once")
    assert stream.getvalue().count("once") == 1
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_llmbot_handler", False)]
    assert len(ours) == 1


# --- noisy libraries -------------------------------------------------------------------


@pytest.mark.usefixtures("restore_logging")
def test_noisy_loggers_quieted_at_info() -> None:
    stream = _setup("text", "INFO")
    logging.getLogger("discord.gateway").info("Shard ID None has sent the IDENTIFY payload")
    logging.getLogger("aiohttp.access").info("GET /healthz 200")
    logging.getLogger("discord.http").warning("We are being rate limited")
    logging.getLogger("bot.core").info("bot line")
    out = stream.getvalue()
    assert "IDENTIFY" not in out
    assert "GET /healthz" not in out
    assert "rate limited" in out
    assert "bot line" in out


@pytest.mark.usefixtures("restore_logging")
def test_noisy_loggers_speak_at_debug() -> None:
    stream = _setup("text", "DEBUG")
    logging.getLogger("discord.gateway").debug("gateway detail")
    assert "gateway detail" in stream.getvalue()
    assert logging.getLogger("discord").getEffectiveLevel() == logging.DEBUG


@pytest.mark.usefixtures("restore_logging")
def test_warnings_are_routed_into_logging() -> None:
    stream = _setup("text", secrets=(API_KEY,))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"deprecated thing {API_KEY}", DeprecationWarning, stacklevel=1)
    out = stream.getvalue()
    assert "deprecated thing ***" in out
    assert API_KEY not in out


# --- redaction -------------------------------------------------------------------------


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secret_in_message_and_args_is_redacted(fmt: str) -> None:
    stream = _setup(fmt, secrets=(TOKEN, API_KEY))
    log = logging.getLogger("discord.http")
    log.warning(f"Authorization: Bot {TOKEN}")
    log.warning("calling with key=%s and %r", API_KEY, {"Authorization": f"Bearer {API_KEY}"})
    out = stream.getvalue()
    assert TOKEN not in out
    assert API_KEY not in out
    assert "Authorization: Bot ***" in out
    assert "key=***" in out


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secret_in_exception_traceback_is_redacted(fmt: str) -> None:
    stream = _setup(fmt, secrets=(API_KEY,))

    def call_llm() -> None:
        raise PermissionError(f"401 for api key {API_KEY}")

    try:
        try:
            call_llm()
        except PermissionError as exc:
            raise RuntimeError(f"wrapped {API_KEY}") from exc
    except RuntimeError:
        logging.getLogger("bot.llm.client").exception("request failed")
    out = stream.getvalue()
    assert API_KEY not in out
    assert "401 for api key ***" in out
    assert "wrapped ***" in out
    assert "Traceback" in out


@pytest.mark.usefixtures("restore_logging")
def test_secret_in_stack_info_and_extra_is_redacted() -> None:
    stream = _setup("json", secrets=(TOKEN,))
    logging.getLogger("bot.test").info(
        "with stack", stack_info=True, extra={"header": TOKEN, "nested": {"t": [TOKEN]}}
    )
    out = stream.getvalue()
    assert TOKEN not in out
    (entry,) = _json_lines(stream)
    assert entry["header"] == "***"
    assert entry["nested"] == {"t": ["***"]}
    assert "stack" in entry


@pytest.mark.usefixtures("restore_logging")
def test_secret_added_after_setup_is_redacted() -> None:
    late = "late-secret-redis-url-value"
    stream = _setup("text")
    logs.add_secret(late)
    logging.getLogger("bot.memory.store").error("cannot connect to %s", late)
    assert late not in stream.getvalue()
    assert "cannot connect to ***" in stream.getvalue()


def test_unformattable_args_do_not_leak() -> None:
    # Tested on the filter directly: pytest's own capture handler would raise on the
    # bad record before ours sees it.
    f = RedactingFilter([API_KEY])
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "two %s %s", (API_KEY,), None)
    f.filter(record)
    out = logs.TextFormatter(f).format(record)
    assert API_KEY not in out
    assert "unformattable" in out


def test_filter_prefers_the_longest_secret_and_ignores_short_ones() -> None:
    f = RedactingFilter(["abcd", "abcdefgh", "", None, "ab"])
    assert f.secret_count == 2
    assert f.redact("x abcdefgh y abcd z ab") == "x *** y *** z ab"


def test_filter_covers_records_without_a_handler_formatter() -> None:
    f = RedactingFilter([API_KEY])
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "key %s", (API_KEY,), None)
    assert f.filter(record) is True
    assert record.getMessage() == "key ***"


def test_redis_url_password_forms() -> None:
    assert redis_url_secrets("") == []
    assert redis_url_secrets("redis://redis:6379/0") == []
    assert redis_url_secrets("redis://:p%40ss@host:6379/0") == ["p%40ss", "p@ss"]
    assert redis_url_secrets("redis://user:pw1234@host/0") == ["pw1234"]
    assert redis_url_secrets("unix:///tmp/r.sock?password=sockpass") == ["sockpass"]


def test_secrets_from_config() -> None:
    config = Config(
        discord=DiscordConfig(token=TOKEN),
        llm=LLMConfig(api_key=API_KEY),
        redis=RedisConfig(url="redis://:p%40ss%2Fword-42@redis:6379/0"),
    )
    assert secrets_from_config(config) == [TOKEN, API_KEY, "p%40ss%2Fword-42", REDIS_PASSWORD]
    assert secrets_from_config(Config()) == []
