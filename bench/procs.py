"""Child processes of the benchmark: the real bot and the loopback LLM.

Why processes: the bot must run unmodified, as `python -m bot` does, and its CPU time
and memory are measured on its own process with psutil. Every child is started by
pid, bounded in time, and stopped by pid (SIGTERM, then SIGKILL after a grace time),
so a failed run leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import psutil

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Child:
    """One child process with its log file."""

    name: str
    proc: asyncio.subprocess.Process
    log_path: Path
    ps: psutil.Process = field(init=False)

    def __post_init__(self) -> None:
        self.ps = psutil.Process(self.proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """User + system CPU time so far."""
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def peak_rss(self) -> int:
        """The kernel's high-water mark of the resident set (VmHWM), in bytes."""
        with open(f"/proc/{self.pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return self.rss()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self, grace: float = 15.0) -> int:
        """SIGTERM, wait up to `grace` seconds, then SIGKILL. Returns the exit code."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode or 0


def _log_file(path: Path) -> BinaryIO:
    """A child's log file (opened here: a quick local operation, fine on the loop)."""
    return open(path, "wb")


def _read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
    )
    env.update(extra)
    return env


async def start_llm(
    workdir: Path, *, ttft: float, tps: float, records: Path, within: float = 30.0
) -> tuple[Child, str]:
    """Start `bench.llm_server`; returns the child and its base URL."""
    log_path = workdir / "llm.log"
    with _log_file(log_path) as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.llm_server",
            "--ttft",
            str(ttft),
            "--tps",
            str(tps),
            "--records",
            str(records),
            cwd=ROOT,
            env=_env({}),
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )
    child = Child("llm", proc, log_path)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), within)
    except BaseException:
        await child.stop(2)
        raise
    url = line.decode().strip()
    if not url.startswith("http://127.0.0.1:"):
        await child.stop(2)
        raise RuntimeError(f"the LLM server did not start: {child.log_tail()}")
    return child, url


async def stop_llm(child: Child, records: Path) -> dict[str, Any]:
    """Stop the LLM server and read the records it wrote on exit."""
    await child.stop(20)
    try:
        data = _read_json(records)
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"the LLM server wrote no records: {child.log_tail()}") from exc
    return data


def bot_config_toml(
    *,
    token: str,
    llm_url: str,
    redis_url: str,
    edit_interval: float,
    stream_rate: float,
    max_tokens: int,
) -> str:
    """The bot's config.toml for a run: defaults except what a benchmark must set.

    The user cooldown is off (one user asks in every channel), and the model's limits
    are large enough for the longest reply.
    """
    return f"""\
[discord]
token = "{token}"
edit_interval = {edit_interval}
stream_rate = {stream_rate}
user_cooldown_s = 0
user_burst = 1000
shutdown_grace_s = 2

[llm]
base_url = "{llm_url}"
api_key = "sk-bench"
model = "bench-model"
max_tokens = {max_tokens}
context_tokens = {max(8192, max_tokens * 4)}
first_token_timeout = 30
idle_timeout = 30
total_timeout = 900
max_retries = 0

[redis]
url = "{redis_url}"
key_prefix = "bench"

[logging]
level = "INFO"
"""


async def start_bot(
    workdir: Path, config_text: str, api_base: str, gateway_url: str, *, within: float = 90.0
) -> Child:
    """Start the real bot (`tests.standin.run_bot`) and wait until it logged `on_ready`."""
    config_path = workdir / "config.toml"
    config_path.write_text(config_text)
    log_path = workdir / "bot.log"
    with _log_file(log_path) as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.standin.run_bot",
            "--config",
            str(config_path),
            "run",
            cwd=ROOT,
            env=_env({"STANDIN_DISCORD_API": api_base, "STANDIN_DISCORD_GATEWAY": gateway_url}),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
        )
    child = Child("bot", proc, log_path)
    deadline = time.monotonic() + within
    try:
        while "connected as" not in child.log_tail(1000):
            if proc.returncode is not None:
                raise RuntimeError(f"the bot exited at start:\n{child.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the bot was not ready in {within:g} s:\n{child.log_tail()}")
            await asyncio.sleep(0.1)
    except BaseException:
        await child.stop(5)
        raise
    return child


async def start_py_spy(pid: int, out: Path) -> asyncio.subprocess.Process:
    """Sample `pid` with py-spy (for finding hot spots; optional, not a dependency)."""
    exe = Path(sys.executable).with_name("py-spy")
    proc = await asyncio.create_subprocess_exec(
        str(exe) if exe.exists() else "py-spy",
        "record",
        "--pid",
        str(pid),
        "--rate",
        "250",
        "--format",
        "raw",
        "--output",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await asyncio.sleep(0.5)  # let it attach before the measured part starts
    return proc


async def stop_py_spy(proc: asyncio.subprocess.Process) -> None:
    """SIGINT makes py-spy write its output; kill it if it does not end in time."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()
