"""Tests for bot.delivery.splitter: cut rules, code fences, properties streaming relies on."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.delivery.splitter import (
    DISCORD_LIMIT,
    IncrementalSplitter,
    Part,
    plan_split,
    visible_text,
)

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")


def check_parts(text: str, parts: list[Part], limit: int) -> None:
    """Every invariant the renderer and Discord rely on."""
    if not text.strip():
        assert parts == []
        return
    assert parts, "text with content must produce parts"
    assert parts[0].start == 0
    assert parts[-1].end == len(text)
    for a, b in itertools.pairwise(parts):
        assert a.end == b.start, "parts must be contiguous"
        assert a.start < a.end
        # never cut inside "\r\n"
        assert not (text[a.end - 1] == "\r" and text[a.end] == "\n")
        # a closed fence is reopened, with the same fence characters
        assert a.suffix == a.closer
        if a.suffix:
            assert b.prefix.startswith(a.suffix[1:])
        else:
            assert b.prefix == ""
    for p in parts:
        assert 0 < len(p.body) <= limit
        assert p.body.strip(), "no whitespace-only bodies"
        assert p.body == p.prefix + p.core + p.suffix
        span = text[p.start : p.end]
        core_end = len(span.rstrip())
        core_start = core_end - len(p.core)
        assert span[core_start:core_end] == p.core, "core is the span minus end whitespace"
        assert not span[:core_start].strip()
        assert p.core.strip()
    assert parts[-1].suffix == ""


def fence_balanced(body: str) -> bool:
    """True if every fence opened in `body` is closed inside it (CommonMark-lite)."""
    open_run = ""
    for line in body.split("\n"):
        m = FENCE.match(line.rstrip("\r"))
        if not m:
            continue
        run, info = m.group(1), m.group(2)
        if not open_run:
            if not (run[0] == "`" and "`" in info):
                open_run = run
        elif run[0] == open_run[0] and len(run) >= len(open_run) and not info.strip():
            open_run = ""
    return not open_run


def cut_kinds(text: str, parts: list[Part]) -> list[str]:
    out = []
    for p in parts[:-1]:
        before = text[: p.end]
        if re.search(r"\n[^\S\n]*\n$", before):
            out.append("para")
        elif before.endswith("\n"):
            out.append("line")
        elif before[-1] in " \t":
            out.append("word")
        else:
            out.append("hard")
    return out


# --- unit tests: cut rules ---------------------------------------------------------------


def test_short_text_is_one_part() -> None:
    parts = plan_split("  Hello there!  \n")
    assert parts == [Part("Hello there!", 0, 17)]


def test_empty_and_whitespace_give_no_parts() -> None:
    assert plan_split("") == []
    assert plan_split(" \n\r\n\t ") == []


def test_exact_limit_is_not_split() -> None:
    text = "x" * DISCORD_LIMIT
    assert [p.body for p in plan_split(text)] == [text]
    assert len(plan_split(text + "y")) == 2


def test_limit_too_small_is_rejected() -> None:
    with pytest.raises(ValueError):
        plan_split("abc", limit=5)


def test_paragraph_beats_later_line_break() -> None:
    para1 = "\n".join(["word " * 20] * 12)  # ~1200 chars, with line breaks
    para2 = "\n".join(["more " * 20] * 12)
    text = para1 + "\n\n" + para2
    parts = plan_split(text)
    assert cut_kinds(text, parts)[0] == "para"
    assert parts[0].body == para1.strip()


def test_early_paragraph_loses_to_line_break() -> None:
    text = "Intro.\n\n" + "\n".join(["line " * 15] * 40)
    parts = plan_split(text)
    assert cut_kinds(text, parts)[0] == "line"
    assert len(parts[0].body) > 1500


def test_line_break_beats_later_space() -> None:
    text = ("a" * 1500) + "\n" + ("word " * 200)
    parts = plan_split(text)
    assert parts[0].body == "a" * 1500
    assert cut_kinds(text, parts)[0] == "line"


def test_early_line_break_loses_to_word() -> None:
    text = "Title\n" + ("word " * 600)
    parts = plan_split(text)
    assert cut_kinds(text, parts)[0] == "word"
    assert len(parts[0].body) > 1900
    assert parts[0].body.endswith("word")


def test_word_beats_hard_cut() -> None:
    url = "https://example.com/" + "x" * 1975
    text = "Look at this link: " + url
    parts = plan_split(text)
    assert [p.body for p in parts] == ["Look at this link:", url]


def test_hard_cut_without_spaces() -> None:
    text = "x" * 5000
    parts = plan_split(text)
    assert [len(p.body) for p in parts] == [2000, 2000, 1000]
    check_parts(text, parts, DISCORD_LIMIT)


# --- code fences -------------------------------------------------------------------------


def python_block(lines: int, start: int = 0) -> str:
    body = "\n".join(f"    value_{i} = compute({i}, name='item-{i}')" for i in range(start, lines))
    return "```python\ndef f():\n" + body + "\n```"


def test_code_fence_is_closed_and_reopened_with_language() -> None:
    text = "Here is the code:\n\n" + python_block(120) + "\n\nThat's it."
    parts = plan_split(text)
    check_parts(text, parts, DISCORD_LIMIT)
    assert len(parts) >= 3
    assert parts[0].suffix == "\n```"
    for p in parts[1:]:
        assert p.body.startswith("```python\n")
    for p in parts:
        assert fence_balanced(p.body), p.body[-80:]
    # the kept indentation of the first reopened line
    assert parts[1].body.startswith("```python\n    value_")
    assert parts[-1].body.endswith("That's it.")


def test_6000_char_reply_with_two_code_blocks() -> None:
    prose = " ".join(f"sentence number {i} explains a detail." for i in range(30))
    text = (
        prose
        + "\n\n"
        + python_block(40)
        + "\n\n"
        + prose
        + "\n\n"
        + "```js\n"
        + "\n".join(f"const v{i} = await fetchThing({i});" for i in range(60))
        + "\n```\n\n"
        + prose
    )
    assert 6000 < len(text) < 7500
    parts = plan_split(text)
    check_parts(text, parts, DISCORD_LIMIT)
    assert 3 <= len(parts) <= 5
    for p in parts:
        assert fence_balanced(p.body)
    joined = visible_text(parts)
    assert joined.count("```python") >= 1 and joined.count("```js") >= 1
    # every code line survives
    for i in range(40):
        assert f"value_{i} = compute({i}," in joined
    for i in range(60):
        assert f"const v{i} = await fetchThing({i});" in joined


def test_tilde_and_long_fences() -> None:
    text = "~~~~ text\n" + "\n".join(f"line {i} ```" for i in range(400)) + "\n~~~~\nafter"
    parts = plan_split(text, 500)
    check_parts(text, parts, 500)
    assert parts[0].suffix == "\n~~~~"
    assert all(p.body.startswith("~~~~ text\n") for p in parts[1:])
    assert all(fence_balanced(p.body) for p in parts)


def test_no_empty_block_right_after_opening_line() -> None:
    filler = "a" * 1985  # the opening line ends right at the window's end
    text = filler + "\n```python\n" + "x = 1\n" * 100 + "```"
    parts = plan_split(text)
    check_parts(text, parts, DISCORD_LIMIT)
    assert parts[0].body == filler  # cut before the opener, not after it
    assert parts[0].suffix == ""


def test_closing_fence_line_goes_with_its_block() -> None:
    code = "```\n" + "y\n" * 990 + "```\n"
    text = code + "z" * 300
    parts = plan_split(text)
    check_parts(text, parts, DISCORD_LIMIT)
    assert parts[0].body == code.strip()
    assert parts[1].body == "z" * 300


def test_unclosed_fence_at_end_gives_closer_hint() -> None:
    parts = plan_split("text\n```py\nprint(1)")
    assert parts[-1].closer == "\n```"
    assert parts[-1].suffix == ""
    assert plan_split("```\ncode\n```")[-1].closer == ""  # closing line without newline


# --- CRLF and non-BMP --------------------------------------------------------------------


def test_crlf_paragraphs_and_lines() -> None:
    text = "\r\n\r\n".join(("para " * 30 + "\r\n") * 5 for _ in range(10))
    parts = plan_split(text)
    check_parts(text, parts, DISCORD_LIMIT)
    assert set(cut_kinds(text, parts)) == {"para"}
    for p in parts:
        assert not p.body.endswith("\r")


def test_crlf_never_split_on_hard_cut() -> None:
    for limit in range(16, 40):
        text = ("x" * (limit - 1) + "\r\n") * 5
        parts = plan_split(text, limit)
        check_parts(text, parts, limit)


def test_emoji_and_zwj_sequences_are_not_split() -> None:
    family = "👨\u200d👩\u200d👧"
    text = family * 900  # 4500 code points, no spaces
    parts = plan_split(text)
    check_parts(text, parts, DISCORD_LIMIT)
    for p in parts[:-1]:
        assert text[p.end - 1] != "\u200d" and text[p.end] != "\u200d"
    text2 = "😀" * 4100
    assert [len(p.body) for p in plan_split(text2)] == [2000, 2000, 100]


def test_combining_marks_stay_with_their_letter() -> None:
    text = "e\u0301" * 1500
    parts = plan_split(text)
    check_parts(text, parts, DISCORD_LIMIT)
    for p in parts[1:]:
        assert p.body[0] == "e"


# --- incremental -------------------------------------------------------------------------


def test_incremental_matches_plan_split_while_streaming() -> None:
    text = ("Some prose here.\n\n" + python_block(80) + "\n\n") * 3
    inc = IncrementalSplitter()
    for i in range(0, len(text) + 1, 37):
        assert inc.split(text[:i]) == plan_split(text[:i])
    assert inc.split(text) == plan_split(text)
    # a shorter text (not an extension) resets the cache instead of being wrong
    assert inc.split(text[:100]) == plan_split(text[:100])


# --- properties --------------------------------------------------------------------------

TOKENS = [
    "a",
    "word",
    "longerword",
    " ",
    "  ",
    "\n",
    "\n\n",
    "\r\n",
    "\r\n\r\n",
    "\t",
    "```",
    "```python\n",
    "\n```\n",
    "~~~\n",
    "😀",
    "👍🏽",
    "e\u0301",
    "👨\u200d👩\u200d👧",
    "x" * 40,
    "`",
    "    ",
]
texts = st.lists(st.sampled_from(TOKENS), max_size=250).map("".join)
limits = st.integers(min_value=16, max_value=160)
PROP = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROP
@given(text=texts, limit=limits)
def test_property_invariants(text: str, limit: int) -> None:
    check_parts(text, plan_split(text, limit), limit)


@PROP
@given(text=texts, more=texts, limit=limits)
def test_property_stable_under_extension(text: str, more: str, limit: int) -> None:
    before = plan_split(text, limit)
    after = plan_split(text + more, limit)
    assert after[: max(len(before) - 1, 0)] == before[:-1]
    assert len(after) >= len(before)


@PROP
@given(text=texts, cut=st.floats(min_value=0, max_value=1), limit=limits)
def test_property_stable_at_any_character(text: str, cut: float, limit: int) -> None:
    """Streaming can stop anywhere: between "\\r" and "\\n", inside "```", inside a ZWJ emoji."""
    before = plan_split(text[: int(len(text) * cut)], limit)
    assert plan_split(text, limit)[: max(len(before) - 1, 0)] == before[:-1]


@PROP
@given(chunks=st.lists(texts, min_size=1, max_size=8), limit=limits)
def test_property_incremental_equals_full(chunks: list[str], limit: int) -> None:
    inc = IncrementalSplitter(limit)
    text = ""
    for chunk in chunks:
        text += chunk
        assert inc.split(text) == plan_split(text, limit)


code_line = st.lists(
    st.sampled_from([*"abc xyz=()_:;#'\"0123456789", "    ", "😀", "\t", "return"]),
    max_size=40,
).map("".join)
code_block = st.tuples(
    st.sampled_from(["```", "```python", "```js", "~~~", "````rust", "```c++"]),
    st.lists(code_line, max_size=40),
).map(lambda b: b[0] + "\n" + "\n".join(b[1]) + ("\n" if b[1] else "") + _run(b[0]) + "\n")
prose = st.lists(st.sampled_from(["Some", "words", "here.", "\n", "\n\n", " "]), max_size=60).map(
    " ".join
)


def _run(opener: str) -> str:
    return opener[: len(opener) - len(opener.lstrip(opener[0]))]


@PROP
@given(
    blocks=st.lists(st.one_of(code_block, prose), min_size=1, max_size=10),
    limit=st.integers(min_value=60, max_value=400),
)
def test_property_code_blocks_render_in_every_part(blocks: list[str], limit: int) -> None:
    text = "\n".join(blocks)
    parts = plan_split(text, limit)
    check_parts(text, parts, limit)
    for p in parts:
        assert fence_balanced(p.body), p.body


@PROP
@given(blocks=st.lists(code_block, min_size=1, max_size=6), limit=limits)
def test_property_all_code_texts(blocks: list[str], limit: int) -> None:
    text = "".join(blocks)
    parts = plan_split(text, limit)
    check_parts(text, parts, limit)
    for a, b in itertools.pairwise(parts):
        run = _run(a.open_fence) if a.open_fence else ""
        if run and 2 * (len(run) + 1) <= limit // 2:  # else the fence is too long to repeat
            assert b.prefix, "a part inside a block reopens it"


@PROP
@given(
    pieces=st.lists(
        st.sampled_from(["x", "é", "😀", "👍🏽", "e\u0301", "\u200d", "ab" * 30]),
        min_size=1,
        max_size=400,
    ),
    limit=limits,
)
def test_property_long_lines_without_spaces(pieces: list[str], limit: int) -> None:
    text = "".join(pieces)
    parts = plan_split(text, limit)
    check_parts(text, parts, limit)
    # hard cuts keep messages nearly full (backstep for graphemes is bounded)
    for p in parts[:-1]:
        assert len(p.body) >= limit - 33


def test_incremental_is_cheap_on_long_replies() -> None:
    """Re-splitting a growing 60k reply 1500 times stays fast (streaming re-plans often)."""
    import time

    text = ("A paragraph of prose with words. " * 40 + "\n\n" + python_block(30) + "\n\n") * 20
    inc = IncrementalSplitter()
    t0 = time.process_time()
    for i in range(1, 1501):
        inc.split(text[: len(text) * i // 1500])
    assert time.process_time() - t0 < 2.0
