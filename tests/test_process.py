"""The real bot as an operator runs it: its own process, signals, exit codes, logs, probes.

Every bot here is `python -m bot` unmodified (through `tests.standin.run_bot`, which only
points discord.py at the loopback Discord stand-in), talking to the LLM stand-in and a real
Redis. Each scenario runs once in a module-scoped fixture (its own event loop, its own
stand-ins, every process it starts killed by process group at the end, also on failure)
and records what happened; the small tests below each check one promise about it:

- SIGTERM mid-stream with a short grace: exit 0, the reply ends with the "Interrupted"
  note and no in-progress marker, later messages get no answer, Redis (the bot's own,
  embedded one) holds only completed turns, and its redis-server process is gone.
- SIGTERM with a grace long enough: the reply completes and is on disk (AOF flushed).
- Two processes on one Redis both seeing one channel's messages: one answer each, history
  complete and in pairs; two processes with `shard_ids` [0] / [1]: each its own guild.
- The CLI: no token, a bad config value, `sync` (guild and global), a bad token, the
  Message Content intent switched off, Redis unreachable at start.
- Logs (one INFO line per reply, no texts, JSON format, no secrets) and /healthz, /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import psutil
import pytest
import redis

from bot.memory.redis_server import EmbeddedRedis
from bot.models import Turn
from tests.standin.discord_api import DiscordStandIn
from tests.standin.discord_models import MessageRecord
from tests.standin.llm_api import Behavior, LLMStandIn

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TOKEN = "proc-bot-token-SECRET-5f1c0e"
API_KEY = "sk-proc-SECRET-9a7d21"
PREFIX = "proc"
MARKER = "⏳"
INTERRUPTED = "Interrupted: the bot is restarting"
REPLY_LINE = re.compile(
    r"reply channel=(\d+) prompt_tokens=\d+ completion_tokens=\d+(?: \(estimated\))? "
    r"first_token=[\d.]+s total=[\d.]+s finish=\w+ history=\d+"
)
# Variables that would override the configs written here.
OVERRIDES = ("DISCORD_TOKEN", "LLM_API_KEY", "REDIS_URL", "BOT_CONFIG")

T = TypeVar("T")


# --- processes ------------------------------------------------------------------------


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OVERRIDES}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


@dataclass
class BotProcess:
    """One bot process; stdout and stderr go to files (no pipe can fill up and block)."""

    name: str
    proc: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path
    started: float = field(default_factory=time.monotonic)
    # Filled by `freeze()`, so the output outlives the scenario's temp dir.
    _frozen: tuple[str, str] | None = None
    # The redis-server processes seen under it, stopped by `kill()` if still there.
    _children: list[psutil.Process] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stderr(self) -> str:
        if self._frozen is not None:
            return self._frozen[1]
        return self.err_path.read_text(errors="replace")

    @property
    def stdout(self) -> str:
        if self._frozen is not None:
            return self._frozen[0]
        return self.out_path.read_text(errors="replace")

    def freeze(self) -> None:
        if self._frozen is None:
            self._frozen = (self.stdout, self.stderr)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def redis_server_pids(self) -> list[int]:
        """The server processes this bot started (its embedded Redis: valkey-server)."""
        try:
            children = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        found = [c for c in children if c.name().endswith(("redis-server", "valkey-server"))]
        self._children += found
        return [c.pid for c in found]

    async def wait_log(self, text: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while text not in self.stderr:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no {text!r} in stderr:\n{self.stderr[-3000:]}")
            if not self.running:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.stderr}")
            await asyncio.sleep(0.05)

    async def wait_exit(self, timeout: float) -> int:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} still running after {timeout} s:\n{self.stderr}")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the bot's process group while it runs, and any Redis it left behind."""
        if self.proc.poll() is None:  # still ours: its pid is its process group's id
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        for child in self._children:
            # is_running() also checks the start time, so a reused pid is left alone.
            with contextlib.suppress(psutil.Error):
                if child.is_running():
                    child.kill()
        if self.proc.stdin is not None:
            self.proc.stdin.close()


class Processes:
    """Starts bot processes and guarantees they are gone afterwards."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.all: list[BotProcess] = []

    def start(
        self,
        name: str,
        args: list[str],
        *,
        env: dict[str, str],
        cwd: Path = ROOT,
        stdin: int = subprocess.DEVNULL,
    ) -> BotProcess:
        out_path = self.workdir / f"{name}.out"
        err_path = self.workdir / f"{name}.err"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                args,
                cwd=cwd,
                env=env,
                stdin=stdin,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group, killed as one at the end
            )
        bot = BotProcess(name, proc, out_path, err_path)
        self.all.append(bot)
        return bot

    def close(self) -> None:
        for bot in self.all:
            bot.kill()
            bot.freeze()


def standin_env(standin: DiscordStandIn, **extra: str) -> dict[str, str]:
    env = {
        "STANDIN_DISCORD_API": standin.api_base,
        "STANDIN_DISCORD_GATEWAY": standin.gateway_url,
        "DISCORD_TOKEN": TOKEN,
        "LLM_API_KEY": API_KEY,
    }
    env.update(extra)
    return base_env(**env)


def run_bot_args(config: Path, *command: str) -> list[str]:
    return [PYTHON, "-m", "tests.standin.run_bot", "--config", str(config), *command]


# --- configs --------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def bot_config(
    llm_url: str,
    *,
    redis_url: str = "",
    data_dir: Path | None = None,
    discord: dict[str, Any] | None = None,
    **sections: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """A config for a bot process; the token and API key come from the environment."""
    redis_section: dict[str, Any] = {"url": redis_url, "key_prefix": PREFIX}
    if data_dir is not None:
        redis_section["data_dir"] = str(data_dir)
    config: dict[str, dict[str, Any]] = {
        "discord": {"user_cooldown_s": 0, "shutdown_grace_s": 5, **(discord or {})},
        "llm": {
            "base_url": llm_url,
            "model": "stand-in",
            "max_tokens": 400,
            "context_tokens": 4000,
            "first_token_timeout": 5,
            "idle_timeout": 5,
            "max_retries": 0,
        },
        "redis": redis_section,
    }
    config.update(sections)
    return config


# --- helpers ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mention(standin: DiscordStandIn, text: str) -> str:
    return f"<@{standin.bot_user.id}> {text}"


def replies_to(standin: DiscordStandIn, message: MessageRecord) -> list[MessageRecord]:
    """The bot's messages answering `message`: the first part, then its reply chain."""
    parts: list[MessageRecord] = []
    target = message.id
    while True:
        bot_messages = standin.bot_messages_in(message.channel_id)
        nxt = next((m for m in bot_messages if m.referenced_message_id == target), None)
        if nxt is None:
            return parts
        parts.append(nxt)
        target = nxt.id


async def final_reply(
    standin: DiscordStandIn,
    message: MessageRecord,
    timeout: float = 20,  # noqa: ASYNC109
) -> list[MessageRecord]:
    """Wait until the reply to `message` is complete (no part shows the marker)."""

    def done() -> list[MessageRecord]:
        parts = replies_to(standin, message)
        return parts if parts and not any(MARKER in p.content for p in parts) else []

    result: list[MessageRecord] = await standin.wait_for(done, timeout=timeout)
    return result


def read_history(url: str, channel_id: int, *, cluster: bool = False) -> list[Turn]:
    client: Any = (
        redis.RedisCluster.from_url(url, decode_responses=True)
        if cluster
        else redis.Redis.from_url(url, decode_responses=True)
    )
    try:
        raw = client.lrange(f"{PREFIX}:{{c{channel_id}}}:history", 0, -1)
        return [Turn.from_json(r) for r in raw]  # type: ignore[union-attr]
    finally:
        client.close()


def key_exists(url: str, key: str) -> bool:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return bool(client.exists(key))
    finally:
        client.close()


def pid_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@dataclass
class Outcome:
    """What one scenario left behind: the stand-ins' records, the processes, facts."""

    standin: DiscordStandIn
    llm: LLMStandIn
    bots: dict[str, BotProcess]
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def all_logs(self) -> str:
        return "\n".join(b.stderr + b.stdout for b in self.bots.values())


@contextlib.asynccontextmanager
async def world(
    workdir: Path, *, standin_kwargs: dict[str, Any] | None = None
) -> AsyncIterator[tuple[DiscordStandIn, LLMStandIn, Processes]]:
    procs = Processes(workdir)
    try:
        async with (
            DiscordStandIn(token=TOKEN, **(standin_kwargs or {})) as standin,
            LLMStandIn() as llm,
        ):
            yield standin, llm, procs
    finally:
        procs.close()


def run_scenario(fn: Callable[[Path], Coroutine[Any, Any, T]]) -> T:
    """Run one async scenario in its own event loop, in a fresh temp dir."""
    with tempfile.TemporaryDirectory(prefix="llmbot-proc-") as tmp:
        return asyncio.run(fn(Path(tmp)))


def guild_on_shard(standin: DiscordStandIn, shard: int, count: int) -> int:
    """A fresh guild id that Discord's routing puts on `shard` of `count`."""
    gid = standin.ids.next()
    while (gid >> 22) % count != shard:
        gid += 1 << 22
    return gid


# === 1a. SIGTERM ======================================================================


async def _sigterm_scenario(workdir: Path, *, grace: float, slow: Behavior) -> Outcome:
    data_dir = workdir / "redis-data"
    async with world(workdir) as (standin, llm, procs):
        _, channel, user = standin.populate()
        config = write_config(
            workdir / "config.toml",
            bot_config(
                llm.base_url,
                data_dir=data_dir,
                discord={"shutdown_grace_s": grace, "edit_interval": 0.5},
            ),
        )
        bot = procs.start("bot", run_bot_args(config), env=standin_env(standin))
        await standin.wait_connected(1, timeout=30)
        redis_pids = bot.redis_server_pids()

        # One complete exchange first: it must survive the restart.
        llm.push(Behavior(reply="The first answer, complete.", tps=50), slow)
        first = await standin.dispatch_message(channel, user, mention(standin, "first question"))
        first_parts = await final_reply(standin, first)

        second = await standin.dispatch_message(channel, user, mention(standin, "second question"))
        await standin.wait_for(
            lambda: (p := replies_to(standin, second)) and len(p[0].history) >= 2, timeout=10
        )
        bot.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await bot.wait_log("SIGTERM received", timeout=5)
        late = await standin.dispatch_message(channel, user, mention(standin, "are you there?"))
        returncode = await bot.wait_exit(30)
        exit_after = time.monotonic() - signalled
        await asyncio.sleep(0.3)  # anything the bot still had in flight has landed

        # The bot's Redis is gone; start one on the same data dir, as the next run would.
        with EmbeddedRedis(data_dir) as reopened:
            history = read_history(reopened.url, channel)
            lock_left = key_exists(reopened.url, f"{PREFIX}:{{c{channel}}}:lock")
        return Outcome(
            standin,
            llm,
            {"bot": bot},
            {
                "channel": channel,
                "first": first,
                "first_parts": first_parts,
                "second": second,
                "second_parts": replies_to(standin, second),
                "late": late,
                "late_parts": replies_to(standin, late),
                "returncode": returncode,
                "exit_after": exit_after,
                "redis_pids": redis_pids,
                "history": history,
                "lock_left": lock_left,
                "chat_requests": len(llm.chat_requests),
            },
        )


@pytest.fixture(scope="module")
def sigterm_cut() -> Outcome:
    """SIGTERM while a 20 s reply streams, grace 1 s: the reply is interrupted."""
    return run_scenario(
        lambda d: _sigterm_scenario(d, grace=1, slow=Behavior(reply_tokens=200, tps=10))
    )


@pytest.fixture(scope="module")
def sigterm_graceful() -> Outcome:
    """SIGTERM while a 2 s reply streams, grace 10 s: the reply completes."""
    return run_scenario(
        lambda d: _sigterm_scenario(d, grace=10, slow=Behavior(reply_tokens=20, tps=10))
    )


def test_sigterm_exits_0_within_the_grace_and_a_bound(sigterm_cut: Outcome) -> None:
    f = sigterm_cut.facts
    assert f["returncode"] == 0, sigterm_cut.bots["bot"].stderr
    # 1 s grace + the interrupted note's edit (Discord's edit bucket may make it wait)
    assert f["exit_after"] < 12
    assert "stopped" in sigterm_cut.bots["bot"].stderr


def test_sigterm_ends_the_running_reply_with_the_interrupted_note(sigterm_cut: Outcome) -> None:
    parts = sigterm_cut.facts["second_parts"]
    assert parts, "the reply had started before SIGTERM"
    assert INTERRUPTED in parts[-1].content
    assert all(MARKER not in p.content for p in parts), [p.content for p in parts]
    # What had streamed stays visible above the note.
    assert parts[0].content.split(INTERRUPTED)[0].strip(" \n⚠️")


def test_sigterm_logs_the_interruption_without_a_traceback(sigterm_cut: Outcome) -> None:
    err = sigterm_cut.bots["bot"].stderr
    assert "Traceback" not in err
    assert re.search(r"reply channel=\d+ failed kind=interrupted", err)
    assert "shutting down: interrupting 1 replies" in err


def test_a_healthy_start_logs_no_warning(sigterm_cut: Outcome, health: Outcome) -> None:
    err = sigterm_cut.bots["bot"].stderr.split("SIGTERM received")[0]
    assert [line for line in err.splitlines() if " WARNING " in line or " ERROR " in line] == []
    entries = json_lines(health.bots["bot"].stderr)
    before_redis_died = entries[: next(i for i, e in enumerate(entries) if "reply" in e["msg"])]
    assert [e for e in before_redis_died if e["level"] != "INFO"] == []


def test_messages_after_sigterm_get_no_answer(sigterm_cut: Outcome) -> None:
    f = sigterm_cut.facts
    assert f["late"].delivered_to, "the bot's gateway session still got the message"
    assert f["late_parts"] == []
    assert f["chat_requests"] == 2, "the late message never reached the model"


def test_sigterm_stores_only_completed_turns(sigterm_cut: Outcome) -> None:
    f = sigterm_cut.facts
    history: list[Turn] = f["history"]
    assert [(t.role, t.message_id) for t in history] == [
        ("user", f["first"].id),
        ("assistant", None),
    ]
    assert history[0].content == "first question"
    assert history[1].content == "The first answer, complete." == f["first_parts"][-1].content
    assert not f["lock_left"], "the channel lock was released"


def test_sigterm_leaves_no_redis_server_behind(sigterm_cut: Outcome) -> None:
    pids = sigterm_cut.facts["redis_pids"]
    assert len(pids) == 1, "the bot started its own redis-server (redis.url empty)"
    assert pid_gone(pids[0])
    assert "embedded Redis stopped" in sigterm_cut.bots["bot"].stderr


def test_sigterm_with_enough_grace_completes_and_stores_the_reply(
    sigterm_graceful: Outcome,
) -> None:
    f = sigterm_graceful.facts
    assert f["returncode"] == 0, sigterm_graceful.bots["bot"].stderr
    parts = f["second_parts"]
    assert parts and all(MARKER not in p.content for p in parts)
    assert not any(INTERRUPTED in p.content for p in parts)
    expected = sigterm_graceful.llm.chat_requests[1].text
    assert "".join(p.content for p in parts).replace("\n", " ").split() == expected.split()
    history: list[Turn] = f["history"]
    assert [t.role for t in history] == ["user", "assistant"] * 2
    assert history[2].content == "second question"
    assert history[2].message_id == f["second"].id
    assert history[3].content == expected, "the AOF was flushed when the bot stopped its Redis"
    assert f["late_parts"] == []
    assert all(pid_gone(p) for p in f["redis_pids"])


# === 1b. several processes on one Redis ==============================================


@contextlib.contextmanager
def shared_redis(workdir: Path, cluster_url: str | None) -> Iterator[SharedRedis]:
    """The Redis both processes share: a fresh embedded server, or the session's cluster."""
    if cluster_url is not None:
        yield SharedRedis(cluster_url, cluster=True)
        return
    with EmbeddedRedis(workdir / "shared-redis") as server:
        yield SharedRedis(server.url)


@dataclass(frozen=True)
class SharedRedis:
    url: str
    cluster: bool = False


async def _shared_channel_scenario(workdir: Path, cluster_url: str | None = None) -> Outcome:
    with shared_redis(workdir, cluster_url) as server:
        async with world(workdir) as (standin, llm, procs):
            _, channel, user = standin.populate()
            llm.default = Behavior(ttft=0.3, tps=20)  # an echo, slow enough to overlap
            config = write_config(
                workdir / "config.toml",
                bot_config(llm.base_url, redis_url=server.url, discord={"edit_interval": 0.5}),
            )
            bots = {
                name: procs.start(name, run_bot_args(config), env=standin_env(standin))
                for name in ("a", "b")
            }
            sessions = [s.session_id for s in await standin.wait_connected(2, timeout=30)]
            sent: list[tuple[MessageRecord, str]] = []
            for i in range(6):
                session = sessions[i % 2]
                msg = await standin.dispatch_message(
                    channel, user, mention(standin, f"message number {i}"), session_id=session
                )
                sent.append((msg, session))
                # Apart by more than the two processes' jitter in reaching Redis (messages
                # within a few ms of each other are simultaneous: whichever process asks
                # first goes first), and well within one reply's time, so a line forms.
                await asyncio.sleep(0.15)
            for msg, _ in sent:
                await final_reply(standin, msg, timeout=30)
            await asyncio.sleep(0.5)  # a duplicate answer would show up by now
            history = read_history(server.url, channel, cluster=server.cluster)
            answers = {msg.id: replies_to(standin, msg) for msg, _ in sent}
            for bot in bots.values():
                bot.proc.send_signal(signal.SIGTERM)
            codes = [await bot.wait_exit(20) for bot in bots.values()]
            return Outcome(
                standin,
                llm,
                bots,
                {
                    "channel": channel,
                    "sent": sent,
                    "sessions": sessions,
                    "answers": answers,
                    "history": history,
                    "codes": codes,
                    "bot_messages": standin.bot_messages_in(channel),
                },
            )


@pytest.fixture(scope="module")
def shared_channel() -> Outcome:
    return run_scenario(_shared_channel_scenario)


def test_two_processes_answer_each_message_of_a_shared_channel_once(
    shared_channel: Outcome,
) -> None:
    f = shared_channel.facts
    assert all(m.delivered_to == [s] for m, s in f["sent"]), "each went to one process"
    assert {s for _, s in f["sent"]} == set(f["sessions"]), "both processes got some"
    for msg, _ in f["sent"]:
        parts = f["answers"][msg.id]
        assert len(parts) == 1, (msg.content, [p.content for p in parts])
        number = msg.content.rsplit(" ", 1)[-1]
        assert parts[0].content.endswith(f"message number {number}")
    assert len(f["bot_messages"]) == 6
    assert len(shared_channel.llm.chat_requests) == 6
    assert f["codes"] == [0, 0]


def test_two_processes_keep_the_shared_history_complete_and_in_pairs(
    shared_channel: Outcome,
) -> None:
    f = shared_channel.facts
    history: list[Turn] = f["history"]
    assert len(history) == 12
    for user_turn, answer in zip(history[::2], history[1::2], strict=True):
        assert user_turn.role == "user" and answer.role == "assistant"
        assert answer.content == f"Echo: {user_turn.author_name}: {user_turn.content}"
    ids = [t.message_id for t in history[::2]]
    assert sorted(ids) == sorted(m.id for m, _ in f["sent"])
    # Each process answers what it saw in arrival order.
    for session in {s for _, s in f["sent"]}:
        mine = [m.id for m, s in f["sent"] if s == session]
        assert [i for i in ids if i in mine] == mine


def test_two_processes_answer_a_shared_channel_in_arrival_order(shared_channel: Outcome) -> None:
    ids = [t.message_id for t in shared_channel.facts["history"][::2]]
    assert ids == sorted(ids)


@pytest.fixture(scope="module")
def shared_channel_on_cluster(redis_cluster: Any) -> Outcome:
    redis_cluster.flushall()
    return run_scenario(lambda workdir: _shared_channel_scenario(workdir, redis_cluster.url))


def test_two_processes_on_a_cluster_answer_a_shared_channel_once_and_in_order(
    shared_channel_on_cluster: Outcome,
) -> None:
    f = shared_channel_on_cluster.facts
    for msg, _ in f["sent"]:
        assert len(f["answers"][msg.id]) == 1
    history: list[Turn] = f["history"]
    assert [t.role for t in history] == ["user", "assistant"] * 6
    ids = [t.message_id for t in history[::2]]
    assert ids == sorted(m.id for m, _ in f["sent"]), "arrival order across processes"
    assert f["codes"] == [0, 0]


async def _sharded_scenario(workdir: Path) -> Outcome:
    with EmbeddedRedis(workdir / "shared-redis") as server:
        async with world(workdir) as (standin, llm, procs):
            user = standin.add_user("alice")
            channels = []
            for shard in (0, 1):
                guild = standin.add_guild(
                    f"Guild {shard}", guild_id=guild_on_shard(standin, shard, 2)
                )
                channels.append(standin.add_channel(guild, "general"))
                standin.add_member(guild, user)
            bots = {}
            for shard in (0, 1):
                config = write_config(
                    workdir / f"config-{shard}.toml",
                    bot_config(
                        llm.base_url,
                        redis_url=server.url,
                        discord={"shard_count": 2, "shard_ids": [shard]},
                    ),
                )
                bots[f"shard{shard}"] = procs.start(
                    f"shard{shard}", run_bot_args(config), env=standin_env(standin)
                )
            sessions = await standin.wait_connected(2, timeout=30)
            messages = []
            for shard, channel in enumerate(channels):
                for n in range(2):
                    msg = await standin.dispatch_message(
                        channel, user, mention(standin, f"guild {shard} question {n}")
                    )
                    messages.append(msg)
            for msg in messages:
                await final_reply(standin, msg)
            await asyncio.sleep(0.3)
            for bot in bots.values():
                bot.proc.send_signal(signal.SIGTERM)
            codes = [await bot.wait_exit(20) for bot in bots.values()]
            return Outcome(
                standin,
                llm,
                bots,
                {
                    "channels": channels,
                    "messages": messages,
                    "shards": sorted(s.shard for s in sessions if s.shard),
                    "histories": [read_history(server.url, c) for c in channels],
                    "codes": codes,
                },
            )


@pytest.fixture(scope="module")
def sharded() -> Outcome:
    return run_scenario(_sharded_scenario)


def test_sharded_processes_each_answer_only_their_guild(sharded: Outcome) -> None:
    f = sharded.facts
    assert f["shards"] == [(0, 2), (1, 2)]
    for msg in f["messages"]:
        assert len(msg.delivered_to) == 1
        assert len(replies_to(sharded.standin, msg)) == 1
    for shard, channel in enumerate(f["channels"]):
        mine = {int(c) for c in REPLY_LINE.findall(sharded.bots[f"shard{shard}"].stderr)}
        assert mine == {channel}, f"shard {shard} answered in {mine}"
        assert [t.role for t in f["histories"][shard]] == ["user", "assistant"] * 2
    assert f["codes"] == [0, 0]


# === 1c. command line ==================================================================


def run_cli(
    args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_no_token_says_where_to_put_one_and_exits_2(tmp_path: Path) -> None:
    for command in ([], ["run"], ["sync"]):
        done = run_cli([PYTHON, "-m", "bot", *command], cwd=tmp_path, env=base_env())
        assert done.returncode == 2, done.stderr
        assert "No Discord bot token is configured" in done.stderr
        assert "export DISCORD_TOKEN=" in done.stderr
        assert "[discord]" in done.stderr and 'token = "your-token"' in done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "data").exists(), "no Redis was started for nothing"


@pytest.mark.parametrize(
    ("toml", "line"),
    [
        (
            "[llm]\ntemperature = 5\n",
            "Config error: llm.temperature = 5: must be a number from 0 to 2",
        ),
        (
            "[discord]\nshard_count = -1\n",
            "Config error: discord.shard_count = -1: must be a number of at least 0",
        ),
        ("[redis]\nurl = 'http://x'\n", "Config error: redis.url = 'http://x': must be empty or"),
        ("[discrod]\ntoken = 'x'\n", "Config error: discrod: unknown key; allowed here:"),
    ],
)
def test_bad_config_value_is_one_line_naming_the_key(tmp_path: Path, toml: str, line: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(toml)
    done = run_cli(
        [PYTHON, "-m", "bot", "--config", str(config)],
        cwd=tmp_path,
        env=base_env(DISCORD_TOKEN=TOKEN),
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(line), done.stderr


async def _sync_scenario(workdir: Path) -> Outcome:
    async with world(workdir) as (standin, llm, procs):
        guild, _, _ = standin.populate()
        config = write_config(
            workdir / "config.toml",
            bot_config(llm.base_url, data_dir=workdir / "redis", logging={"level": "DEBUG"}),
        )
        env = standin_env(standin)
        guild_args = run_bot_args(config, "sync", "--guild", str(guild))
        bots = {"guild": procs.start("guild", guild_args, env=env)}
        codes = {"guild": await bots["guild"].wait_exit(30)}
        guild_commands = standin.synced_commands(guild)
        global_before = standin.synced_commands(None)
        bots["global"] = procs.start("global", run_bot_args(config, "sync"), env=env)
        codes["global"] = await bots["global"].wait_exit(30)
        return Outcome(
            standin,
            llm,
            bots,
            {
                "guild": guild,
                "codes": codes,
                "guild_commands": guild_commands,
                "global_before": global_before,
                "global_commands": standin.synced_commands(None),
                "gateway_sessions": len(standin.identifies),
            },
        )


@pytest.fixture(scope="module")
def synced() -> Outcome:
    return run_scenario(_sync_scenario)


EXPECTED_COMMANDS = {"persona", "reset", "usage", "chat", "memory", "model", "tools"}


def test_sync_guild_registers_the_commands_in_that_server(synced: Outcome) -> None:
    f = synced.facts
    assert f["codes"]["guild"] == 0, synced.bots["guild"].stderr
    assert {c["name"] for c in f["guild_commands"]} == EXPECTED_COMMANDS
    assert f["global_before"] == [], "a guild sync leaves the global commands alone"
    out = synced.bots["guild"].stdout
    assert f"Synced {len(EXPECTED_COMMANDS)} commands to server {f['guild']} (visible now)" in out
    assert f["gateway_sessions"] == 0, "syncing needs no gateway connection"


def test_sync_without_guild_registers_them_globally(synced: Outcome) -> None:
    f = synced.facts
    assert f["codes"]["global"] == 0, synced.bots["global"].stderr
    assert {c["name"] for c in f["global_commands"]} == EXPECTED_COMMANDS
    assert (
        f"Synced {len(EXPECTED_COMMANDS)} commands to all servers" in synced.bots["global"].stdout
    )


def test_secrets_stay_out_of_logs_even_at_debug(synced: Outcome) -> None:
    logs = synced.all_logs
    assert "DEBUG" in logs, "the sync ran at DEBUG, where libraries log the most"
    assert TOKEN not in logs and API_KEY not in logs


async def _refused_scenario(
    workdir: Path, standin_kwargs: dict[str, Any], token: str = TOKEN
) -> Outcome:
    async with world(workdir, standin_kwargs=standin_kwargs) as (standin, llm, procs):
        standin.populate()
        config = write_config(
            workdir / "config.toml", bot_config(llm.base_url, data_dir=workdir / "redis")
        )
        env = standin_env(standin, DISCORD_TOKEN=token)
        bot = procs.start("bot", run_bot_args(config), env=env)
        code = await bot.wait_exit(30)
        await asyncio.sleep(0.2)
        return Outcome(standin, llm, {"bot": bot}, {"code": code})


def test_message_content_intent_off_warns_and_exits_1() -> None:
    outcome = run_scenario(lambda d: _refused_scenario(d, {"privileged_intents_allowed": False}))
    err = outcome.bots["bot"].stderr
    assert outcome.facts["code"] == 1
    assert "The Message Content intent looks disabled" in err
    assert "Discord refused the Message Content intent" in err
    assert "Traceback" not in err
    assert "embedded Redis stopped" in err


def test_message_content_intent_on_gives_no_warning(sigterm_cut: Outcome) -> None:
    err = sigterm_cut.bots["bot"].stderr
    assert "invite the bot with: https://discord.com/oauth2/authorize?client_id=" in err
    assert "Message Content intent" not in err


def test_rejected_token_exits_1_with_one_clear_line() -> None:
    outcome = run_scenario(
        lambda d: _refused_scenario(d, {}, token="a-token-discord-does-not-know")
    )
    err = outcome.bots["bot"].stderr
    assert outcome.facts["code"] == 1
    assert "Discord rejected the bot token. Check DISCORD_TOKEN / discord.token." in err
    assert "Traceback" not in err
    assert "a-token-discord-does-not-know" not in err


async def _other_signals_scenario(workdir: Path) -> Outcome:
    with EmbeddedRedis(workdir / "redis") as server:
        async with world(workdir) as (standin, llm, procs):
            standin.populate()
            config = write_config(
                workdir / "config.toml", bot_config(llm.base_url, redis_url=server.url)
            )
            env = standin_env(standin)
            bots = {
                "hup": procs.start("hup", run_bot_args(config), env=env),
                "int": procs.start("int", run_bot_args(config), env=env),
                # nohup: SIGHUP arrives ignored, as after `nohup ./run &`
                "nohup": procs.start("nohup", ["nohup", *run_bot_args(config)], env=env),
            }
            await standin.wait_connected(3, timeout=30)
            for bot in bots.values():
                await bot.wait_log("invite the bot with", timeout=30)
            bots["hup"].proc.send_signal(signal.SIGHUP)
            bots["int"].proc.send_signal(signal.SIGINT)
            bots["nohup"].proc.send_signal(signal.SIGHUP)
            codes = {name: await bots[name].wait_exit(20) for name in ("hup", "int")}
            await asyncio.sleep(0.5)
            nohup_survived = bots["nohup"].running
            bots["nohup"].proc.send_signal(signal.SIGTERM)
            codes["nohup"] = await bots["nohup"].wait_exit(20)
            return Outcome(standin, llm, bots, {"codes": codes, "nohup_survived": nohup_survived})


def test_sighup_and_ctrl_c_stop_the_bot_like_sigterm_but_not_under_nohup() -> None:
    outcome = run_scenario(_other_signals_scenario)
    assert outcome.facts["codes"] == {"hup": 0, "int": 0, "nohup": 0}
    assert "SIGHUP received: shutting down" in outcome.bots["hup"].stderr
    assert "SIGINT received: shutting down" in outcome.bots["int"].stderr
    assert outcome.facts["nohup_survived"]
    assert "SIGHUP" not in outcome.bots["nohup"].stderr
    for bot in outcome.bots.values():
        assert bot.stderr.rstrip().endswith("INFO bot: stopped"), bot.stderr


async def _sigterm_at_start_scenario(workdir: Path, stage: str) -> Outcome:
    async with world(workdir) as (standin, llm, procs):
        standin.populate()
        config = write_config(
            workdir / "config.toml", bot_config(llm.base_url, data_dir=workdir / "redis")
        )
        bot = procs.start("bot", run_bot_args(config), env=standin_env(standin))
        await bot.wait_log(stage, timeout=30)
        redis_pids = bot.redis_server_pids()
        bot.proc.send_signal(signal.SIGTERM)  # still starting
        code = await bot.wait_exit(20)
        return Outcome(standin, llm, {"bot": bot}, {"code": code, "redis_pids": redis_pids})


@pytest.mark.parametrize(
    "stage",
    [
        "embedded Redis ready",  # connecting to its Redis, loading the tokenizer
        "invite the bot with",  # logged in, connecting to the gateway
    ],
)
def test_sigterm_during_start_up_stops_the_embedded_redis_too(stage: str) -> None:
    outcome = run_scenario(lambda d: _sigterm_at_start_scenario(d, stage))
    err = outcome.bots["bot"].stderr
    assert outcome.facts["code"] == 0, err
    assert len(outcome.facts["redis_pids"]) == 1
    assert pid_gone(outcome.facts["redis_pids"][0])
    assert "embedded Redis stopped" in err and "Traceback" not in err


async def _crash_scenario(workdir: Path) -> Outcome:
    data_dir = workdir / "redis-data"
    async with world(workdir) as (standin, llm, procs):
        _, channel, user = standin.populate()
        config = write_config(workdir / "config.toml", bot_config(llm.base_url, data_dir=data_dir))
        env = standin_env(standin)
        first = procs.start("first", run_bot_args(config), env=env)
        await standin.wait_connected(1, timeout=30)
        leftover = first.redis_server_pids()
        asked = await standin.dispatch_message(channel, user, mention(standin, "remember pelican"))
        await final_reply(standin, asked)
        os.kill(first.pid, signal.SIGKILL)  # the bot only, as the OOM killer would
        await first.wait_exit(10)
        await asyncio.sleep(0.2)
        leftover_survived = not pid_gone(leftover[0])

        second = procs.start("second", run_bot_args(config), env=env)
        await second.wait_log("embedded Redis ready", timeout=30)
        leftover_gone = pid_gone(leftover[0])
        # A third bot on the same data directory while the second runs.
        third = procs.start("third", run_bot_args(config), env=env)
        third_code = await third.wait_exit(30)
        await standin.wait_connected(1, timeout=30)
        again = await standin.dispatch_message(channel, user, mention(standin, "which bird?"))
        await final_reply(standin, again)
        second_redis = second.redis_server_pids()
        second.proc.send_signal(signal.SIGTERM)
        second_code = await second.wait_exit(20)
        return Outcome(
            standin,
            llm,
            {"first": first, "second": second, "third": third},
            {
                "leftover": leftover,
                "leftover_survived": leftover_survived,
                "leftover_gone": leftover_gone,
                "third_code": third_code,
                "second_code": second_code,
                "second_redis": second_redis,
                "prompt": [m["content"] for m in llm.chat_requests[-1].body["messages"]],
            },
        )


@pytest.fixture(scope="module")
def crashed() -> Outcome:
    return run_scenario(_crash_scenario)


def test_a_redis_server_left_by_a_killed_bot_is_stopped_by_the_next_start(
    crashed: Outcome,
) -> None:
    f = crashed.facts
    assert len(f["leftover"]) == 1
    assert f["leftover_survived"], "SIGKILL gives the bot no chance to stop its Redis"
    assert f["leftover_gone"], "the next start shut it down before starting its own"
    assert (
        "stopping an embedded Redis left running by an earlier bot" in crashed.bots["second"].stderr
    )
    assert any("remember pelican" in c for c in f["prompt"]), "the memory survived the crash"
    assert f["second_code"] == 0
    assert all(pid_gone(p) for p in f["second_redis"])


def test_two_bots_on_one_data_dir_the_second_stops_with_a_clear_message(
    crashed: Outcome,
) -> None:
    err = crashed.bots["third"].stderr
    assert crashed.facts["third_code"] == 1
    assert "Cannot start the built-in Redis: the data directory" in err
    assert "is in use by another bot process" in err
    assert "Traceback" not in err


def test_unusable_data_dir_is_one_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    config = write_config(
        tmp_path / "config.toml",
        bot_config("http://127.0.0.1:9/v1", data_dir=blocker / "redis"),
    )
    done = run_cli(
        [PYTHON, "-m", "bot", "--config", str(config)],
        cwd=tmp_path,
        env=base_env(DISCORD_TOKEN=TOKEN),
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"Cannot start the built-in Redis: cannot create the data directory {blocker / 'redis'} "
        "(Not a directory); set redis.data_dir to a writable directory"
    ]


async def _chat_signal_scenario(workdir: Path, sig: signal.Signals) -> Outcome:
    async with world(workdir) as (standin, llm, procs):
        config = write_config(
            workdir / "config.toml", bot_config(llm.base_url, data_dir=workdir / "redis")
        )
        chat = procs.start(
            "chat",
            [PYTHON, "-m", "bot", "--config", str(config), "chat", "--channel", "sig"],
            env=base_env(),
            cwd=workdir,
            stdin=subprocess.PIPE,
        )
        assert chat.proc.stdin is not None
        chat.proc.stdin.write(b"hello there\n")
        chat.proc.stdin.flush()
        deadline = time.monotonic() + 30
        while "bot> Echo:" not in chat.stdout or not chat.stdout.endswith("you> "):
            assert time.monotonic() < deadline, chat.stdout + chat.stderr
            await asyncio.sleep(0.05)
        redis_pids = chat.redis_server_pids()
        chat.proc.send_signal(sig)  # stdin stays open: the chat waits in input()
        signalled = time.monotonic()
        code = await chat.wait_exit(10)
        return Outcome(
            standin,
            llm,
            {"chat": chat},
            {"code": code, "took": time.monotonic() - signalled, "redis_pids": redis_pids},
        )


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_chat_stops_at_once_on_ctrl_c_or_sigterm(sig: signal.Signals, code: int) -> None:
    outcome = run_scenario(lambda d: _chat_signal_scenario(d, sig))
    f = outcome.facts
    assert f["code"] == code, outcome.bots["chat"].stderr
    assert f["took"] < 3, "it did not wait for a line on stdin"
    assert len(f["redis_pids"]) == 1 and pid_gone(f["redis_pids"][0])
    err = outcome.bots["chat"].stderr
    assert "embedded Redis stopped" in err and "Traceback" not in err
    assert "Fatal Python error" not in err


# === 1e / 1f. logs, /healthz and /metrics ==============================================


async def _health_scenario(workdir: Path) -> Outcome:
    port = free_port()
    server = EmbeddedRedis(workdir / "redis")
    server.start()
    try:
        async with world(workdir) as (standin, llm, procs), aiohttp.ClientSession() as http:
            _, channel, user = standin.populate()
            llm.default = Behavior(reply="A confidential-looking reply text.", tps=30)
            config = write_config(
                workdir / "config.toml",
                bot_config(
                    llm.base_url,
                    redis_url=server.url,
                    health={"enabled": True, "port": port},
                    logging={"format": "json"},
                ),
            )
            bot = procs.start("bot", run_bot_args(config), env=standin_env(standin))
            base = f"http://127.0.0.1:{port}"

            async def get(path: str) -> tuple[int, str]:
                async with http.get(base + path, timeout=aiohttp.ClientTimeout(total=5)) as r:
                    return r.status, await r.text()

            await bot.wait_log("health server listening", timeout=30)
            await bot.wait_log("connected as", timeout=30)  # the gateway is up
            healthy = await get("/healthz")
            metrics_before = (await get("/metrics"))[1]
            msg = await standin.dispatch_message(
                channel, user, mention(standin, "a private question text")
            )
            await final_reply(standin, msg)
            await asyncio.sleep(0.2)
            metrics_after = (await get("/metrics"))[1]
            server.kill()  # Redis dies under the running bot
            redis_down = await get("/healthz")
            failing = await standin.dispatch_message(
                channel, user, mention(standin, "hello while memory is down")
            )
            failed_parts = await final_reply(standin, failing)
            metrics_down = (await get("/metrics"))[1]
            bot.proc.send_signal(signal.SIGTERM)
            code = await bot.wait_exit(20)
            return Outcome(
                standin,
                llm,
                {"bot": bot},
                {
                    "channel": channel,
                    "healthy": healthy,
                    "metrics_before": metrics_before,
                    "metrics_after": metrics_after,
                    "metrics_down": metrics_down,
                    "redis_down": redis_down,
                    "failed_parts": failed_parts,
                    "reply": replies_to(standin, msg)[-1].content,
                    "code": code,
                },
            )
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def health() -> Outcome:
    return run_scenario(_health_scenario)


def metric(text: str, name: str) -> float:
    """The sum of a metric's samples (all label sets) in Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_healthz_is_200_with_gateway_and_redis_ok(health: Outcome) -> None:
    status, body = health.facts["healthy"]
    assert status == 200, body
    assert json.loads(body) == {"status": "ok", "gateway": True, "redis": True}


def test_metrics_count_the_reply_and_discord_requests(health: Outcome) -> None:
    before, after = health.facts["metrics_before"], health.facts["metrics_after"]
    assert metric(before, "llmbot_replies_finished_total") == 0
    assert metric(after, "llmbot_replies_finished_total") == 1
    assert metric(after, "llmbot_replies_started_total") == 1
    assert metric(after, "llmbot_discord_requests_total") > metric(
        before, "llmbot_discord_requests_total"
    )
    assert 'llmbot_discord_requests_total{kind="send"} 1.0' in after
    assert metric(after, "llmbot_tokens_out_total") > 0


def test_healthz_turns_503_when_redis_dies(health: Outcome) -> None:
    status, body = health.facts["redis_down"]
    assert status == 503
    data = json.loads(body)
    assert data["redis"] is False and data["gateway"] is True
    assert data["failed"] == ["redis"]
    assert "unix:" not in body, "no connection string in the probe's answer"


def test_redis_down_answers_with_a_notice_and_shutdown_is_still_clean(health: Outcome) -> None:
    parts = health.facts["failed_parts"]
    assert len(parts) == 1 and "memory" in parts[0].content.lower()
    assert health.facts["code"] == 0, health.bots["bot"].stderr


def test_metrics_count_redis_errors(health: Outcome) -> None:
    assert metric(health.facts["metrics_down"], "llmbot_redis_errors_total") >= 1


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_logs_one_object_per_line_and_one_reply_line(health: Outcome) -> None:
    entries = json_lines(health.bots["bot"].stderr)  # every line parses
    assert all({"ts", "level", "logger", "msg"} <= set(e) for e in entries)
    replies = [e for e in entries if REPLY_LINE.fullmatch(e["msg"])]
    assert len(replies) == 1
    assert replies[0]["level"] == "INFO"
    assert f"channel={health.facts['channel']}" in replies[0]["msg"]
    assert "finish=stop" in replies[0]["msg"]


def test_no_prompt_or_reply_text_in_info_logs(health: Outcome, sigterm_cut: Outcome) -> None:
    assert health.facts["reply"] == "A confidential-looking reply text."
    for logs in (health.all_logs, sigterm_cut.all_logs):
        for text in ("private question", "confidential-looking", "first question", "first answer"):
            assert text not in logs


def test_text_logs_one_line_per_finished_reply(sigterm_graceful: Outcome) -> None:
    err = sigterm_graceful.bots["bot"].stderr
    lines = [line for line in err.splitlines() if REPLY_LINE.search(line)]
    assert len(lines) == 2
    assert all(" INFO bot.chat.conversation: " in line for line in lines)
    channel = sigterm_graceful.facts["channel"]
    assert all(f"reply channel={channel} " in line for line in lines)


def test_secrets_appear_in_no_process_output(
    sigterm_cut: Outcome, sigterm_graceful: Outcome, shared_channel: Outcome, health: Outcome
) -> None:
    for outcome in (sigterm_cut, sigterm_graceful, shared_channel, health):
        assert TOKEN not in outcome.all_logs
        assert API_KEY not in outcome.all_logs


# === 1d. Redis unreachable at start ====================================================
#
# The bot retries for about half a minute (backoff 0.5 s doubling to 10 s, 8 attempts)
# before it gives up. These two processes start with the module and run in the background
# while the other tests do, so the wait costs this file almost nothing.


@pytest.fixture(scope="module", autouse=True)
def redis_unreachable() -> Iterator[dict[str, BotProcess]]:
    workdir = Path(tempfile.mkdtemp(prefix="llmbot-noredis-"))
    procs = Processes(workdir)
    closed_port = free_port()
    urls = {
        "tcp": f"redis://127.0.0.1:{closed_port}/0",
        "unix": f"unix://{workdir}/missing/redis.sock",
    }
    started = {}
    try:
        for name, url in urls.items():
            config = write_config(
                workdir / f"{name}.toml", bot_config("http://127.0.0.1:9/v1", redis_url=url)
            )
            started[name] = procs.start(
                name,
                [PYTHON, "-m", "bot", "--config", str(config)],
                env=base_env(DISCORD_TOKEN=TOKEN),
                cwd=workdir,
            )
        yield started
    finally:
        procs.close()
        shutil.rmtree(workdir, ignore_errors=True)


def seconds_of_day(clock: str) -> float:
    hours, minutes, seconds = clock.replace(",", ".").split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_redis_unreachable_retries_then_exits_cleanly(
    redis_unreachable: dict[str, BotProcess], kind: str
) -> None:
    bot = redis_unreachable[kind]
    code = asyncio.run(bot.wait_exit(70))
    err = bot.stderr
    assert code == 1
    assert "Traceback" not in err
    retries = re.findall(
        r"^\S+ (\S+) WARNING bot.services: Redis unreachable \(attempt (\d)/8\); "
        r"retrying in ([\d.]+) s$",
        err,
        re.MULTILINE,
    )
    assert [int(attempt) for _, attempt, _ in retries] == list(range(1, 8)), err
    delays = [float(delay) for _, _, delay in retries]
    assert delays == [0.5, 1, 2, 4, 8, 10, 10], "it backs off, up to 10 s"
    # ... and really waits that long between attempts (log times are HH:MM:SS,mmm).
    times = [seconds_of_day(t) for t, _, _ in retries]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    for gap, delay in zip(gaps, delays, strict=False):
        assert delay - 0.1 < gap < delay + 3
    lines = err.strip().splitlines()
    assert lines[-1].startswith("Cannot start: Redis is unreachable after 8 attempts")
    assert "redis.url" in lines[-1]
    assert len(lines) == 8, err  # the 7 retries and the verdict, nothing else
