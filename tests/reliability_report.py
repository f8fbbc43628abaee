"""The reliability catalogue and the generated table in `docs/reliability.md`.

Every reliability case is one row of `CASES`: the area, what is tried, what must happen,
and the test (``test_name`` or ``test_name[param]``) that tries it over the wire. The
reliability test modules enable `ReliabilityReport` (a pytest plugin registered at run
time by the session fixture `reliability_report`); it records each case's outcome and, at
the end of a run in which at least one case ran, rewrites `docs/reliability.md`.

The file is deterministic apart from the outcome column: rows come from this catalogue in
its order, never from run order, and nothing else in it depends on the run (no times, no
measured numbers). Measurements (429 counts, RSS, run time) go to the terminal summary.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
PLUGIN_NAME = "reliability-report"
# Parameter ids that pick how a case runs, not which case it is.
_RUN_VARIANTS = frozenset({"none", "realistic", "single", "cluster"})


@dataclass(frozen=True)
class Case:
    area: str
    case: str
    expected: str
    test: str  # test function name, with "[param id]" for a parametrized case


CASES: list[Case] = [
    # --- Redis -------------------------------------------------------------------------
    Case(
        "Redis",
        "Stopped gracefully (SIGTERM) mid-conversation, restarted",
        "Messages during the outage get the clear 'memory (Redis) is unavailable' note and "
        "store nothing; after the restart the conversation goes on with every committed "
        "turn, the last one included (SIGTERM flushes the AOF).",
        "test_redis_stopped_gracefully_and_restarted",
    ),
    Case(
        "Redis",
        "Killed (SIGKILL) mid-conversation, restarted",
        "A reply streaming when Redis dies ends with the memory note and is not stored; "
        "later messages get the note too; after the restart every turn committed more "
        "than 1 s before the kill is there (AOF everysec) and the conversation continues.",
        "test_redis_killed_mid_conversation_and_restarted",
    ),
    Case(
        "Redis",
        "Unreachable at start, comes up later",
        "The bot logs one clear line per attempt with a growing delay, keeps waiting "
        "instead of crash-looping, connects once Redis is up and answers.",
        "test_redis_unreachable_at_start_then_comes_up",
    ),
    Case(
        "Redis",
        "Unreachable at start, never comes up",
        "After the configured attempts (doubling delay) start-up stops with one error "
        "naming redis.url / REDIS_URL; no traceback spam.",
        "test_redis_unreachable_at_start_gives_up_clearly",
    ),
    Case(
        "Redis",
        "/reset and retention",
        "/reset deletes the channel's history key (persona and /chat stay); history keys "
        "carry the retention TTL (none with retention_days = 0), usage keys 40 days, no "
        "lock is left behind and no message text is stored outside the history.",
        "test_reset_and_retention_do_what_they_promise",
    ),
    # --- LLM over the wire -------------------------------------------------------------
    Case(
        "LLM",
        "Connection refused",
        "Note 'can't be reached'; nothing stored; answers again once the server is back.",
        "test_llm_connection_refused",
    ),
    Case(
        "LLM",
        "429 with Retry-After (no retries left)",
        "Note 'rate limiting the bot. Try again in 7 s'; nothing stored; bot keeps running.",
        "test_llm_fault[429-retry-after]",
    ),
    Case(
        "LLM",
        "429 with Retry-After: 1, one retry allowed",
        "The bot waits the asked second, retries once and streams the correct reply.",
        "test_llm_429_is_retried_after_the_asked_delay",
    ),
    Case(
        "LLM",
        "HTTP 500",
        "Note 'internal error'; nothing stored; bot keeps running.",
        "test_llm_fault[500]",
    ),
    Case(
        "LLM",
        "Hang before the first token",
        "After llm.first_token_timeout the note 'took too long to start answering'; "
        "nothing stored.",
        "test_llm_fault[hang-before-first-token]",
    ),
    Case(
        "LLM",
        "Hang mid-stream",
        "The text so far stays visible, followed by 'stopped sending text mid-answer'; "
        "no half reply stored.",
        "test_llm_fault[hang-mid-stream]",
    ),
    Case(
        "LLM",
        "Connection dropped mid-stream",
        "The text so far, then 'cut off'; no half reply stored.",
        "test_llm_fault[drop-mid-stream]",
    ),
    Case(
        "LLM",
        "Malformed JSON in a data: line",
        "The text so far, then 'sent a reply the bot could not read'; nothing stored.",
        "test_llm_fault[malformed-json]",
    ),
    Case(
        "LLM",
        "Stream ends without [DONE] and without finish_reason",
        "Treated as cut off: note 'cut off'; nothing stored.",
        "test_llm_fault[no-done-no-finish-reason]",
    ),
    Case(
        "LLM",
        "Stream ends without [DONE] (finish_reason sent)",
        "A complete, correct reply; both turns stored.",
        "test_llm_stream_without_done_is_complete",
    ),
    Case(
        "LLM",
        "One 100 KB chunk (prose, a 3000-character word, code blocks)",
        "Split into Discord messages exactly as plan_split says, each <= 2000 characters "
        "with balanced code fences; the whole text stored.",
        "test_llm_single_100kb_chunk_splits_correctly",
    ),
    # --- Discord -----------------------------------------------------------------------
    Case(
        "Discord",
        "500 and 502 on message edits",
        "The final text still lands (no marker left), the reply is stored.",
        "test_discord_5xx_on_edits_final_text_lands",
    ),
    Case(
        "Discord",
        "429 storm (forced per-route and global 429s)",
        "Every reply completes; the only 429s are the forced ones.",
        "test_discord_429_storm_replies_complete",
    ),
    Case(
        "Discord",
        "Gateway closes mid-stream",
        "The client resumes (no new IDENTIFY), the reply completes, a message sent while "
        "disconnected is answered after the resume.",
        "test_discord_gateway_closes_mid_stream",
    ),
    Case(
        "Discord",
        "Interaction token expired",
        "Whether it expired before the ack or between a defer and the follow-up: no "
        "crash, it is logged, the bot keeps answering messages and commands.",
        "test_discord_expired_interaction_token",
    ),
    # --- Hostile and odd input -----------------------------------------------------------
    Case(
        "Input",
        "4000-character message",
        "Answered (reply split over several messages), stored whole.",
        "test_input_4000_characters",
    ),
    Case(
        "Input",
        "Empty, whitespace-only and attachment-only messages",
        "A short 'nothing to read' note; no model call, nothing stored.",
        "test_input_without_text",
    ),
    Case(
        "Input",
        "Only zero-width characters",
        "Treated as a message without text (the note); no model call.",
        "test_input_zero_width_only",
    ),
    Case(
        "Input",
        "Only emoji, right-to-left text and bidi controls",
        "Sent to the model and stored unchanged; the reply comes back unchanged.",
        "test_input_emoji_and_rtl",
    ),
    Case(
        "Input",
        "Role markers / system-message injection",
        "Arrives as one user message prefixed with the speaker's name; the only system "
        "message is the persona, first.",
        "test_input_role_marker_injection",
    ),
    Case(
        "Input",
        "Persona of 10,000 characters",
        "Refused with the limit (4000) in an ephemeral message; nothing stored.",
        "test_persona_too_long_is_refused",
    ),
    Case(
        "Input",
        "Persona with @everyone, markdown and code",
        "Stored verbatim and used as the system prompt; nothing pings.",
        "test_persona_with_mentions_markdown_and_code",
    ),
    Case(
        "Input",
        "Model reply pinging @everyone, @here, a role and a user",
        "Shown as text; allowed_mentions has parse [] on every request; nobody pinged.",
        "test_model_reply_pings_nobody",
    ),
    Case(
        "Input",
        "Slash commands without the needed permissions",
        "Ephemeral refusal naming the permission; nothing changed.",
        "test_slash_commands_without_permissions",
    ),
    Case(
        "Input",
        "Slash commands from a DM",
        "/chat is declared server-only (Discord never delivers it in a DM); server-scoped "
        "options refuse clearly; /persona, /usage and /reset act on the DM itself.",
        "test_slash_commands_from_dms",
    ),
    Case(
        "Input",
        "Slash commands in a thread",
        "/persona and /reset act on the thread, not its parent.",
        "test_slash_commands_in_threads",
    ),
    # --- Abuse and fairness ----------------------------------------------------------------
    Case(
        "Abuse",
        "One user sends 20 messages in 5 s (burst 3 per 10 s)",
        "At most 3 model calls and one throttle notice; another user in the channel is "
        "answered normally.",
        "test_flood_is_throttled_and_others_unaffected",
    ),
    Case(
        "Abuse",
        "Daily token quota spent",
        "Refused with the quota note before any model call; other users unaffected.",
        "test_daily_token_quota_refusal",
    ),
    Case(
        "Abuse",
        "One hung LLM request",
        "Other channels keep streaming at full speed while it hangs; it ends with a note.",
        "test_hung_request_does_not_block_other_channels",
    ),
    # --- Concurrency and load ------------------------------------------------------------
    Case(
        "Load",
        "Five people write in one channel at the same instant",
        "Each gets the answer to their message; history holds ten turns, each user turn "
        "followed by its answer, in arrival order.",
        "test_five_people_at_the_same_instant",
    ),
    Case(
        "Load",
        "A /reset while a reply is streaming",
        "The reset wins: the in-flight exchange is not written back into the cleared history.",
        "test_reset_during_a_streaming_reply",
    ),
    Case(
        "Load",
        "Soak: 200 channels x 5 turns",
        "Zero lost turns, zero 429s, RSS flat after warm-up, no leaked tasks, sockets or "
        "file descriptors during the run or after shutdown.",
        "test_soak_200_channels_5_turns",
    ),
    # --- Secrets -------------------------------------------------------------------------
    Case(
        "Secrets",
        "Fake Discord token, LLM key and Redis password through errors at DEBUG",
        "None of them in any log record (caplog, DEBUG) or the real redacting handler's "
        "output, nor in any Discord request body or message, nor in an LLM request body.",
        "test_secrets_never_leak",
    ),
]


@dataclass
class _Result:
    outcome: str
    seconds: float = 0.0


class ReliabilityReport:
    """Pytest plugin: records outcomes of catalogued cases and writes the table."""

    def __init__(self, doc: Path = DOC) -> None:
        self.doc = doc
        self.results: dict[str, _Result] = {}
        self.measurements: list[str] = []
        self.started = time.monotonic()

    @staticmethod
    def case_of(nodeid: str) -> Case | None:
        name = nodeid.rpartition("::")[2]
        # A case run with and without Discord latency (`latency` fixture), or on either
        # Redis backend (`redis_backend`), is one case: drop those ids from the params.
        base, _, params = name.partition("[")
        if params:
            kept = [p for p in params[:-1].split("-") if p not in _RUN_VARIANTS]
            name = f"{base}[{'-'.join(kept)}]" if kept else base
        return next((c for c in CASES if c.test == name), None)

    # -- hooks --

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        case = self.case_of(report.nodeid)
        if case is None:
            return
        result = self.results.setdefault(case.test, _Result("pass"))
        result.seconds += report.duration
        if report.when == "call" and hasattr(report, "wasxfail"):
            result.outcome = "xfail (known bug, see notes)" if report.skipped else "XPASS"
        elif report.failed:
            result.outcome = "FAIL" if report.when == "call" else "ERROR"
        elif report.skipped and result.outcome == "pass":
            result.outcome = "skipped"

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.results:
            self.write()

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.results:
            return
        total = sum(r.seconds for r in self.results.values())
        terminalreporter.section("reliability")
        for case in CASES:
            r = self.results.get(case.test)
            if r is not None:
                terminalreporter.write_line(f"{r.outcome:>5} {r.seconds:7.2f} s  {case.test}")
        for line in self.measurements:
            terminalreporter.write_line(f"measured: {line}")
        terminalreporter.write_line(
            f"{len(self.results)} of {len(CASES)} cases ran in {total:.1f} s; "
            f"table written to {self.doc}"
        )

    # -- output --

    def render(self) -> str:
        lines = [
            "# Reliability: cases tried and their outcomes",
            "",
            "<!-- GENERATED by tests/reliability_report.py at the end of a test run that "
            "included the reliability tests (tests/test_reliability_*.py). Do not edit by "
            "hand; change the catalogue there. Only the Outcome column depends on the run. "
            "-->",
            "",
            "Every case runs over the wire: the real bot (discord.py) against the Discord "
            "stand-in, the OpenAI-compatible LLM stand-in and a real Redis, all on "
            "127.0.0.1. Outcome is the result of the last run: `pass`, `FAIL`, `ERROR`, "
            "`skipped`, `xfail` (a known bug, reported) or `not run` (not selected).",
            "",
            "| Area | Case | Expected | Test | Outcome |",
            "|---|---|---|---|---|",
        ]
        for case in CASES:
            r = self.results.get(case.test)
            outcome = r.outcome if r is not None else "not run"
            cells = [case.area, case.case, case.expected, f"`{case.test}`", outcome]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
        return "\n".join(lines)

    def write(self) -> None:
        self.doc.parent.mkdir(parents=True, exist_ok=True)
        text = self.render()
        if not self.doc.exists() or self.doc.read_text() != text:
            self.doc.write_text(text)


def enable(config: pytest.Config) -> ReliabilityReport:
    """Register the plugin once per session (idempotent); return it."""
    plugin = config.pluginmanager.get_plugin(PLUGIN_NAME)
    if plugin is None:
        plugin = ReliabilityReport()
        config.pluginmanager.register(plugin, PLUGIN_NAME)
    assert isinstance(plugin, ReliabilityReport)
    return plugin


@pytest.fixture(scope="session", autouse=True)
def reliability_report(pytestconfig: pytest.Config) -> Iterator[ReliabilityReport]:
    """Import this fixture into each reliability test module: it enables the report."""
    yield enable(pytestconfig)


def measure(config: pytest.Config, text: str) -> None:
    """Show a measured value in the terminal summary (never in the generated table)."""
    enable(config).measurements.append(text)
