"""Command line: `python -m bot [run|chat|sync]`.

The one place that wires the bot together: config, logging, Redis, the HTTP session,
the LLM client and the Discord client are built here (via `open_services`) and handed
in. Nothing else constructs its own dependencies.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence

import discord

from bot.client import ChatBot
from bot.config import Config, load_config
from bot.console import Console
from bot.delivery.budget import DISCORD_GLOBAL_RATE, RateBudget, head_start_for
from bot.errors import ConfigError
from bot.memory.redis_server import RedisServerError
from bot.ops.health import HealthServer
from bot.ops.lifecycle import DaemonThreadExecutor, Shutdown, stop_signals
from bot.ops.logs import secrets_from_config, setup_logging
from bot.ops.metrics import Metrics
from bot.services import Services, open_services

log = logging.getLogger("bot")


NO_TOKEN = """No Discord bot token is configured.
Put it in the environment:   export DISCORD_TOKEN=your-token
or in config.toml:           [discord]
                             token = "your-token"
Get one at https://discord.com/developers/applications -> your application -> Bot -> Reset Token.
To try the bot without Discord first:   python -m bot chat"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bot", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="config file (default: config.toml or $BOT_CONFIG)")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="connect to Discord and answer (the default)")
    chat = sub.add_parser("chat", help="chat in the terminal through the same services")
    chat.add_argument("--channel", default="console", help="conversation name (default: console)")
    sync = sub.add_parser("sync", help="register the slash commands with Discord")
    sync.add_argument("--guild", type=int, help="sync to one server only (instant)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"Config error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.logging, secrets_from_config(config))
    command = args.command or "run"
    if command in ("run", "sync") and not config.discord.token:
        print(NO_TOKEN, file=sys.stderr)
        return 2
    try:
        if command == "chat":
            return run_chat(config, args.channel)
        if command == "sync":
            asyncio.run(sync_commands(config, args.guild))
        else:
            asyncio.run(run_bot(config))
    except KeyboardInterrupt:
        return 130
    except discord.LoginFailure:
        print(
            "Discord rejected the bot token. Check DISCORD_TOKEN / discord.token.", file=sys.stderr
        )
        return 1
    except discord.PrivilegedIntentsRequired:
        print(
            "Discord refused the Message Content intent. Enable it in the Developer Portal -> "
            "your application -> Bot -> Privileged Gateway Intents -> Message Content Intent.",
            file=sys.stderr,
        )
        return 1
    except ConnectionError as exc:
        print(f"Cannot start: {exc}", file=sys.stderr)
        return 1
    except RedisServerError as exc:
        print(f"Cannot start the built-in Redis: {exc}", file=sys.stderr)
        return 1
    return 0


def run_chat(config: Config, channel: str) -> int:
    """`chat`, which reads stdin in a worker thread that may be stuck in `input()`."""
    executor = DaemonThreadExecutor()
    code = 0
    try:
        with asyncio.Runner() as runner:
            runner.get_loop().set_default_executor(executor)
            runner.run(chat(config, channel))
    except KeyboardInterrupt:
        code = 130
    if executor.busy:
        # Ctrl-C or SIGTERM while waiting for a line: everything is stopped and flushed
        # already, but Python's exit would wait for (or abort over) that thread's stdin.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def make_bot(services: Services) -> ChatBot:
    rate = services.config.discord.stream_rate
    # At most 48 requests reaching Discord in any second (its limit: 50).
    per_second = DISCORD_GLOBAL_RATE - 2
    budget = RateBudget(rate=rate, head_start=head_start_for(rate), per_second=per_second)
    return ChatBot(services, budget)


async def run_bot(config: Config) -> None:
    metrics = Metrics()
    with Shutdown(stop_signals(interrupt=True)) as shutdown:
        async with open_services(config, metrics=metrics) as services:
            shutdown.checkpoint()
            bot = make_bot(services)

            async def gateway_up() -> bool:
                return bot.is_ready() and not bot.is_closed()

            health = HealthServer(
                config.health, metrics, checks={"gateway": gateway_up, "redis": services.store.ping}
            )
            await health.start()
            closing: list[asyncio.Task[None]] = []

            def close_gracefully() -> bool:
                # Before the gateway is fully up there is nothing to wait for: cancelling
                # the start unwinds it (and `async with bot` still closes the bot).
                if not bot.launched:
                    return False
                if not closing:
                    closing.append(asyncio.create_task(bot.close()))
                return True

            def after_launch() -> None:
                if shutdown.requested is not None:  # asked during the start, cancel lost
                    close_gracefully()

            shutdown.graceful = close_gracefully
            bot.after_launch = after_launch
            try:
                shutdown.checkpoint()
                async with bot:
                    await bot.start(config.discord.token)
                if closing:
                    await closing[0]
            finally:
                await health.stop()
    log.info("stopped")


async def chat(config: Config, channel: str) -> None:
    # Ctrl-C stays a KeyboardInterrupt (exit 130); SIGTERM and SIGHUP end the chat cleanly.
    with Shutdown(stop_signals(interrupt=False)) as shutdown:
        async with open_services(config) as services:
            shutdown.checkpoint()
            await Console(services, channel).run()


async def sync_commands(config: Config, guild_id: int | None) -> None:
    with Shutdown(stop_signals(interrupt=False)) as shutdown:
        await _sync_commands(config, guild_id, shutdown)


async def _sync_commands(config: Config, guild_id: int | None, shutdown: Shutdown) -> None:
    # Registering commands needs no tool servers: don't start them.
    config = dataclasses.replace(config, mcp=dataclasses.replace(config.mcp, servers=[]))
    async with open_services(config) as services:
        shutdown.checkpoint()
        bot = make_bot(services)
        async with bot:
            await bot.login(config.discord.token)
            if guild_id:
                guild = discord.Object(guild_id)
                bot.tree.copy_global_to(guild=guild)
                synced = await bot.tree.sync(guild=guild)
                where = f"server {guild_id} (visible now)"
            else:
                synced = await bot.tree.sync()
                where = "all servers (Discord may take up to an hour to show them)"
        names = ", ".join(sorted(f"/{c.name}" for c in synced))
        print(f"Synced {len(synced)} commands to {where}: {names}")


if __name__ == "__main__":
    sys.exit(main())
