"""Split a reply into Discord-sized messages (pure logic, no Discord import).

A reply longer than Discord's 2000-character limit is sent as several messages. The cut
points should read naturally (paragraph, then line, then word, hard cut last) and a cut
inside a fenced code block closes the fence in one message and reopens it, with the same
language tag, in the next, so both halves still render as code.

The reply is streamed, so the same growing text is split again and again. The plan is
greedy from the start and each cut depends only on the text inside its own window, so
once the text has grown past a part, that part never changes: a message already sent
with it needs at most one final edit, and `IncrementalSplitter` can skip re-planning it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

DISCORD_LIMIT = 2000
MIN_LIMIT = 16  # room for a reopened fence plus some text; smaller is a caller bug

# A fence line: up to 3 spaces, then ``` or ~~~ (3 or more), then the info string.
# Only lines terminated by "\n" count: the state at a position never depends on a line
# that may still grow, which is what keeps earlier parts stable while streaming.
_FENCE_LINE = re.compile(r"^ {0,3}(`{3,}|~{3,})([^\n]*)\n", re.MULTILINE)
_FENCE_TAIL = re.compile(r" {0,3}(`{3,}|~{3,})([^\n]*)\Z")
_LEAD_WS = re.compile(r"\s*")
_BLANK = re.compile(r"[^\S\n]*")
_JOINERS = frozenset("\u200d\ufe0e\ufe0f")
_HARD_BACKSTEP = 32  # how far a hard cut may move back to keep a grapheme whole


@dataclass(frozen=True, slots=True)
class Part:
    """One message of a split reply.

    `body` is what gets sent: ``prefix + core + suffix`` where `core` is
    ``text[start:end]`` without the whitespace at its two ends. `prefix` reopens a code
    fence left open by the previous part (e.g. "```python\\n"), `suffix` closes a fence
    this part cuts through (e.g. "\\n```"). `closer` is what would close a fence still
    open at `end` (equal to `suffix` for all but the last part; for the last part it is
    only a display hint for a streaming message). `open_fence` is the opening line of
    the fence open at `end` ("" if none); it seeds the plan of the next part.
    """

    body: str
    start: int
    end: int
    prefix: str = ""
    suffix: str = ""
    closer: str = ""
    open_fence: str = ""

    @property
    def core(self) -> str:
        """The slice of the original text this part shows, without fence additions."""
        return self.body[len(self.prefix) : len(self.body) - len(self.suffix)]


def plan_split(text: str, limit: int = DISCORD_LIMIT) -> list[Part]:
    """Split `text` into parts whose bodies are at most `limit` characters.

    Parts cover `text` contiguously (first start 0, last end len(text)); a text that is
    empty or only whitespace yields no parts. For any extension ``text + more``, every
    part but the last is identical in ``plan_split(text + more)``.
    """
    _check_limit(limit)
    return _plan(text, limit, 0, "")


def visible_text(parts: Sequence[Part]) -> str:
    """What a reader sees: the message bodies in order, one message per line block."""
    return "\n".join(p.body for p in parts)


class IncrementalSplitter:
    """`plan_split` for a text that only grows, reusing the parts that can no longer change.

    Each call costs O(size of the last part) plus one pass to find the text's end,
    instead of re-planning the whole reply on every streamed edit.
    """

    def __init__(self, limit: int = DISCORD_LIMIT) -> None:
        _check_limit(limit)
        self.limit = limit
        self._done: list[Part] = []
        self._length = 0

    def split(self, text: str) -> list[Part]:
        """Same result as ``plan_split(text, limit)``; `text` must extend the previous one."""
        if len(text) < self._length:  # not an extension: start over rather than be wrong
            self._done = []
        self._length = len(text)
        if self._done:
            last = self._done[-1]
            tail = _plan(text, self.limit, last.end, last.open_fence)
        else:
            tail = _plan(text, self.limit, 0, "")
        parts = self._done + tail
        self._done = parts[:-1]
        return parts


def _check_limit(limit: int) -> None:
    if limit < MIN_LIMIT:
        raise ValueError(f"limit must be at least {MIN_LIMIT}, got {limit}")


def _plan(text: str, limit: int, pos: int, fence: str) -> list[Part]:
    """Greedy plan from `pos`, where `fence` is the fence state (opening line or "")."""
    n = len(text)
    tail_end = len(text.rstrip())
    parts: list[Part] = []
    while pos < n:
        run_end = _match_end(_LEAD_WS, text, pos)
        if run_end >= tail_end:
            # Only whitespace left. Unreachable after a cut (a cut is only made when
            # content remains); kept so spans stay contiguous whatever happens.
            if parts:
                last = parts[-1]
                parts[-1] = Part(
                    last.body, last.start, n, last.prefix, last.suffix, last.closer, last.open_fence
                )
            break
        prefix, _ = _affixes(fence, limit)
        room = limit - len(prefix)
        cs = run_end  # where this part's content starts
        if prefix:
            # Inside a code block keep the first line's indentation (it is code).
            nl = text.rfind("\n", max(pos - 1, 0), run_end)  # pos - 1: pos at a line start
            if nl >= 0 and run_end - (nl + 1) <= room // 4:
                cs = nl + 1
        if tail_end - cs <= room:
            state, closer = _final_state(text, pos, fence)
            parts.append(Part(prefix + text[cs:tail_end], pos, n, prefix, "", closer, state))
            break
        r, state, suffix = _cut(text, pos, cs, room, fence, limit)
        end = cs + r
        body = prefix + text[cs:end].rstrip() + suffix
        parts.append(Part(body, pos, end, prefix, suffix, suffix, state))
        pos, fence = end, state
    return parts


def _match_end(pattern: re.Pattern[str], text: str, pos: int) -> int:
    m = pattern.match(text, pos)
    return m.end() if m else pos


def _run_of(opener: str) -> str:
    """The fence characters of an opening line ("```" of "```python")."""
    ch = opener[0]
    return ch * (len(opener) - len(opener.lstrip(ch)))


def _apply(state: str, run: str, info: str) -> str | None:
    """New fence state after a fence-looking line, or None if the line changes nothing."""
    if not state:
        if run[0] == "`" and "`" in info:  # CommonMark: not an opener
            return None
        return (run + info).strip()
    open_run = _run_of(state)
    if run[0] == open_run[0] and len(run) >= len(open_run) and not info.strip():
        return ""
    return None


@lru_cache(maxsize=512)
def _affixes(opener: str, limit: int) -> tuple[str, str]:
    """(reopen prefix, close suffix) for a fence, shortened or dropped if they would eat
    more than half of a message (only with absurd info strings or tiny limits)."""
    if not opener:
        return "", ""
    run = _run_of(opener)
    closer = "\n" + run
    words = opener[len(run) :].split(maxsplit=1)
    lang = words[0] if words else ""
    for prefix in (opener + "\n", run + lang + "\n", run + "\n"):
        if len(prefix) + len(closer) <= limit // 2:
            return prefix, closer
    return "", ""


def _transitions(text: str, pos: int, stop: int, state: str) -> list[tuple[int, int, str]]:
    """Fence state changes (line start, index after its newline, new state) for the lines
    ending in [pos, stop), starting from `state` at `pos`."""
    out: list[tuple[int, int, str]] = []
    line_start = text.rfind("\n", 0, pos) + 1
    for m in _FENCE_LINE.finditer(text, line_start, stop):
        new = _apply(state, m.group(1), m.group(2))
        if new is not None:
            state = new
            out.append((m.start(), m.end(), new))
    return out


def _final_state(text: str, pos: int, fence: str) -> tuple[str, str]:
    """Fence state at the end of the text for the last part, treating an unterminated
    last line as complete (the model's reply often ends with "```" and no newline)."""
    trans = _transitions(text, pos, len(text), fence)
    state = trans[-1][2] if trans else fence
    if text and text[-1] != "\n":
        m = _FENCE_TAIL.match(text, text.rfind("\n") + 1)
        if m:
            new = _apply(state, m.group(1), m.group(2))
            if new is not None:
                state = new
    return state, ("\n" + _run_of(state) if state else "")


def _cut(text: str, pos: int, cs: int, room: int, fence: str, limit: int) -> tuple[int, str, str]:
    """Choose where the part starting at `pos` (content at `cs`) ends.

    Returns (cut offset from `cs`, fence state at the cut, close suffix). Reads only
    ``text[line start of pos : cs + room + 1]``, which is what makes the plan stable.
    """
    stop = cs + room + 1
    trans = _transitions(text, pos, stop, fence)
    ends = [t[1] for t in trans]
    opens_at = {t[1] for t in trans if t[2]}
    window = text[cs:stop]
    fnw = _match_end(_LEAD_WS, window, 0)  # kept indentation (code), < room // 4 + 1
    reserve = 0
    r, state = 1, fence
    for _ in range(8):
        budget = room - reserve
        r = _choose(window, budget, fnw, cs, opens_at)
        state = _state_at(trans, ends, cs + r, fence)
        if state and window[r - 1] == "\n":
            # The cut is right before the closing fence line: take that line along
            # rather than close the block here and reopen an empty block next.
            for line_start, line_end, new in trans:
                if line_start == cs + r and not new and line_end - cs <= budget + 1:
                    r, state = line_end - cs, ""
                    break
        suffix = _affixes(state, limit)[1]
        if len(suffix) <= reserve:
            return r, state, suffix
        reserve = len(suffix)
    return r, state, ""  # pathological alternation of fence lengths; never seen in practice


def _state_at(trans: list[tuple[int, int, str]], ends: list[int], c: int, initial: str) -> str:
    lo, hi = 0, len(ends)
    while lo < hi:  # bisect_right on ends
        mid = (lo + hi) // 2
        if ends[mid] <= c:
            lo = mid + 1
        else:
            hi = mid
    return trans[lo - 1][2] if lo else initial


def _choose(window: str, budget: int, fnw: int, cs: int, opens_at: set[int]) -> int:
    """Cut offset in `window` for a core of at most `budget` characters.

    Takes the last paragraph break, else line break, else space, else a hard cut, but a
    boundary in the first quarter of the window loses to a lesser boundary further on
    (no tiny messages). Never cuts right after a fence opening line.
    """
    lo = fnw + 2  # a boundary char at lo - 1 leaves at least one content char before it
    hi = budget + 1  # boundary char at most at index budget: it is stripped from the core
    threshold = max(lo, budget // 4)
    para = _last_para(window, lo, hi)
    nl = window.rfind("\n", 0, hi) + 1
    line = nl if nl >= lo else 0
    sp = max(window.rfind(" ", 0, hi), window.rfind("\t", 0, hi)) + 1
    word = sp if sp >= lo else 0
    candidates = [c for c in (para, line, word) if c >= threshold]
    best = max(para, line, word)
    if best >= lo:
        candidates.append(best)
    candidates.append(_hard(window, budget, fnw))
    for r in candidates:
        if window[r - 1] == "\n" and cs + r in opens_at:
            start = window.rfind("\n", 0, r - 1) + 1  # cut before the opening line instead
            if start >= lo:
                return start
            continue
        return r
    return candidates[-1]


def _last_para(window: str, lo: int, hi: int) -> int:
    """Offset just after the last blank line in window[:hi], or 0 if none at >= lo."""
    j = hi
    while True:
        i = window.rfind("\n", 0, j)
        if i + 1 < lo:
            return 0
        k = window.rfind("\n", 0, i)
        if k < 0:
            return 0
        if _BLANK.fullmatch(window, k + 1, i):
            return i + 1
        j = i


def _hard(window: str, budget: int, fnw: int) -> int:
    """Hard cut at `budget`, but never inside "\\r\\n" and not inside a grapheme such as
    an emoji ZWJ sequence or a letter with combining marks (when it is short)."""
    r = budget
    if window[r - 1] == "\r" and window[r] == "\n":
        return r + 1  # the stripped "\r\n" ends this part
    k = r
    while k > fnw + 1 and r - k < _HARD_BACKSTEP and _joined(window[k - 1], window[k]):
        k -= 1
    return k if not _joined(window[k - 1], window[k]) else r


def _joined(a: str, b: str) -> bool:
    """True if a cut between `a` and `b` would split one visible character."""
    o = ord(b)
    return (
        b in _JOINERS
        or a == "\u200d"
        or 0x1F3FB <= o <= 0x1F3FF  # skin tone modifiers
        or 0xE0020 <= o <= 0xE007F  # tag characters (flag sequences)
        or unicodedata.combining(b) != 0
    )
