"""Talking to OpenAI-compatible servers: the streaming client, SSE parsing, token counts."""
