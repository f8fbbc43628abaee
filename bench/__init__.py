"""The streaming benchmark: `./bench` (see bench/__main__.py and docs/benchmarks.md).

Runs the real, unmodified bot in its own process against the Discord stand-in (Discord's
rate limits on), a loopback LLM in its own process and a real Redis, and measures what a
Discord user would see (time to first text, lag of the visible text behind the model)
and what the bot costs (CPU per token, memory, Redis round trips).
"""
