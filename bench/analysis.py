"""From raw records to figures: what was visible in Discord when, per streamed token.

Pure functions over plain data, so they can be checked without running anything.

The key question is "when could a reader first see token j, and everything before it?"
The inputs are the LLM's chunk records (send time and end offset of each token in the
reply text) and, per Discord message of the reply, its acknowledged states (time of the
stand-in's response to the create/edit, and the content it then showed). From the
message states we compute, after every acknowledged request, the *visible prefix*: the
longest prefix of the reply text that the reply's messages show contiguously, in order.
A message's content maps onto the reply text through the final split plan
(`bot.delivery.splitter.plan_split`): part i starts at a known offset, may begin with a reopened
code fence, and while streaming may end with a fence closer and the " ⏳" marker. Parts
other than the last never change once the text has grown past them, so the final plan
is valid for every earlier state of a part.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from bot.delivery.splitter import Part, plan_split

MARKER = " ⏳"
_CLOSER = re.compile(r"\n(`{3,}|~{3,})\Z")

__all__ = [
    "MARKER",
    "PartGeometry",
    "ReplyFigures",
    "analyse_reply",
    "part_geometry",
    "token_lags",
    "visible_end",
    "visible_prefix",
]


@dataclass(frozen=True, slots=True)
class PartGeometry:
    """Where one part of the final plan sits in the reply text."""

    body: str  # the part's final message content
    prefix: str  # a reopened code fence ("```python\n") or ""
    content_start: int  # offset in the text of the first character the part shows


def part_geometry(text: str) -> list[PartGeometry]:
    """The final split plan of `text`, with each part's content offset in `text`."""
    out = []
    for part in plan_split(text):
        out.append(PartGeometry(part.body, part.prefix, _content_start(text, part)))
    return out


def _content_start(text: str, part: Part) -> int:
    """First offset >= part.start where the part's core (body minus fence additions) sits.

    The splitter drops whitespace at the start of a part (and keeps a code line's
    indentation after a reopened fence), so the core starts at or a little after `start`.
    """
    core = part.core
    pos = part.start
    while pos <= part.end:
        if text.startswith(core, pos):
            return pos
        pos += 1
    raise ValueError(f"part core not found at {part.start}..{part.end}")


def visible_end(part: PartGeometry, text: str, content: str) -> int | None:
    """Offset in `text` up to which `content` (a state of this part's message) shows it.

    None if the content is not a prefix of the part as planned (wrong or garbled text).
    """
    if content.endswith(MARKER):
        content = content[: -len(MARKER)]
    if part.prefix:
        if not content.startswith(part.prefix):
            return None
        content = content[len(part.prefix) :]
    start = part.content_start
    if text.startswith(content, start):
        return start + len(content)
    m = _CLOSER.search(content)  # a streaming part inside a code block shows a closer
    if m is not None:
        content = content[: m.start()]
        if text.startswith(content, start):
            return start + len(content)
    return None


def visible_prefix(
    parts: Sequence[PartGeometry], text: str, contents: Sequence[str | None]
) -> tuple[int, bool]:
    """(length of the text prefix shown contiguously, whether some content did not match).

    `contents[i]` is what message i shows now (None: not sent yet). The prefix stops at
    the first message that is missing, unmatched, or leaves a gap of non-whitespace
    text before the next one.
    """
    shown = 0
    mismatch = False
    for i, content in enumerate(contents):
        if content is None:
            break
        if i >= len(parts):
            mismatch = True
            break
        end = visible_end(parts[i], text, content)
        if end is None:
            mismatch = True
            break
        start = parts[i].content_start
        if start > shown and text[shown:start].strip():
            break
        shown = max(shown, end)
    return shown, mismatch


def token_lags(
    times: Sequence[float], ends: Sequence[int], timeline: Sequence[tuple[float, int]]
) -> list[float]:
    """Per token: first time the visible prefix reached its end, minus its send time.

    `timeline` is (ack time, visible prefix) in time order. A token never shown gets inf.
    """
    lags: list[float] = []
    j = 0
    best = 0
    for t, shown in timeline:
        best = max(best, shown)
        while j < len(ends) and ends[j] <= best:
            lags.append(t - times[j])
            j += 1
    lags.extend(math.inf for _ in range(len(ends) - j))
    return lags


@dataclass
class ReplyFigures:
    """Everything measured about one reply."""

    ident: str
    ok: bool  # final messages equal the split of the model's text, which equals the expected
    problems: list[str]
    parts: int
    edits: int
    first_text_s: float  # first token send -> ack of the first message with text
    lags: list[float]  # per token
    tokens: int
    mismatched_states: int


def analyse_reply(
    ident: str,
    expected: str,
    llm_text: str,
    times: Sequence[float],
    ends: Sequence[int],
    messages: Sequence[Sequence[tuple[float, str]]],
) -> ReplyFigures:
    """Figures for one reply.

    `messages[i]` is the list of acknowledged states (time, content) of the reply's
    i-th message, creation first.
    """
    problems: list[str] = []
    if llm_text != expected:
        problems.append("the LLM's text differs from the expected reply")
    parts = part_geometry(llm_text)
    finals = [states[-1][1] if states else "" for states in messages]
    bodies = [p.body for p in parts]
    if finals != bodies:
        if len(finals) != len(bodies):
            problems.append(f"{len(finals)} messages, expected {len(bodies)} parts")
        else:
            bad = next(i for i, (a, b) in enumerate(zip(finals, bodies, strict=True)) if a != b)
            problems.append(f"message {bad + 1} ends with other text than its part")
    events = sorted((t, i, content) for i, states in enumerate(messages) for t, content in states)
    current: list[str | None] = [None] * len(messages)
    timeline: list[tuple[float, int]] = []
    mismatched = 0
    for t, i, content in events:
        current[i] = content
        shown, bad_state = visible_prefix(parts, llm_text, current)
        mismatched += bad_state
        timeline.append((t, shown))
    lags = token_lags(times, ends, timeline)
    never = sum(1 for lag in lags if lag == math.inf)
    if never:
        problems.append(f"{never} tokens never became visible")
    first_text = math.nan
    if times and messages and messages[0]:
        first_text = messages[0][0][0] - times[0]
    return ReplyFigures(
        ident=ident,
        ok=not problems,
        problems=problems,
        parts=len(messages),
        edits=sum(max(len(s) - 1, 0) for s in messages),
        first_text_s=first_text,
        lags=[lag for lag in lags if lag != math.inf],
        tokens=len(times),
        mismatched_states=mismatched,
    )
