"""A real MCP server for the tests, written with the official SDK, spoken to over stdio.

Deterministic tools (a lookup and a calculator), plus misbehaving ones: a call that
hangs, one that kills the server process, one that returns megabytes. At start it
writes its `TOOL_TOKEN` environment variable to stderr, as careless servers do, so tests
can check that the bot's logs never show it.

    python tests/mcp_server.py              (stdio: the bot starts it)
    python tests/mcp_server.py --http PORT  (streamable HTTP on 127.0.0.1:PORT/mcp)
"""

from __future__ import annotations

import asyncio
import os
import sys

from mcp.server.fastmcp import Context, FastMCP

FACTS = {
    "discord rate limits": "Discord allows 50 requests per second per bot, plus route limits.",
    "capital of france": "The capital of France is Paris.",
}

server = FastMCP("test-tools")


@server.tool()
def lookup(query: str) -> str:
    """Look up a short fact about `query`."""
    return FACTS.get(query.lower(), f"No facts about {query!r}.")


@server.tool()
def add(a: float, b: float) -> str:
    """Add two numbers."""
    return f"{a + b:g}"


@server.tool()
def multiply(a: float, b: float) -> str:
    """Multiply two numbers."""
    return f"{a * b:g}"


@server.tool()
async def slow_lookup(query: str, seconds: float = 0.5) -> str:
    """Look up a fact, slowly."""
    await asyncio.sleep(seconds)
    return lookup(query)


@server.tool()
async def hang() -> str:
    """Never answers."""
    await asyncio.sleep(3600)
    return "too late"


@server.tool()
def crash() -> str:
    """Kills the server process in the middle of the call."""
    sys.stderr.flush()
    os._exit(3)


@server.tool()
def flood(megabytes: float = 2.0) -> str:
    """Returns a huge text."""
    return "x" * int(megabytes * 1024 * 1024)


@server.tool()
async def exit_soon() -> str:
    """Answers, then the server process exits a moment later (outside any call)."""
    asyncio.get_running_loop().call_later(0.2, os._exit, 4)
    return "bye"


@server.tool()
async def grow(ctx: Context) -> str:
    """Adds a tool `shrink` and tells the client the tool list changed."""

    def shrink() -> str:
        """A tool that exists only after `grow`."""
        return "shrunk"

    server.add_tool(shrink)
    await ctx.session.send_tool_list_changed()
    return "grown"


@server.tool()
def whoami() -> str:
    """Tells its process id (tests check restarts with it)."""
    return str(os.getpid())


if __name__ == "__main__":
    print(f"test server starting, TOOL_TOKEN={os.environ.get('TOOL_TOKEN', '')}", file=sys.stderr)
    if sys.argv[1:2] == ["--http"]:
        server.settings.port = int(sys.argv[2])
        server.settings.log_level = "WARNING"
        server.run(transport="streamable-http")
    else:
        server.run()
