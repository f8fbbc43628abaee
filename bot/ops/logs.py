"""Logging set-up: one root handler, text or JSON lines, and secret redaction.

Why everything goes through one root handler: discord.py, aiohttp, redis-py and the bot
all log through the standard `logging` tree, so a filter on the root handler sees every
line whichever library wrote it. That filter replaces known secret values (the Discord
token, the LLM API key, the Redis password) with `***` in the rendered message, its
arguments, exception tracebacks and stack traces. Secrets leak into logs in unplanned ways
(an exception that repeats a URL, a library's DEBUG dump of request headers), so the
redaction works on the final text instead of trusting every call site.

Why JSON lines: log shippers (Loki, Elasticsearch, `docker logs | jq`) parse one object
per line without regexes; `extra=` fields become keys, so `log.info("reply done",
extra={"channel_id": 1})` is searchable by channel.

Note for the runner: start discord.py with `client.run(..., log_handler=None)` (or
`client.start()`), otherwise discord.py adds its own root handler that bypasses this one.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

from bot.config import Config, LoggingConfig

log = logging.getLogger(__name__)

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED: Final = "***"

# Secrets shorter than this are not redacted: replacing a 1-3 character string in every
# log line would garble the logs, and such a value offers no protection anyway.
MIN_SECRET_LENGTH: Final = 4

# Libraries that log every gateway event or request at INFO; kept at WARNING unless the
# operator asks for DEBUG, when everything is wanted.
NOISY_LOGGERS: Final = ("discord", "aiohttp", "httpx", "mcp")

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS: Final = frozenset(
    logging.LogRecord("", logging.INFO, "", 0, "", (), None).__dict__
) | {"message", "asctime", "taskName"}

# Marks the handler this module installed, so a second `setup_logging` replaces it
# instead of doubling every line.
_HANDLER_MARK: Final = "_llmbot_handler"


class RedactingFilter(logging.Filter):
    """Replaces registered secret values with `***` in everything a record will print.

    Install it on a handler (not a logger): handler filters run for records propagated
    from every logger, while logger filters only see that logger's own calls.
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        for secret in secrets:
            self.add_secret(secret)

    def add_secret(self, value: str | None) -> None:
        """Redact `value` from now on; empty and too-short values are ignored."""
        if not value:
            return
        if len(value) < MIN_SECRET_LENGTH:
            log.warning(
                "a configured secret is shorter than %d characters and is not redacted from logs",
                MIN_SECRET_LENGTH,
            )
            return
        with self._lock:
            if value in self._secrets:
                return
            self._secrets.add(value)
            # Longest first, so a secret that contains another is replaced whole.
            ordered = sorted(self._secrets, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    @property
    def secret_count(self) -> int:
        """How many distinct secrets are registered (for tests and diagnostics)."""
        return len(self._secrets)

    def redact(self, text: str) -> str:
        """`text` with every registered secret replaced by `***`."""
        pattern = self._pattern
        if pattern is None or not text:
            return text
        return pattern.sub(REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        """Render and redact the record in place; never drops a record."""
        if self._pattern is None:
            return True
        try:
            message = record.getMessage()
        except Exception:
            # Bad %-args: logging would print the raw args in its error report, so
            # render them here, redacted, instead of letting that happen.
            message = f"{record.msg!s} (unformattable log arguments: {record.args!r})"
        record.msg = self.redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = _EXC_FORMATTER.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, key, self.redact(value))
        return True


_EXC_FORMATTER: Final = logging.Formatter()
_JSON_SCALARS: Final = (str, int, float, bool, type(None))


class TextFormatter(logging.Formatter):
    """`TEXT_FORMAT` lines; the finished line is redacted once more as a last guard."""

    def __init__(self, redactor: RedactingFilter | None = None) -> None:
        super().__init__(TEXT_FORMAT)
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return self.redactor.redact(text) if self.redactor else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, `extra=` fields, exc, stack.

    The whole serialized line is redacted, which also covers secrets nested inside
    dicts or lists passed as `extra=` values.
    """

    def __init__(self, redactor: RedactingFilter | None = None) -> None:
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD_ATTRS or key.startswith("_"):
                continue
            # Never let an extra field overwrite one of the fixed keys.
            entry[f"{key}_" if key in entry else key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        try:
            text = json.dumps(entry, default=str, ensure_ascii=False)
        except (TypeError, ValueError):  # e.g. a circular structure in an extra field
            plain = {k: v if isinstance(v, _JSON_SCALARS) else repr(v) for k, v in entry.items()}
            text = json.dumps(plain, ensure_ascii=False)
        return self.redactor.redact(text) if self.redactor else text


# One filter for the whole process: secrets registered before or after `setup_logging`
# (e.g. a Redis URL learned at start-up) are redacted by whichever handler is current.
_REDACTOR: Final = RedactingFilter()


def add_secret(value: str | None) -> None:
    """Register a secret value to be redacted from all log output from now on."""
    _REDACTOR.add_secret(value)


def redis_url_secrets(url: str) -> list[str]:
    """The password in a Redis URL (userinfo or `?password=`), raw and percent-decoded."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
        found = [parts.password or ""]
        found += parse_qs(parts.query).get("password", [])
    except ValueError:
        return []
    out: list[str] = []
    for value in found:
        for form in (value, unquote(value)):
            if form and form not in out:
                out.append(form)
    return out


def url_secrets(url: str) -> list[str]:
    """The password and key-like query values (`?api_key=`, `token=`, ...) of a URL."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
        found = [parts.password or ""]
        for pair in parts.query.split("&"):
            name, _, value = pair.partition("=")
            if any(word in name.lower() for word in ("key", "token", "secret", "auth", "pass")):
                found.append(value)
    except ValueError:
        return []
    return [v for value in found for v in dict.fromkeys((value, unquote(value))) if v]


def secrets_from_config(config: Config) -> list[str]:
    """Every secret value in the loaded configuration, for `setup_logging(secrets=...)`."""
    values = [config.discord.token, config.llm.api_key, *redis_url_secrets(config.redis.url)]
    for server in config.mcp.servers:  # tool servers' environment and headers: API keys
        values += [*server.env.values(), *server.headers.values(), *url_secrets(server.url)]
    values += [provider.api_key for provider in config.providers.values()]
    return [v for v in values if v]


def setup_logging(
    config: LoggingConfig,
    secrets: Iterable[str | None] = (),
    *,
    stream: IO[str] | None = None,
) -> RedactingFilter:
    """Configure the root logger once for the whole process.

    Installs one handler on the root logger (replacing one installed by an earlier call)
    writing to `stream` (default stderr) with the configured format and the process-wide
    redacting filter, sets the level, quiets `NOISY_LOGGERS` unless the level is DEBUG,
    and routes `warnings.warn` into logging. Returns the filter so callers can add
    secrets they learn later.
    """
    for secret in secrets:
        _REDACTOR.add_secret(secret)

    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
            old.close()

    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.addFilter(_REDACTOR)
    formatter: logging.Formatter = (
        JsonFormatter(_REDACTOR) if config.format == "json" else TextFormatter(_REDACTOR)
    )
    handler.setFormatter(formatter)
    root.addHandler(handler)

    level = logging.getLevelName(config.level.upper())
    root.setLevel(level)
    for name in NOISY_LOGGERS:
        # NOTSET hands the decision back to the root level, so DEBUG shows everything.
        logging.getLogger(name).setLevel(
            logging.NOTSET if level == logging.DEBUG else logging.WARNING
        )
    logging.captureWarnings(True)
    return _REDACTOR
