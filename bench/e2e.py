"""One end-to-end scenario: many channels streaming at once through the real bot.

Set-up per scenario (fresh, so figures do not leak between scenarios): the Discord
stand-in in this process with Discord's limits on, the loopback LLM in its own
process, the bot in its own process (`tests.standin.run_bot`, unmodified) with a
generated config.toml, and the shared real Redis (flushed before each scenario).

A scenario is `channels` channels each asking `rounds` questions in a row (the next
one once the previous reply is complete). After one warm-up reply in a channel of its
own, the bot's CPU time is read, every channel asks at once, and when every reply's
messages show exactly the split of the model's text (no marker left) the CPU time is
read again and the processes are stopped. Then the records are analysed.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench.analysis import ReplyFigures, analyse_reply
from bench.procs import (
    Child,
    bot_config_toml,
    start_bot,
    start_llm,
    start_py_spy,
    stop_llm,
    stop_py_spy,
)
from bench.stats import summary
from bench.workload import ERROR_TOKENS, quick_tokens, reply_text, tag_text
from bot.delivery.splitter import plan_split
from tests.standin.discord_api import DiscordStandIn
from tests.standin.discord_models import MessageRecord
from tests.standin.latency import Delay, Latency

TOKEN = "bench-bot-token"
CREATE = "POST /channels/{channel_id}/messages"
EDIT = "PATCH /channels/{channel_id}/messages/{message_id}"
EDIT_INTERVAL = 1.0  # the defaults of discord.edit_interval and discord.stream_rate
STREAM_RATE = 40.0
BUCKET_LIMIT, BUCKET_PERIOD = 5, 5.0  # Discord: 5 edits (and 5 sends) per 5 s per channel
FAILURE_MARK = "⚠️"  # how the bot's renderer ends a reply it could not complete
ERROR_EVERY = 4  # quick replies: one question in four gets an instant error
GATEWAY_DELAY = Delay(0.02, 0.08)  # event delivery when the scenario has Discord latency


@dataclass(frozen=True)
class Scenario:
    """What to run: channels at once, LLM speed, reply length, questions per channel."""

    channels: int
    tps: float
    tokens: int
    ttft: float = 0.2
    rounds: int = 1
    label: str = ""
    # Discord's acknowledgement delay per request: (fixed, jitter) seconds; None: ~1 ms.
    latency: tuple[float, float] | None = None
    # Quick replies: `tokens` is the longest answer (5..tokens tokens each), and every
    # `ERROR_EVERY`-th question gets an instant error from the model instead.
    quick: bool = False
    # Seconds a channel waits between its questions (after the previous reply is complete).
    pause: float = 0.0

    @property
    def name(self) -> str:
        if self.quick:
            base = f"{self.channels}ch x {self.tps:g}tps x 5-{self.tokens}tok + errors"
        else:
            base = f"{self.channels}ch x {self.tps:g}tps x {self.tokens}tok"
        if self.rounds > 1:
            base += f" x {self.rounds} rounds"
        if self.latency is not None:
            base += f" @ discord {self.delay}"
        return f"{self.label}: {base}" if self.label else base

    @property
    def delay(self) -> Delay:
        """The stand-in's acknowledgement delay (zero: as fast as loopback goes)."""
        return Delay(*self.latency) if self.latency else Delay()

    def question(self, channel: int, round_: int) -> tuple[str, int]:
        """(ident, tokens) of a channel's question in a round (`ERROR_TOKENS`: an error)."""
        ident = f"c{channel}-{round_}"
        if not self.quick:
            return ident, self.tokens
        if (channel + round_) % ERROR_EVERY == ERROR_EVERY - 1:
            return ident, ERROR_TOKENS
        return ident, quick_tokens(ident, 5, self.tokens)

    @property
    def stream_seconds(self) -> float:
        """How long one reply streams from the LLM."""
        return self.ttft + self.tokens / self.tps


def lag_floor(channels: int) -> dict[str, float]:
    """The visible lag a perfect pacer would reach, from the shared budget alone.

    Each stream may be edited every `period` seconds: the edit interval, or its share
    of the bot's request budget (channels / stream_rate), or Discord's per-channel
    bucket (5 per 5 s), whichever is longest. A token waits on average half a period
    for the next edit, at worst a whole one.
    """
    period = max(EDIT_INTERVAL, channels / STREAM_RATE, BUCKET_PERIOD / BUCKET_LIMIT)
    return {"period": period, "median": period / 2, "p95": period * 0.95, "max": period}


@dataclass
class _Pending:
    ident: str
    channel: int
    user_message: int
    expected: str
    bodies: list[str]
    asked: float
    failure: str = ""
    error_expected: bool = False
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class ReplyWatcher:
    """Notices when replies are complete: their messages show exactly the planned parts.

    Polls the stand-in's message store (cheap: one pass over the bot's messages) rather
    than reacting to every request, which would load the stand-in's event loop.
    """

    def __init__(self, standin: DiscordStandIn, interval: float = 0.1) -> None:
        self.standin = standin
        self.interval = interval
        self.pending: dict[int, _Pending] = {}
        self.finished: dict[int, _Pending] = {}
        self._task: asyncio.Task[None] | None = None

    def expect(self, ident: str, channel: int, message: MessageRecord, expected: str) -> _Pending:
        """Wait for the reply `expected` (empty: for an error note)."""
        item = _Pending(
            ident, channel, message.id, expected, [p.body for p in plan_split(expected)],
            time.monotonic(), error_expected=not expected,
        )  # fmt: skip
        self.pending[message.id] = item
        if self._task is None:
            self._task = asyncio.create_task(self._run())
        return item

    def chain(self, user_message: int, index: dict[int, MessageRecord]) -> list[MessageRecord]:
        out: list[MessageRecord] = []
        target = user_message
        while (nxt := index.get(target)) is not None:
            out.append(nxt)
            target = nxt.id
        return out

    def bot_index(self) -> dict[int, MessageRecord]:
        """Bot messages by the id of the message they reply to."""
        return {
            m.referenced_message_id: m
            for m in list(self.standin.messages.values())
            if m.from_bot and m.referenced_message_id is not None and not m.deleted
        }

    def poll(self) -> None:
        if not self.pending:
            return
        index = self.bot_index()
        for key, item in list(self.pending.items()):
            msgs = self.chain(item.user_message, index)
            complete = len(msgs) == len(item.bodies) and all(
                m.content == b for m, b in zip(msgs, item.bodies, strict=True)
            )
            if item.error_expected:
                complete = bool(msgs) and msgs[-1].content.startswith(FAILURE_MARK)
            elif not complete and msgs and FAILURE_MARK in msgs[-1].content:
                # The bot gave up on this reply ("⚠️ ..." instead of the marker).
                item.failure = msgs[-1].content[-300:]
                complete = True
            if complete:
                del self.pending[key]
                self.finished[key] = item
                if not item.done.done():
                    item.done.set_result(None)

    async def _run(self) -> None:
        while True:
            self.poll()
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None


@dataclass
class RssSampler:
    """Samples the bot's RSS every `interval` s (and at marks the scenario sets)."""

    child: Child
    interval: float = 0.5
    samples: list[tuple[float, int]] = field(default_factory=list)
    marks: list[tuple[int, int]] = field(default_factory=list)  # (replies done, rss)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                self.samples.append((time.monotonic(), self.child.rss()))
            except Exception:  # the process ended
                return
            await asyncio.sleep(self.interval)

    def mark(self, done: int) -> None:
        with contextlib.suppress(Exception):
            self.marks.append((done, self.child.rss()))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def ack_states(standin: DiscordStandIn) -> dict[int, list[tuple[float, str]]]:
    """Per message id: (time the stand-in answered the create/edit, content shown).

    The message's edit history gives the contents in order; each is timed by the
    response time of the successful request that produced it (falling back to the
    history time, taken just before the response, if they cannot be paired).
    """
    responded: dict[int, list[float]] = {}
    for r in standin.request_log:
        if r.route in (CREATE, EDIT) and r.status == 200 and isinstance(r.response, dict):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                responded.setdefault(int(r.response["id"]), []).append(r.responded)
    out: dict[int, list[tuple[float, str]]] = {}
    for mid, msg in standin.messages.items():
        if not msg.from_bot:
            continue
        times = responded.get(mid, [])
        paired = len(times) == len(msg.history)
        out[mid] = [(times[k] if paired else h.time, h.content) for k, h in enumerate(msg.history)]
    return out


async def run_scenario(
    sc: Scenario,
    redis_url: str,
    *,
    log: Callable[[str], None] = print,
    limit_s: float | None = None,
    profile: Path | None = None,
    keep_logs: Path | None = None,
) -> dict[str, Any]:
    """Run one scenario end to end and return its figures (see `summarise`).

    With `profile`, py-spy samples the bot during the measured part and writes
    collapsed stacks there (py-spy must be installed; it is not a dependency). With
    `keep_logs`, the bot's and the LLM's logs are copied into that directory.
    """
    redis = aioredis.from_url(redis_url)
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()
    with tempfile.TemporaryDirectory(prefix="llmbot-bench-") as tmp:
        workdir = Path(tmp)
        records_path = workdir / "records.json"
        delays = Latency(rest=sc.delay, dispatch=GATEWAY_DELAY) if sc.latency else None
        async with DiscordStandIn(token=TOKEN, delays=delays) as standin:
            guild = standin.add_guild("Bench")
            user = standin.add_user("alice", guild_id=guild)
            warm_channel = standin.add_channel(guild, "warm-up")
            channels = [standin.add_channel(guild, f"bench-{i}") for i in range(sc.channels)]
            llm, llm_url = await start_llm(workdir, ttft=sc.ttft, tps=sc.tps, records=records_path)
            bot: Child | None = None
            watcher = ReplyWatcher(standin)
            try:
                config = bot_config_toml(
                    token=TOKEN,
                    llm_url=llm_url,
                    redis_url=redis_url,
                    edit_interval=EDIT_INTERVAL,
                    stream_rate=STREAM_RATE,
                    max_tokens=max(1024, sc.tokens * 2),
                )
                bot = await start_bot(workdir, config, standin.api_base, standin.gateway_url)
                sampler = RssSampler(bot)
                sampler.start()
                mention = f"<@{standin.bot_user.id}> "

                async def ask(channel: int, ident: str, tokens: int) -> _Pending:
                    msg = await standin.dispatch_message(
                        channel, user, mention + tag_text(tokens, ident)
                    )
                    expected = reply_text(tokens, ident) if tokens != ERROR_TOKENS else ""
                    return watcher.expect(ident, channel, msg, expected)

                warm = await ask(warm_channel, "warm-up", 20)
                await asyncio.wait_for(asyncio.shield(warm.done), 60)
                await asyncio.sleep(0.5)
                rss_start = bot.rss()
                spy = await start_py_spy(bot.pid, profile) if profile else None
                cpu0, llm_cpu0 = bot.cpu_seconds(), llm.cpu_seconds()
                t0 = time.monotonic()
                limit = limit_s or _timeout(sc)
                completed = 0
                mark_every = max(1, (sc.channels * sc.rounds) // 40)

                async def channel_loop(i: int, channel: int) -> None:
                    nonlocal completed
                    for r in range(sc.rounds):
                        if r and sc.pause:
                            await asyncio.sleep(sc.pause)
                        item = await ask(channel, *sc.question(i, r))
                        await asyncio.shield(item.done)
                        completed += 1
                        if sc.rounds > 1 and completed % mark_every == 0:
                            sampler.mark(completed)

                loops = [asyncio.create_task(channel_loop(i, c)) for i, c in enumerate(channels)]
                done, not_done = await asyncio.wait(loops, timeout=limit)
                elapsed = time.monotonic() - t0
                cpu = bot.cpu_seconds() - cpu0
                llm_cpu = llm.cpu_seconds() - llm_cpu0
                rss_end = bot.rss()
                peak_rss = bot.peak_rss()
                if spy is not None:
                    await stop_py_spy(spy)
                for task in not_done:
                    task.cancel()
                await asyncio.gather(*loops, return_exceptions=True)
                for task in done:
                    exc = task.exception()
                    if exc is not None:
                        raise exc
                timed_out = bool(not_done)
                diagnosis = ""
                if timed_out:
                    diagnosis = await diagnose(bot, standin)
                    log(f"  timed out after {limit:.0f} s: {len(watcher.pending)} replies pending")
                    log(diagnosis)
                await sampler.stop()
            finally:
                await watcher.close()
                if bot is not None:
                    await bot.stop()
                records = await stop_llm(llm, records_path)
                if keep_logs is not None:
                    copy_logs(workdir, keep_logs, sc.name)
            states = ack_states(standin)
            index = watcher.bot_index()
            figures: list[ReplyFigures] = []
            quick = QuickFigures()
            by_ident = {r["ident"]: r for r in records["requests"] if r["ident"]}
            for item in [*watcher.finished.values(), *watcher.pending.values()]:
                if item.ident == "warm-up":
                    continue
                rec = by_ident.get(item.ident)
                if rec is None:
                    figures.append(_missing(item.ident, item.failure))
                    continue
                msgs = [states.get(m.id, []) for m in watcher.chain(item.user_message, index)]
                if sc.quick:
                    quick.add(item, rec, msgs)
                if item.error_expected:
                    figures.append(_error_note(item.ident, msgs))
                    continue
                fig = analyse_reply(
                    item.ident, item.expected, rec["text"], rec["times"], rec["ends"], msgs
                )
                if item.failure:
                    fig.ok = False
                    fig.problems.append(f"the bot gave up: {item.failure}")
                figures.append(fig)
            return summarise(
                sc,
                figures,
                elapsed=elapsed,
                timed_out=timed_out,
                cpu=cpu,
                llm_cpu=llm_cpu,
                peak_rss=peak_rss,
                rss_start=rss_start,
                rss_end=rss_end,
                marks=sampler.marks,
                standin=standin,
                diagnosis=diagnosis,
                quick=quick if sc.quick else None,
            )


@dataclass
class QuickFigures:
    """Quick replies: from the model's end (its last byte) to what the user sees.

    For an answer, to its first visible text (the create that shows it; the reply is
    a few tokens long, so that is nearly all of it) and to its final state (marker
    gone); for an instant error, to the note.
    """

    to_first_text: list[float] = field(default_factory=list)
    to_final: list[float] = field(default_factory=list)
    error_to_note: list[float] = field(default_factory=list)

    def add(self, item: _Pending, rec: dict[str, Any], msgs: list[list[tuple[float, str]]]) -> None:
        end = rec.get("finished")
        if end is None or not msgs or not msgs[0]:
            return
        first = msgs[0][0][0]
        if item.error_expected:
            self.error_to_note.append(first - end)
            return
        self.to_first_text.append(first - end)
        self.to_final.append(max(t for states in msgs for t, _ in states) - end)

    def summary(self, delay: Delay) -> dict[str, Any]:
        ms = 1000.0
        return {
            "delay_ms": [delay.fixed * ms, (delay.fixed + delay.jitter) * ms],
            "answer_to_first_text_ms": _scaled(summary(self.to_first_text), ms),
            "answer_to_final_ms": _scaled(summary(self.to_final), ms),
            "error_to_note_ms": _scaled(summary(self.error_to_note), ms),
        }


def copy_logs(workdir: Path, dest: Path, name: str) -> None:
    """Keep the bot's and the LLM's logs of a scenario (`--logs`)."""
    dest.mkdir(parents=True, exist_ok=True)
    slug = name.replace(" ", "").replace(":", "-")
    for src in (workdir / "bot.log", workdir / "llm.log"):
        if src.exists():
            shutil.copy(src, dest / f"{slug}-{src.name}")


async def diagnose(bot: Child, standin: DiscordStandIn) -> str:
    """What to look at when replies did not complete: the bot's last log lines, its
    Python stacks (py-spy, if installed), and where the stand-in's tasks wait."""
    parts = ["bot log (last lines):", bot.log_tail(25)]
    exe = Path(sys.executable).with_name("py-spy")
    if exe.exists():
        proc = await asyncio.create_subprocess_exec(
            str(exe), "dump", "--pid", str(bot.pid),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
            parts += ["bot stacks (py-spy dump):", out.decode(errors="replace")[-6000:]]
        except TimeoutError:
            proc.kill()
            await proc.wait()
    waits: dict[str, int] = {}
    for task in asyncio.all_tasks():
        frames = task.get_stack(limit=1)
        where = f"{frames[0].f_code.co_qualname}" if frames else "?"
        waits[where] = waits.get(where, 0) + 1
    top = sorted(waits.items(), key=lambda kv: -kv[1])[:10]
    parts += ["bench-process tasks by innermost frame:", repr(top)]
    parts.append(f"stand-in: {len(standin.request_log)} requests, {len(standin.messages)} messages")
    return "\n".join(parts)


def _timeout(sc: Scenario) -> float:
    """Generous bound: streaming time per round, plus the budget's worst pacing."""
    floor = lag_floor(sc.channels)["period"]
    per_round = sc.stream_seconds * 2 + floor * 4 + 20
    return per_round * sc.rounds + 60


def _error_note(ident: str, msgs: list[list[tuple[float, str]]]) -> ReplyFigures:
    """An expected instant error: fine if the reply is one note starting with the mark."""
    finals = [states[-1][1] for states in msgs if states]
    ok = len(finals) == 1 and finals[0].startswith(FAILURE_MARK)
    problems = [] if ok else [f"expected one error note, got {len(finals)} messages"]
    return ReplyFigures(ident, ok, problems, len(msgs), 0, math.nan, [], 0, 0)


def _missing(ident: str, failure: str) -> ReplyFigures:
    problem = "the LLM never saw this request"
    if failure:
        problem += f"; the bot said: {failure}"
    return ReplyFigures(ident, False, [problem], 0, 0, math.nan, [], 0, 0)


def summarise(
    sc: Scenario,
    figures: list[ReplyFigures],
    *,
    elapsed: float,
    timed_out: bool,
    cpu: float,
    llm_cpu: float,
    peak_rss: int,
    rss_start: int,
    rss_end: int,
    marks: list[tuple[int, int]],
    standin: DiscordStandIn,
    diagnosis: str = "",
    quick: QuickFigures | None = None,
) -> dict[str, Any]:
    """The scenario's figures as plain JSON-able data."""
    lags = [lag for f in figures for lag in f.lags]
    tokens = sum(f.tokens for f in figures)
    problems = sorted({p for f in figures for p in f.problems})
    mib = 1024 * 1024
    out: dict[str, Any] = {
        "name": sc.name,
        "channels": sc.channels,
        "tps": sc.tps,
        "reply_tokens": sc.tokens,
        "ttft_s": sc.ttft,
        "rounds": sc.rounds,
        "replies": len(figures),
        "replies_ok": sum(f.ok for f in figures),
        "problems": problems[:10],
        "mismatched_states": sum(f.mismatched_states for f in figures),
        "timed_out": timed_out,
        "elapsed_s": elapsed,
        "tokens": tokens,
        "first_text_ms": _scaled(
            summary([f.first_text_s for f in figures if not math.isnan(f.first_text_s)]), 1000
        ),
        "lag_s": summary(lags),
        "lag_floor_s": lag_floor(sc.channels),
        "edits_per_reply": summary([f.edits for f in figures]),
        "parts_per_reply": summary([f.parts for f in figures]),
        "http_429": standin.count_429(),
        "http_429_global": standin.count_429("global"),
        "discord_requests": len(standin.request_log),
        "bot_cpu_s": cpu,
        "bot_cpu_s_per_1k_tokens": cpu / tokens * 1000 if tokens else math.nan,
        "llm_cpu_s": llm_cpu,
        "bot_peak_rss_mib": peak_rss / mib,
        "bot_rss_start_mib": rss_start / mib,
        "bot_rss_end_mib": rss_end / mib,
    }
    if sc.latency is not None:
        out["discord_delay_ms"] = [sc.latency[0] * 1000, sum(sc.latency) * 1000]
    if quick is not None:
        out["quick"] = quick.summary(sc.delay)
    if diagnosis:
        out["diagnosis"] = diagnosis
    if sc.rounds > 1:
        out["rss_marks_mib"] = [[done, rss / mib] for done, rss in marks]
    return out


def _scaled(stats: dict[str, float], factor: float) -> dict[str, float]:
    return {k: (v * factor if k != "n" else v) for k, v in stats.items()}
