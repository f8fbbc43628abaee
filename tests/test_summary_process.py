"""Two bot processes on one Redis summarising one busy channel: no turn lost or doubled.

Both processes answer messages of the same channel and both start summaries in the
background; the store's atomic fold (and the summarising lease) must leave every message
exactly once, either in the stored history or in the summary.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
import redis

from bot.memory.redis_server import EmbeddedRedis
from bot.models import Summary
from tests.standin.llm_api import Behavior, lorem, summarize_reply
from tests.test_process import (
    PREFIX,
    Outcome,
    bot_config,
    final_reply,
    mention,
    read_history,
    run_bot_args,
    run_scenario,
    standin_env,
    world,
    write_config,
)

MESSAGES = 16


def read_summary(url: str, channel_id: int) -> Summary | None:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        raw = client.get(f"{PREFIX}:{{c{channel_id}}}:summary")
        return Summary.from_json(raw) if raw else None  # type: ignore[arg-type]
    finally:
        client.close()


async def _scenario(workdir: Path) -> Outcome:
    with EmbeddedRedis(workdir / "shared-redis") as server:
        async with world(workdir) as (standin, llm, procs):
            _, channel, user = standin.populate()
            llm.default = Behavior(ttft=0.1, tps=200)
            # Slow enough that replies and the other process's summaries overlap it.
            llm.summarizer = Behavior(reply=summarize_reply, ttft=0.6)
            config = write_config(
                workdir / "config.toml",
                bot_config(
                    llm.base_url,
                    redis_url=server.url,
                    discord={"edit_interval": 0.5},
                    llm={
                        "base_url": llm.base_url,
                        "model": "stand-in",
                        "max_tokens": 100,
                        "context_tokens": 700,
                        "first_token_timeout": 5,
                        "idle_timeout": 5,
                        "max_retries": 0,
                    },
                    history={"summary_tokens": 150},
                ),
            )
            bots = {
                name: procs.start(name, run_bot_args(config), env=standin_env(standin))
                for name in ("a", "b")
            }
            sessions = [s.session_id for s in await standin.wait_connected(2, timeout=30)]
            sent = []
            for i in range(0, MESSAGES, 2):
                batch = [
                    await standin.dispatch_message(
                        channel,
                        user,
                        mention(standin, f"topic {i + k}: {lorem(40)}"),
                        session_id=sessions[k],
                    )
                    for k in range(2)
                ]
                for msg in batch:
                    await final_reply(standin, msg, timeout=30)
                sent += batch
            # Let the last summaries finish.
            for _ in range(200):
                requests = llm.summary_requests
                if requests and all(r.finished is not None for r in requests):
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            history = read_history(server.url, channel)
            summary = read_summary(server.url, channel)
            for bot in bots.values():
                bot.proc.send_signal(signal.SIGTERM)
            codes = [await bot.wait_exit(20) for bot in bots.values()]
            return Outcome(
                standin,
                llm,
                bots,
                {"sent": sent, "history": history, "summary": summary, "codes": codes},
            )


@pytest.fixture(scope="module")
def shared() -> Outcome:
    return run_scenario(_scenario)


def test_two_processes_summarise_one_channel_without_losing_or_doubling_a_turn(
    shared: Outcome,
) -> None:
    f = shared.facts
    summary: Summary | None = f["summary"]
    assert summary is not None, "the channel was summarised"
    history = f["history"]
    assert summary.turns + len(history) == 2 * MESSAGES
    assert [t.role for t in history] == ["user", "assistant"] * (len(history) // 2)
    in_summary = [line.split(": ", 1)[1] for line in summary.text.splitlines()]
    in_history = [t.content for t in history if t.role == "user"]
    assert len(in_summary) == summary.turns // 2
    topics = sorted(in_summary + in_history, key=lambda c: int(c.split(":")[0].split()[1]))
    assert topics == [f"topic {i}: {lorem(40)}" for i in range(MESSAGES)]
    assert f["codes"] == [0, 0]


def test_summaries_were_stored_without_errors(shared: Outcome) -> None:
    stored = [b.stderr.count("stored=True") for b in shared.bots.values()]
    assert sum(stored) >= 2
    assert "Traceback" not in shared.all_logs
