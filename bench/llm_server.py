"""The loopback LLM for the benchmark, in a process of its own.

    python -m bench.llm_server --ttft 0.2 --tps 30 --records /tmp/records.json

Why not `python -m tests.standin.llm_api` as is: that command line keeps no records
(its chunk records hold the cumulative text of every chunk, quadratic in the reply
length: 200 replies of 3000 tokens would be gigabytes). This wrapper runs the same
`LLMStandIn` and `Behavior`, but keeps per chunk only its send time and the length of
the text so far, answers each request with the text its tag names (see
`bench.workload`), and on SIGTERM writes everything to `--records` as JSON.

Running it in its own process keeps the LLM's chunk writes from sharing an event loop
(and a core) with the Discord stand-in, so neither delays the other's timestamps.
The first stdout line is the base URL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from aiohttp import web

from bench.workload import ERROR_TOKENS, parse_tag, reply_text
from tests.standin.llm_api import (
    Behavior,
    ChunkRecord,
    LLMStandIn,
    RecordedRequest,
    serve_until_signalled,
)


class CompactChunks:
    """Stands in for `RecordedRequest.chunks`: keeps times and text lengths, not texts.

    `LLMStandIn` only appends to the list, takes its length (completion tokens) and reads
    the last record (the text so far), so that is all this supports.
    """

    __slots__ = ("ends", "last", "times")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.ends: list[int] = []
        self.last: ChunkRecord | None = None

    def append(self, record: ChunkRecord) -> None:
        self.times.append(record.t)
        self.ends.append(len(record.text))
        self.last = record

    def __len__(self) -> int:
        return len(self.times)

    def __bool__(self) -> bool:
        return bool(self.times)

    def __getitem__(self, index: int) -> ChunkRecord:
        if index != -1 or self.last is None:
            raise IndexError("CompactChunks keeps only the last record")
        return self.last


#: What a tag asking for `ERROR_TOKENS` gets at once: a provider refusing the key.
INSTANT_ERROR = Behavior.error(401, {"error": {"message": "Invalid API key", "code": 401}})


class BenchLLM(LLMStandIn):
    """`LLMStandIn` with compact chunk records; tags asking for no tokens get an error."""

    def _new_record(self, request: web.Request, raw: bytes, body: Any) -> RecordedRequest:
        rec = super()._new_record(request, raw, body)
        rec.raw = b""  # the prompt grows with the history; nothing here needs it
        rec.chunks = CompactChunks()  # type: ignore[assignment]
        tag = parse_tag(last_user_text(body)) if isinstance(body, dict) else None
        if tag is not None and tag[0] == ERROR_TOKENS:
            # The handler takes the next queued behaviour right after this, with no
            # await in between, so this request and no other gets the error.
            self.behaviors.appendleft(INSTANT_ERROR)
        return rec


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the last user message of a chat request (where the tag is)."""
    for msg in reversed(body.get("messages") or []):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            return content if isinstance(content, str) else ""
    return ""


def reply_for(body: dict[str, Any]) -> str:
    """The reply the tag in the request's last user message names."""
    tag = parse_tag(last_user_text(body))
    if tag is None:
        return "No benchmark tag in this request."
    return reply_text(*tag)


def records_json(llm: LLMStandIn) -> dict[str, Any]:
    """Every chat request: its tag, start, per-chunk send times and text ends, final text."""
    out = []
    for rec in llm.chat_requests:
        chunks = rec.chunks
        times = getattr(chunks, "times", [c.t for c in chunks])
        ends = getattr(chunks, "ends", [len(c.text) for c in chunks])
        body = rec.body if isinstance(rec.body, dict) else {}
        tag = parse_tag(last_user_text(body))
        out.append(
            {
                "ident": tag[1] if tag else None,
                "started": rec.started,
                "finished": rec.finished,
                "outcome": rec.outcome,
                "times": times,
                "ends": ends,
                "text": rec.text,
                "prompt_messages": len(body.get("messages") or []),
            }
        )
    return {"requests": out}


def write_records(path: str, llm: LLMStandIn) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(records_json(llm), fh)


async def serve(args: argparse.Namespace) -> None:
    behavior = Behavior(reply=reply_for, ttft=args.ttft, tps=args.tps or None)
    llm = BenchLLM(behavior, host="127.0.0.1", port=args.port)
    try:
        await serve_until_signalled(llm)
    finally:
        if args.records:
            write_records(args.records, llm)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="loopback LLM for the benchmark")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ttft", type=float, default=0.2, help="seconds to the first token")
    parser.add_argument("--tps", type=float, default=30.0, help="tokens per second (0: no limit)")
    parser.add_argument("--records", default="", help="write the request records here on exit")
    args = parser.parse_args(argv)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
