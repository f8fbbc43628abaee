"""What the benchmark asks and what the model answers, shared by both sides.

Why a module of its own: the loopback LLM runs in another process, and the benchmark
must know, without asking it, which reply belongs to which channel and what its text
is. A tag in the user's message ("bench n=300 id=c4-0") names the reply; the reply
text is a pure function of the tag, so both processes derive the same text, and a
reply that lands in the wrong channel or loses text is caught by comparison.

The text looks like a model's answer as far as splitting is concerned: paragraphs,
some single line breaks, and in long replies fenced code blocks, so replies past
2000 characters are cut at paragraph, line and word boundaries and sometimes inside
a code block (closed and reopened), exactly as in real use.
"""

from __future__ import annotations

import random
import re
import zlib

__all__ = [
    "ERROR_TOKENS",
    "TAG_RE",
    "parse_tag",
    "quick_tokens",
    "reply_pieces",
    "reply_text",
    "tag_text",
]

_VOCABULARY = (
    "the quick brown fox jumps over a lazy dog while seven bright stars slowly drift "
    "across an endless violet sky and nobody minds at all because streaming replies "
    "render token by token into messages that grow until they reach the limit"
)
_WORDS = _VOCABULARY.split()
_CODE = [
    "```python",
    "def",
    "answer(question:",
    "str)",
    "->",
    "str:",
    "\n    words",
    "=",
    "question.split()",
    "\n    return",
    '"',
    '".join(reversed(words))',
    "\n```",
]
TAG_RE = re.compile(r"bench n=(\d+) id=(\S+)")


def tag_text(tokens: int, ident: str) -> str:
    """The user's message body that asks for a reply of `tokens` tokens named `ident`."""
    return f"bench n={tokens} id={ident}"


def parse_tag(text: str) -> tuple[int, str] | None:
    """(tokens, ident) from a message that contains a tag, else None."""
    m = TAG_RE.search(text)
    return (int(m.group(1)), m.group(2)) if m else None


def reply_pieces(tokens: int, ident: str) -> list[str]:
    """Exactly `tokens` streamed pieces (each: optional whitespace, then non-space)."""
    rng = random.Random(zlib.crc32(ident.encode()))
    pieces: list[str] = []
    since_break = 0
    code_every = 900  # long replies get a code block roughly this often
    next_code = rng.randint(300, code_every) if tokens >= 1000 else tokens + 1
    while len(pieces) < tokens:
        if len(pieces) >= next_code and tokens - len(pieces) > len(_CODE) + 2:
            pieces.append("\n\n" + _CODE[0])
            pieces.extend(p if p.startswith("\n") else " " + p for p in _CODE[1:])
            pieces[-len(_CODE) + 1] = "\n" + _CODE[1]  # code starts on its own line
            next_code = len(pieces) + rng.randint(code_every // 2, code_every)
            since_break = 0
            pieces.append("\n\n" + rng.choice(_WORDS).capitalize())
            continue
        word = rng.choice(_WORDS)
        if not pieces:
            sep = ""
            word = word.capitalize()
        elif since_break > 40 and rng.random() < 0.08:
            sep, since_break = "\n\n", 0
            word = word.capitalize()
        elif rng.random() < 0.01:
            sep, since_break = "\n", 0
        else:
            sep = " "
        pieces.append(sep + word)
        since_break += 1
    return pieces[:tokens]


def reply_text(tokens: int, ident: str) -> str:
    """The whole reply the loopback LLM streams for this tag."""
    return "".join(reply_pieces(tokens, ident))


#: A tag asking for this many tokens gets an instant HTTP error instead (quick replies).
ERROR_TOKENS = 0


def quick_tokens(ident: str, low: int = 5, high: int = 20) -> int:
    """Length of a quick reply: `low`..`high` tokens, a pure function of its name."""
    return low + zlib.crc32(ident.encode()) % (high - low + 1)
