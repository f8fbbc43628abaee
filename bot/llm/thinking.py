"""Separating a reasoning model's thinking from its answer, incrementally.

Why: servers report thinking in different places (see `llm-server-notes.md`, "Reasoning
models"): a delta field (`reasoning_content`, `reasoning`, `reasoning_details`) or inline
in `content` as `<think>...</think>`, with tags cut anywhere between chunks, and R1
distills that send only the closing tag. Everything above the LLM client must only ever
see typed pieces - thinking or answer - so thoughts never reach Discord or the history.

Pure code, no I/O. The result is independent of how the stream was chunked: any
re-chunking of the same content gives the same thinking and the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["CLOSE_TAG", "OPEN_TAG", "StreamDelta", "ThinkingSplitter"]

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"

Kind = Literal["thinking", "answer"]


@dataclass(frozen=True, slots=True)
class StreamDelta:
    """One typed piece of a streamed reply."""

    kind: Kind
    text: str

    @property
    def thinking(self) -> bool:
        return self.kind == "thinking"


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper start of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ThinkingSplitter:
    """Feed content and reasoning pieces; get typed deltas back.

    Content is in one of three states: `start` (only whitespace or a possible `<think>`
    so far), `thinking` (inside `<think>`) and `answer`. Tags in the answer are dropped,
    so stored text never carries them. A reasoning field is always thinking.

    `starts_open`: the model's output begins inside a thinking block whose `<think>` was
    in the prompt (R1 distills: only `</think>` comes). Untagged leading content is then
    thinking until `</think>`; a reply that ends without one (and was not cut by the
    length limit) never thought, and all of it becomes the answer at the end. It cannot
    be the default: it holds back every answer of a model that does not think.
    """

    __slots__ = (
        "_buf",
        "_implied",
        "_starts_open",
        "_state",
        "answer_parts",
        "bare_close",
        "thinking_parts",
    )

    def __init__(self, *, starts_open: bool = False) -> None:
        self._starts_open = starts_open
        self._implied = False  # thinking opened by the template, no `</think>` yet
        # A `</think>` came in the answer before any thinking: the model's template opens
        # the block (see `starts_open`), and this reply's thoughts went out as its answer.
        self.bare_close = False
        self._state = "start"
        self._buf = ""  # content not yet decided (start) or a possible partial tag
        self.thinking_parts: list[str] = []
        self.answer_parts: list[str] = []

    @property
    def thinking(self) -> str:
        return "".join(self.thinking_parts)

    @property
    def answer(self) -> str:
        return "".join(self.answer_parts)

    def reasoning(self, text: str) -> list[StreamDelta]:
        """A piece from a reasoning field (`reasoning_content`, `reasoning`, ...)."""
        return self._emit([], "thinking", text)

    def content(self, text: str) -> list[StreamDelta]:
        """A piece of `content`, possibly carrying inline tags."""
        out: list[StreamDelta] = []
        buf = self._buf + text
        self._buf = ""
        while buf:
            if self._state == "start":
                buf = self._start(buf, out)
            elif self._state == "thinking":
                buf = self._until(buf, CLOSE_TAG, "thinking", "answer", out)
            else:
                buf = self._answer(buf, out)
        return out

    def close(self, finish_reason: str | None = "stop") -> list[StreamDelta]:
        """End of stream: whatever is still held back is final."""
        out: list[StreamDelta] = []
        buf, self._buf = self._buf, ""
        if self._state == "thinking":
            self._emit(out, "thinking", buf)
            if self._implied and finish_reason != "length":
                text = self.thinking
                self.thinking_parts.clear()
                self._emit(out, "answer", text)
        else:
            self._emit(out, "answer", buf if self.answer_parts else buf.lstrip())
        self._state = "answer"
        return out

    # -- states --

    def _start(self, buf: str, out: list[StreamDelta]) -> str:
        body = buf.lstrip()
        if not body:
            self._buf = buf  # only whitespace so far
            return ""
        if body.startswith(OPEN_TAG):
            self._state = "thinking"
            return body[len(OPEN_TAG) :]
        if OPEN_TAG.startswith(body):
            self._buf = buf  # may still become `<think>`
            return ""
        if self._starts_open:
            self._state, self._implied = "thinking", True
            return body
        self._state = "answer"
        return body

    def _until(self, buf: str, tag: str, kind: Kind, then: str, out: list[StreamDelta]) -> str:
        end = buf.find(tag)
        if end >= 0:
            self._emit(out, kind, buf[:end])
            self._state, self._implied = then, False
            return buf[end + len(tag) :]
        keep = _partial_suffix(buf, tag)
        self._emit(out, kind, buf[: len(buf) - keep])
        self._buf = buf[len(buf) - keep :]
        return ""

    def _answer(self, buf: str, out: list[StreamDelta]) -> str:
        # Stray tags in the answer are dropped; a `<think>` opens another thinking block.
        # The answer's leading whitespace (after `</think>`) is dropped.
        if not self.answer_parts:
            buf = buf.lstrip()
            if not buf:
                return ""
        opening, closing = buf.find(OPEN_TAG), buf.find(CLOSE_TAG)
        hits = [i for i in (opening, closing) if i >= 0]
        if not hits:
            keep = max(_partial_suffix(buf, OPEN_TAG), _partial_suffix(buf, CLOSE_TAG))
            self._emit(out, "answer", buf[: len(buf) - keep])
            self._buf = buf[len(buf) - keep :]
            return ""
        at = min(hits)
        if at == closing and not self.thinking_parts:
            self.bare_close = True
        self._emit(out, "answer", buf[:at])
        if at == opening:
            self._state = "thinking"
            return buf[at + len(OPEN_TAG) :]
        return buf[at + len(CLOSE_TAG) :]

    def _emit(self, out: list[StreamDelta], kind: Kind, text: str) -> list[StreamDelta]:
        if text:
            (self.thinking_parts if kind == "thinking" else self.answer_parts).append(text)
            if out and out[-1].kind == kind:
                out[-1] = StreamDelta(kind, out[-1].text + text)
            else:
                out.append(StreamDelta(kind, text))
        return out
