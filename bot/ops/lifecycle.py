"""Process life: stop signals and the terminal chat's stdin thread.

Why a module of its own: a signal may arrive at any stage (while the embedded Redis
starts, while the gateway connects, while replies stream), and each stage must unwind
what it started. `Shutdown` turns signals into that orderly stop; `__main__` only says
which stages exist.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class DaemonThreadExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs each call in a new daemon thread, and `shutdown` waits for none of them.

    For the terminal chat: its worker thread may sit in `input()` when the user presses
    Ctrl-C, and a regular thread pool would keep the process alive until Enter (both
    asyncio's executor shutdown and the interpreter's exit join pool threads). asyncio
    only accepts a ThreadPoolExecutor as default executor; no pool threads are used.
    """

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self._running: set[threading.Thread] = set()

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def work() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

        thread = threading.Thread(target=work, name="bot-io", daemon=True)
        self._running = {t for t in self._running if t.is_alive()} | {thread}
        thread.start()
        return future

    @property
    def busy(self) -> bool:
        """Whether a call is still running (e.g. blocked reading stdin)."""
        return any(t.is_alive() for t in self._running)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


def stop_signals(*, interrupt: bool) -> list[signal.Signals]:
    """SIGTERM, SIGHUP unless it is ignored (as under nohup), and SIGINT if asked."""
    found = [signal.SIGTERM]
    hangup = getattr(signal, "SIGHUP", None)
    if hangup is not None and signal.getsignal(hangup) is not signal.SIG_IGN:
        found.append(hangup)
    if interrupt:
        found.append(signal.SIGINT)
    return found


class Shutdown:
    """Turns a stop signal into an orderly stop, at every stage of a command's life.

    Without handlers, SIGTERM kills Python on the spot: an embedded redis-server started
    a moment earlier would outlive the bot. Until `graceful` takes over (it returns True
    once the bot is connected and can let replies finish), a signal cancels the main task,
    so the `async with` blocks unwind and stop what they started; `with Shutdown(...)`
    then swallows that cancellation, and the command ends normally.

    Python 3.11's `asyncio.wait_for` (inside redis-py and discord.py) drops a cancellation
    that arrives just as what it waits for completes, so a cancel alone may go unnoticed:
    `checkpoint()` after each start-up stage and `ChatBot.after_launch` finish the job.
    """

    def __init__(self, signals: Sequence[signal.Signals]) -> None:
        self.signals = list(signals)
        self.requested: str | None = None
        self.graceful: Callable[[], bool] | None = None
        self._task: asyncio.Task[Any] | None = None
        self._installed: list[signal.Signals] = []

    def __enter__(self) -> Shutdown:
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        for sig in self.signals:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._on_signal, sig.name)
                self._installed.append(sig)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> bool:
        loop = asyncio.get_running_loop()
        for sig in self._installed:
            loop.remove_signal_handler(sig)
        self._installed.clear()
        return exc_type is asyncio.CancelledError and self.requested is not None

    def _on_signal(self, signame: str) -> None:
        if self.requested is not None:
            log.info("%s received: already shutting down", signame)
            return
        self.requested = signame
        log.info("%s received: shutting down", signame)
        if self.graceful is not None and self.graceful():
            return
        if self._task is not None:
            self._task.cancel()

    def checkpoint(self) -> None:
        """Raise CancelledError if a stop was asked for (and its cancel got lost)."""
        if self.requested is not None:
            raise asyncio.CancelledError
