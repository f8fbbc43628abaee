"""`python -m bench.cluster`: two bot processes (two Discord shards) on a Redis Cluster.

What it shows: the bot scales out. Two real bot processes (`tests.standin.run_bot`,
unmodified), each running one of two shards, share a loopback Redis Cluster of 3 primaries
and 3 replicas (tests/cluster.py, built from the bundled valkey-server). Two guilds (one per
shard) hold 200 channels between them; every channel asks `rounds` questions in a row, all
channels at once. Reported: replies that completed, wall time, the time from a question to
its complete reply, each process's CPU, Redis commands per turn on the cluster (from the
primaries' INFO commandstats) and whether every channel's history is complete and in order.

    python -m bench.cluster                 # 200 channels x 2 rounds
    python -m bench.cluster --channels 20 --rounds 1 --json out.json

The figures of the last run are in docs/scaling-out.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bench.e2e import EDIT_INTERVAL, STREAM_RATE, ReplyWatcher, _Pending
from bench.procs import Child, bot_config_toml, start_bot, start_llm, stop_llm
from bench.stats import summary
from bench.workload import parse_tag, reply_text, tag_text
from bot.memory.cluster import cluster_client
from bot.models import Turn
from tests.cluster import LocalCluster
from tests.standin.discord_api import DiscordStandIn

TOKEN = "bench-cluster-token"
SHARDS = 2


def guild_on_shard(standin: DiscordStandIn, shard: int) -> int:
    """A fresh guild id that Discord's routing puts on `shard` of SHARDS."""
    gid = standin.ids.next()
    while (gid >> 22) % SHARDS != shard:
        gid += 1 << 22
    return gid


def command_counts(cluster: LocalCluster) -> dict[str, int]:
    """Commands the primaries have executed, by name (a script's inner calls count too)."""
    counts: dict[str, int] = {}
    for node in cluster.primaries():
        with node.client() as c:
            stats = c.info("commandstats")
        for k, v in stats.items():
            name = k.removeprefix("cmdstat_")
            counts[name] = counts.get(name, 0) + int(v["calls"])
    return counts


async def run(
    channels: int, rounds: int, tokens: int, tps: float, *, cluster: LocalCluster | None = None
) -> dict[str, Any]:
    """Run the scenario on `cluster`, or on a fresh one it builds and removes."""
    with tempfile.TemporaryDirectory(prefix="llmbot-bench-cluster-") as tmp:
        workdir = Path(tmp)
        if cluster is not None:
            await asyncio.to_thread(cluster.flushall)
            return await _run(cluster, workdir, channels, rounds, tokens, tps)
        own = LocalCluster(workdir / "cluster", node_timeout_ms=5000)
        await asyncio.to_thread(own.start)
        try:
            return await _run(own, workdir, channels, rounds, tokens, tps)
        finally:
            await asyncio.to_thread(own.cleanup)


async def _run(
    cluster: LocalCluster, workdir: Path, channels: int, rounds: int, tokens: int, tps: float
) -> dict[str, Any]:
    records = workdir / "records.json"
    async with DiscordStandIn(token=TOKEN, shard_count=SHARDS) as standin:
        user = standin.add_user("alice")
        guilds = []
        for shard in range(SHARDS):
            guild = standin.add_guild(f"Shard {shard}", guild_id=guild_on_shard(standin, shard))
            standin.add_member(guild, user)
            guilds.append(guild)
        chans = [standin.add_channel(guilds[i % SHARDS], f"bench-{i}") for i in range(channels)]
        llm, llm_url = await start_llm(workdir, ttft=0.2, tps=tps, records=records)
        bots: list[Child] = []
        watcher = ReplyWatcher(standin)
        try:
            base = bot_config_toml(
                token=TOKEN,
                llm_url=llm_url,
                redis_url=cluster.url,
                edit_interval=EDIT_INTERVAL,
                stream_rate=STREAM_RATE,
                max_tokens=1024,
            )
            for shard in range(SHARDS):
                config = base.replace(
                    "shutdown_grace_s = 2\n",
                    f"shutdown_grace_s = 2\nshard_count = {SHARDS}\nshard_ids = [{shard}]\n",
                )
                (workdir / f"shard{shard}").mkdir()
                bots.append(
                    await start_bot(
                        workdir / f"shard{shard}", config, standin.api_base, standin.gateway_url
                    )
                )
            mention = f"<@{standin.bot_user.id}> "

            async def ask(channel: int, ident: str) -> _Pending:
                msg = await standin.dispatch_message(
                    channel, user, mention + tag_text(tokens, ident)
                )
                return watcher.expect(ident, channel, msg, reply_text(tokens, ident))

            for shard, guild in enumerate(guilds):  # one warm-up reply per process
                warm_channel = standin.add_channel(guild, f"warm-{shard}")
                item = await ask(warm_channel, f"warm-{shard}")
                await asyncio.wait_for(asyncio.shield(item.done), 60)
            commands0 = command_counts(cluster)
            cpu0 = [b.cpu_seconds() for b in bots]
            latencies: list[float] = []
            failures: list[str] = []
            t0 = time.monotonic()

            async def channel_loop(i: int, channel: int) -> None:
                for r in range(rounds):
                    item = await ask(channel, f"c{i}-{r}")
                    await asyncio.shield(item.done)
                    latencies.append(time.monotonic() - item.asked)
                    if item.failure:
                        failures.append(item.failure)

            loops = [asyncio.create_task(channel_loop(i, c)) for i, c in enumerate(chans)]
            _, pending = await asyncio.wait(loops, timeout=60 + rounds * 120)
            for task in pending:
                task.cancel()
            elapsed = time.monotonic() - t0
            cpu = [b.cpu_seconds() - c for b, c in zip(bots, cpu0, strict=True)]
            await asyncio.sleep(0.5)  # the last commits land before counting
            commands1 = command_counts(cluster)
            commands = {
                k: n - commands0.get(k, 0) for k, n in commands1.items() if n > commands0.get(k, 0)
            }
            complete = await histories_complete(cluster.url, chans, rounds)
            answered_by = [b.log_tail(100_000).count("reply channel=") for b in bots]
        finally:
            await watcher.close()
            for bot in bots:
                await bot.stop()
            await stop_llm(llm, records)
    turns = channels * rounds
    return {
        "scenario": f"{SHARDS} processes x {SHARDS} shards, {channels} channels x {rounds} "
        f"rounds, {tokens} tokens at {tps:g} tok/s, Redis Cluster 3 primaries + 3 replicas",
        "replies": turns,
        "replies_ok": len(latencies) - len(failures),
        "timed_out": len(pending),
        "failures": failures[:5],
        "elapsed_s": round(elapsed, 1),
        "question_to_complete_reply_s": summary(latencies),
        "bot_cpu_s": [round(c, 1) for c in cpu],
        "replies_per_process": answered_by,
        "cluster_commands_per_turn": {
            k: round(n / turns, 2) for k, n in sorted(commands.items()) if turns
        },
        "histories_complete_and_ordered": complete,
    }


async def histories_complete(url: str, channels: list[int], rounds: int) -> bool:
    client = cluster_client(url)
    try:
        for channel in channels:
            raw = await client.lrange(f"bench:{{c{channel}}}:history", 0, -1)
            turns = [Turn.from_json(r) for r in raw]
            roles = [t.role for t in turns]
            if roles != ["user", "assistant"] * rounds:
                return False
            tags = [parse_tag(t.content) for t in turns[::2]]
            if [int(tag[1].rsplit("-", 1)[1]) if tag else -1 for tag in tags] != list(
                range(rounds)
            ):
                return False
    except (redis.exceptions.RedisError, ValueError, IndexError):
        return False
    finally:
        await client.aclose()
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    parser.add_argument("--channels", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--tps", type=float, default=60)
    parser.add_argument("--json", default="", help="also write the figures here")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.channels, args.rounds, args.tokens, args.tps))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    ok = result["replies_ok"] == result["replies"] and result["histories_complete_and_ordered"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
