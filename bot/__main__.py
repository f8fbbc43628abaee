"""Command line: `python -m bot [run|chat|sync]`.

The one place that wires the bot together: config, logging, Redis, the HTTP session,
the LLM client and the Discord client are built here (via `open_services`) and handed
in. Nothing else constructs its own dependencies.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

import discord

from bot.client import ChatBot
from bot.config import Config, load_config
from bot.console import Console
from bot.errors import ConfigError
from bot.health import HealthServer
from bot.logs import secrets_from_config, setup_logging
from bot.metrics import Metrics
from bot.render import RateBudget
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
            asyncio.run(chat(config, args.channel))
        elif command == "sync":
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
    return 0


def make_bot(services: Services) -> ChatBot:
    return ChatBot(services, RateBudget(rate=services.config.discord.stream_rate))


async def run_bot(config: Config) -> None:
    metrics = Metrics()
    async with open_services(config, metrics=metrics) as services:
        bot = make_bot(services)

        async def gateway_up() -> bool:
            return bot.is_ready() and not bot.is_closed()

        health = HealthServer(
            config.health, metrics, checks={"gateway": gateway_up, "redis": services.store.ping}
        )
        await health.start()
        loop = asyncio.get_running_loop()
        closing: list[asyncio.Task[None]] = []

        def shutdown(signame: str) -> None:
            if not closing:
                log.info("%s received: shutting down", signame)
                closing.append(asyncio.create_task(bot.close()))

        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, shutdown, sig.name)
        try:
            async with bot:
                await bot.start(config.discord.token)
            if closing:
                await closing[0]
        finally:
            await health.stop()
    log.info("stopped")


async def chat(config: Config, channel: str) -> None:
    async with open_services(config) as services:
        await Console(services, channel).run()


async def sync_commands(config: Config, guild_id: int | None) -> None:
    async with open_services(config) as services:
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
