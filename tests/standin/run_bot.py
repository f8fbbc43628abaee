"""Run the real, unmodified bot in its own process against the Discord stand-in.

    STANDIN_DISCORD_API=http://127.0.0.1:PORT/api/v10 \\
    STANDIN_DISCORD_GATEWAY=ws://127.0.0.1:PORT/gateway \\
    python -m tests.standin.run_bot [--config PATH] [run|chat|sync ...]

The only change from `python -m bot` is pointing discord.py at loopback (the two
attributes the stand-in notes name). Benchmarks and process-level tests (SIGTERM,
several processes on one Redis) start the bot this way.
"""

from __future__ import annotations

import os
import sys

import discord.gateway
import discord.http
import yarl

from bot.__main__ import main


def point_discord_at_standin() -> None:
    discord.http.Route.BASE = os.environ["STANDIN_DISCORD_API"]
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(
        os.environ["STANDIN_DISCORD_GATEWAY"]
    )


if __name__ == "__main__":
    point_discord_at_standin()
    sys.exit(main(sys.argv[1:]))
