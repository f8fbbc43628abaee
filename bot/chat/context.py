"""Building the message list sent to the model.

The persona's system message always comes first, followed (in the same message, which
every chat template accepts) by the running summary of older turns, if any; both count
in the budget. Then as much recent history as fits
the budget (context window minus the reply reserve minus the system prompt), dropping
the oldest whole turns first. The new user message is always sent; one that alone is
larger than the budget is cut with a visible note instead of being sent to fail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bot.llm.tokens import PER_MESSAGE, REPLY_PRIMING, TokenCounter
from bot.models import Turn

CUT_NOTE = "\n\n[… the rest of this message was cut: it was too long for the model's context]"
SUMMARY_HEADING = "Summary of the earlier conversation (its messages are no longer shown):"


@dataclass(frozen=True, slots=True)
class BuiltContext:
    messages: list[dict[str, Any]]
    # Our estimate of the prompt, overhead included (before calibration).
    prompt_tokens: int
    history_used: int
    history_dropped: int
    user_message_cut: bool


def speaker_line(name: str | None, text: str) -> str:
    """A user turn as the model sees it: who spoke, then what they said."""
    return f"{name}: {text}" if name else text


def as_message(turn: Turn) -> dict[str, Any]:
    if turn.role == "user":
        return {"role": "user", "content": speaker_line(turn.author_name, turn.content)}
    if turn.tool_note:
        return {"role": turn.role, "content": f"{turn.tool_note}\n\n{turn.content}"}
    return {"role": turn.role, "content": turn.content}


def system_with_summary(system_prompt: str, summary: str) -> str:
    """The persona, then the running summary (when there is one)."""
    if not summary.strip():
        return system_prompt
    return f"{system_prompt}\n\n{SUMMARY_HEADING}\n{summary.strip()}"


def build_context(
    system_prompt: str,
    history: Sequence[Turn],
    new_turn: Turn,
    *,
    context_tokens: int,
    reply_tokens: int,
    counter: TokenCounter,
    summary: str = "",
) -> BuiltContext:
    system = {"role": "system", "content": system_with_summary(system_prompt, summary)}
    system_cost = counter.calibrated(counter.count_message(system))
    budget = context_tokens - reply_tokens - system_cost - REPLY_PRIMING

    new_msg = as_message(new_turn)
    new_cost = counter.calibrated(counter.count_message(new_msg))
    cut = False
    if new_cost > budget:
        new_msg = {"role": "user", "content": _cut_to(new_msg["content"], budget, counter)}
        new_cost = counter.calibrated(counter.count_message(new_msg))
        cut = True
    budget -= new_cost

    kept: list[dict[str, Any]] = []
    for turn in reversed(history):
        cost = counter.calibrated(turn.tokens + PER_MESSAGE)
        if cost > budget:
            break
        budget -= cost
        kept.append(as_message(turn))
    kept.reverse()

    messages = [system, *kept, new_msg]
    estimate = (
        REPLY_PRIMING
        + counter.count_message(system)
        + sum(t.tokens + PER_MESSAGE for t in history[len(history) - len(kept) :])
        + counter.count_message(new_msg)
    )
    return BuiltContext(
        messages=messages,
        prompt_tokens=estimate,
        history_used=len(kept),
        history_dropped=len(history) - len(kept),
        user_message_cut=cut,
    )


def _cut_to(text: str, budget: int, counter: TokenCounter) -> str:
    """The longest prefix of `text` that, with the note, fits `budget` tokens."""
    target = max(1, budget - PER_MESSAGE - counter.calibrated(counter.count(CUT_NOTE)) - 1)
    lo, hi = 0, len(text)
    while lo < hi:  # binary search on characters: token counts grow monotonically enough
        mid = (lo + hi + 1) // 2
        if counter.calibrated(counter.count(text[:mid])) <= target:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo].rstrip() + CUT_NOTE
