"""Building the message list sent to the model.

The persona's system message always comes first, followed (in the same message, which
every chat template accepts) by the running summary of older turns, if any; both count
in the budget. Then as much recent history as fits
the budget (context window minus the reply reserve minus the system prompt), dropping
the oldest whole turns first. The new user message is always sent; one that alone is
larger than the budget is cut with a visible note instead of being sent to fail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bot.llm.tokens import PER_MESSAGE, REPLY_PRIMING, TokenCounter
from bot.models import ImageRef, Turn

CUT_NOTE = "\n\n[… the rest of this message was cut: it was too long for the model's context]"
SUMMARY_HEADING = "Summary of the earlier conversation (its messages are no longer shown):"
# Tells the model that an answer of its own was cut short by the person (Stop button).
STOPPED_NOTE = "\n\n[stopped by the user at this point]"


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


def image_placeholder(ref: ImageRef) -> str:
    """What the model reads instead of an image it is not sent (older, or no vision)."""
    return f"[image: {ref.name}]"


def as_message(turn: Turn, images: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A stored turn as a chat message. Its images that are in `images` (id -> base64) go
    as `image_url` parts; the others as placeholders in the text."""
    if turn.role == "user":
        text = speaker_line(turn.author_name, turn.content)
        if not turn.images:
            return {"role": "user", "content": text}
        sent = [r for r in turn.images if images and r.id in images]
        held = [image_placeholder(r) for r in turn.images if r not in sent]
        if held:
            text = f"{text}\n{' '.join(held)}" if text else " ".join(held)
        if not sent or images is None:
            return {"role": "user", "content": text}
        parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
        for ref in sent:
            url = f"data:{ref.mime};base64,{images[ref.id]}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
        return {"role": "user", "content": parts}
    content = turn.content + STOPPED_NOTE if turn.stopped else turn.content
    if turn.tool_note:
        return {"role": turn.role, "content": f"{turn.tool_note}\n\n{content}"}
    return {"role": turn.role, "content": content}


def image_count(message: Mapping[str, Any]) -> int:
    content = message.get("content")
    if not isinstance(content, list):
        return 0
    return sum(1 for p in content if isinstance(p, dict) and p.get("type") == "image_url")


def _message_cost(message: Mapping[str, Any], counter: TokenCounter, image_tokens: int) -> int:
    return counter.count_message(message) + image_tokens * image_count(message)


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
    images: Mapping[str, str] | None = None,
    image_tokens: int = 0,
    summary: str = "",
) -> BuiltContext:
    """`images` (id -> base64): the stored images to send as parts, each costing
    `image_tokens`; images of turns not in it are sent as placeholders."""
    system = {"role": "system", "content": system_with_summary(system_prompt, summary)}
    system_cost = counter.calibrated(counter.count_message(system))
    budget = context_tokens - reply_tokens - system_cost - REPLY_PRIMING

    new_msg = as_message(new_turn, images)
    new_raw = _message_cost(new_msg, counter, image_tokens)
    cut = False
    if counter.calibrated(new_raw) > budget:
        new_msg = _cut_message(new_msg, budget - image_tokens * image_count(new_msg), counter)
        new_raw = _message_cost(new_msg, counter, image_tokens)
        cut = True
    budget -= counter.calibrated(new_raw)

    kept: list[dict[str, Any]] = []
    kept_raw = 0
    for turn in reversed(history):
        msg = as_message(turn, images)
        raw = (
            _message_cost(msg, counter, image_tokens) if turn.images else turn.tokens + PER_MESSAGE
        )
        if counter.calibrated(raw) > budget and image_count(msg):
            msg = as_message(turn)  # its images do not fit: placeholders instead
            raw = _message_cost(msg, counter, image_tokens)
        cost = counter.calibrated(raw)
        if cost > budget:
            break
        budget -= cost
        kept_raw += raw
        kept.append(msg)
    kept.reverse()

    messages = [system, *kept, new_msg]
    estimate = REPLY_PRIMING + counter.count_message(system) + kept_raw + new_raw
    return BuiltContext(
        messages=messages,
        prompt_tokens=estimate,
        history_used=len(kept),
        history_dropped=len(history) - len(kept),
        user_message_cut=cut,
    )


def _cut_message(msg: dict[str, Any], budget: int, counter: TokenCounter) -> dict[str, Any]:
    """The message with its text cut to fit `budget` (image parts are kept)."""
    content = msg["content"]
    if isinstance(content, str):
        return {"role": "user", "content": _cut_to(content, budget, counter)}
    parts = [
        {"type": "text", "text": _cut_to(p["text"], budget, counter)}
        if p.get("type") == "text"
        else p
        for p in content
    ]
    return {"role": "user", "content": parts}


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
