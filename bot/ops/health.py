"""Optional HTTP endpoints for orchestration: `/healthz` and `/metrics`.

Why a separate small aiohttp server instead of anything Discord-side: Docker's
HEALTHCHECK, a Kubernetes probe or Prometheus need a plain HTTP answer about this process,
and aiohttp is already a dependency. It is off by default (`[health] enabled = false`)
because an open port is something the operator should choose; it binds to 127.0.0.1
unless the config says otherwise (a container sets `host = "0.0.0.0"`).

The checks are injected as callables so this module knows nothing about discord.py or
Redis: the runner passes e.g. `{"gateway": is_gateway_ready, "redis": redis_ping}`.
Each check is bounded by a short timeout, so a hung Redis makes `/healthz` answer 503
quickly instead of hanging the probe.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from bot.config import HealthConfig
from bot.ops.metrics import CONTENT_TYPE, Metrics

log = logging.getLogger(__name__)

# A check answers "is this part healthy?". Async checks are awaited; a plain function
# returning bool is accepted too for cheap in-memory checks (it must not block).
Check = Callable[[], Awaitable[bool] | bool]

# Seconds one check may take before it counts as failed. Well under Docker's default
# HEALTHCHECK timeout (30 s) and the 5 s the bundled Dockerfile uses.
DEFAULT_CHECK_TIMEOUT = 2.0


class HealthServer:
    """Serves `/healthz` (JSON, 200 or 503) and `/metrics` (Prometheus text).

    `start()` does nothing when `config.enabled` is false, so the runner can always
    construct and start it. With `config.port = 0` the OS picks a free port, which
    `port` reports after `start()` (for tests).
    """

    def __init__(
        self,
        config: HealthConfig,
        metrics: Metrics,
        checks: Mapping[str, Check] | None = None,
        *,
        check_timeout: float = DEFAULT_CHECK_TIMEOUT,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.checks: dict[str, Check] = dict(checks or {})
        self.check_timeout = check_timeout
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._port: int | None = None

    # --- lifecycle -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the HTTP server is listening."""
        return self._runner is not None

    @property
    def port(self) -> int | None:
        """The bound TCP port once started (the real one when configured as 0)."""
        return self._port

    @property
    def url(self) -> str | None:
        """Base URL of the running server, e.g. "http://127.0.0.1:8080"."""
        if self._port is None:
            return None
        host = self.config.host
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self._port}"

    def build_app(self) -> web.Application:
        """The aiohttp application (exposed for tests that use aiohttp's test client)."""
        app = web.Application()
        app.router.add_get("/healthz", self._handle_healthz)
        app.router.add_get("/metrics", self._handle_metrics)
        return app

    async def start(self) -> None:
        """Bind and start serving, unless health is disabled or already running.

        Raises OSError when the address cannot be bound (e.g. the port is taken), so the
        runner can stop with a clear message instead of running without its probe.
        """
        if not self.config.enabled or self._runner is not None:
            return
        # No access log: a probe every few seconds would drown the bot's own lines.
        runner = web.AppRunner(self.build_app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.config.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._site = runner, site
        self._port = self._bound_port(runner) or self.config.port
        log.info("health server listening on %s:%d", self.config.host, self._port)

    async def stop(self) -> None:
        """Stop serving and release the port; safe to call when not running."""
        runner, self._runner, self._site = self._runner, None, None
        self._port = None
        if runner is not None:
            await runner.cleanup()

    @staticmethod
    def _bound_port(runner: web.AppRunner) -> int | None:
        addresses: list[Any] = list(runner.addresses)
        for address in addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                return int(address[1])
        return None

    # --- checks --------------------------------------------------------------------------

    async def _run_check(self, name: str, check: Check) -> tuple[bool, str | None]:
        """Run one check: (passed, reason). Never raises; the reason never holds
        exception text, which could carry connection strings."""
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(result, self.check_timeout)
        except TimeoutError:
            return False, "timeout"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("health check %r raised %s", name, type(exc).__name__)
            return False, f"error: {type(exc).__name__}"
        if result:
            return True, None
        return False, "failed"

    async def run_checks(self) -> dict[str, tuple[bool, str | None]]:
        """Run all checks concurrently and return name -> (passed, reason)."""
        names = list(self.checks)
        results = await asyncio.gather(*(self._run_check(n, self.checks[n]) for n in names))
        return dict(zip(names, results, strict=True))

    # --- handlers ------------------------------------------------------------------------

    async def _handle_healthz(self, request: web.Request) -> web.Response:
        results = await self.run_checks()
        failed = [name for name, (ok, _) in results.items() if not ok]
        body: dict[str, Any] = {"status": "fail" if failed else "ok"}
        body.update({name: ok for name, (ok, _) in results.items()})
        if failed:
            body["failed"] = failed
            body["reasons"] = {name: results[name][1] for name in failed}
        return web.Response(
            status=503 if failed else 200,
            text=json.dumps(body),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def _handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render(),
            headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"},
        )
