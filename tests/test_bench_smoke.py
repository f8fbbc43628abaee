"""The benchmark's machinery works: the smallest run end to end, and its analysis.

Correctness only, never timing: the machine running the tests is shared and noisy, so
figures are checked for presence and type, not for value.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from bench.analysis import analyse_reply, part_geometry, token_lags, visible_prefix
from bench.workload import parse_tag, reply_pieces, reply_text, tag_text
from bot.delivery.splitter import plan_split
from tests.standin.llm_api import tokenize

ROOT = Path(__file__).resolve().parent.parent


def test_workload_text_has_exactly_the_tokens_the_tag_asks_for() -> None:
    for n in (1, 40, 300, 3000):
        text = reply_text(n, f"c{n}-0")
        assert tokenize(text) == reply_pieces(n, f"c{n}-0")
        assert len(tokenize(text)) == n
    assert reply_text(300, "a") != reply_text(300, "b")
    assert parse_tag("alice: " + tag_text(300, "c7-2")) == (300, "c7-2")


def test_visible_prefix_follows_parts_marker_and_gaps() -> None:
    text = reply_text(3000, "geometry")
    parts = part_geometry(text)
    assert [p.body for p in parts] == [p.body for p in plan_split(text)]
    first = parts[0]
    # A streaming state of the first part: some text plus the in-progress marker.
    shown = first.body[:100]
    assert visible_prefix(parts, text, [shown + " ⏳"]) == (first.content_start + 100, False)
    # Message 2 exists but message 1 still lags behind its cut: only message 1 counts.
    assert visible_prefix(parts, text, [shown, parts[1].body])[0] == first.content_start + 100
    # Everything shown: the whole text (up to trailing whitespace) is visible.
    end, bad = visible_prefix(parts, text, [p.body for p in parts])
    assert not bad and text[end:].strip() == ""
    # Text that is not the reply's is reported, not counted.
    assert visible_prefix(parts, text, ["something else"]) == (0, True)


def test_token_lags_and_reply_analysis() -> None:
    assert token_lags([0.0, 1.0], [3, 6], [(0.5, 3), (2.0, 6)]) == [0.5, 1.0]
    assert token_lags([0.0], [3], []) == [math.inf]
    text = "One two three."
    ends = [3, 7, 14]
    states = [[(0.5, "One ⏳"), (1.5, "One two three.")]]
    fig = analyse_reply("x", text, text, [0.0, 0.4, 0.8], ends, states)
    assert fig.ok and fig.parts == 1 and fig.edits == 1
    assert fig.lags == [0.5, 1.1, 0.7]
    assert fig.first_text_s == 0.5
    wrong = analyse_reply("x", text, text, [0.0, 0.4, 0.8], ends, [[(0.5, "One two")]])
    assert not wrong.ok and wrong.problems


def test_smallest_benchmark_run_writes_the_documented_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| scenario |" in proc.stdout and "Targets met:" in proc.stdout
    data = json.loads(out.read_text())
    assert data["mode"] == "smoke"
    assert {"nproc", "cpu_model", "python"} <= set(data["machine"])
    s, quick = data["scenarios"]
    assert s["replies"] == s["replies_ok"] == 1 and not s["timed_out"]
    assert s["problems"] == [] and s["mismatched_states"] == 0
    assert s["tokens"] == 40
    for key in ("first_text_ms", "lag_s", "edits_per_reply", "parts_per_reply"):
        assert {"median", "p95", "max"} <= set(s[key]), key
    assert s["lag_s"]["n"] == 40
    assert {"median", "p95", "max", "period"} <= set(s["lag_floor_s"])
    for key in ("http_429", "bot_cpu_s_per_1k_tokens", "bot_peak_rss_mib"):
        assert isinstance(s[key], int | float), key
    # Quick replies against a Discord that takes 50 ms: 3 short answers and 1 instant error.
    assert quick["replies"] == quick["replies_ok"] == 4 and not quick["timed_out"]
    assert quick["discord_delay_ms"] == [50, 50]
    for key in ("answer_to_first_text_ms", "answer_to_final_ms", "error_to_note_ms"):
        assert {"median", "p95", "max"} <= set(quick["quick"][key]), key
    assert quick["quick"]["answer_to_first_text_ms"]["n"] == 3
    assert quick["quick"]["error_to_note_ms"]["n"] == 1
    assert "| quick replies |" in proc.stdout
    assert data["redis"]["round_trips_per_turn"] > 0
    assert {"sse_parse", "split_plan", "context_build", "wakeup_floor"} <= set(data["micro"])
    assert all({"scenario", "what", "target", "value", "met"} <= set(t) for t in data["targets"])
