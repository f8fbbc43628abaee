"""What a channel remembers, shown and exported (/memory show, /memory export, console).

Why here and not in the cogs: Discord and the console show the same figures, computed
with the same context building the next reply will use, so "fits the next request"
means exactly that.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

from bot.chat.context import build_context
from bot.chat.personas import PersonaService, render
from bot.chat.summary import SummaryService
from bot.config import LLMConfig
from bot.llm.tokens import PER_MESSAGE, TokenCounter
from bot.memory.store import Store
from bot.models import Place, Summary, Turn


@dataclass(frozen=True, slots=True)
class MemoryReport:
    stored_turns: int
    # The newest turns that fit the next request (with a short message), and their tokens.
    fitting_turns: int
    fitting_tokens: int
    summary: Summary | None
    summarize: bool


@dataclass(frozen=True, slots=True)
class Export:
    markdown: str
    json: str
    # A file name stem, e.g. "general-20260101-1200".
    stem: str


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts)) if ts else "unknown time"


class MemoryService:
    def __init__(
        self,
        *,
        store: Store,
        personas: PersonaService,
        counter: TokenCounter,
        llm_config: LLMConfig,
        summaries: SummaryService,
    ) -> None:
        self.store = store
        self.personas = personas
        self.counter = counter
        self.llm_config = llm_config
        self.summaries = summaries

    async def report(self, place: Place, bot_name: str) -> MemoryReport:
        snap = await self.store.snapshot(place.channel_id)
        history, summary = snap.history, snap.summary
        persona = await self.personas.current(place)
        empty = Turn(role="user", content="", tokens=0, at=time.time())
        built = build_context(
            render(persona.text, place, bot_name),
            history,
            empty,
            context_tokens=self.llm_config.context_tokens,
            reply_tokens=self.llm_config.max_tokens,
            counter=self.counter,
            summary=summary.text if summary else "",
        )
        used = history[len(history) - built.history_used :] if built.history_used else []
        return MemoryReport(
            stored_turns=len(history),
            fitting_turns=built.history_used,
            fitting_tokens=sum(t.tokens + PER_MESSAGE for t in used),
            summary=summary,
            summarize=self.summaries.enabled,
        )

    async def export(self, place: Place, bot_name: str) -> Export:
        """The stored conversation, summary included, as Markdown and as JSON."""
        snap = await self.store.snapshot(place.channel_id)
        history, summary = snap.history, snap.summary
        now = time.time()
        where = f"#{place.channel_name or 'direct-message'}"
        if place.guild_name:
            where += f" in {place.guild_name}"
        data = {
            "format": "llmbot-conversation/1",
            "exported_at": now,
            "channel_id": place.channel_id,
            "channel": place.channel_name,
            "guild_id": place.guild_id,
            "guild": place.guild_name,
            "summary": asdict(summary) if summary else None,
            "turns": [asdict(t) for t in history],
        }
        lines = [f"# Conversation in {where}", "", f"Exported {_when(now)}.", ""]
        if summary:
            lines += [
                f"## Summary of {summary.turns} earlier messages",
                "",
                summary.text.strip(),
                "",
            ]
        lines += [f"## Messages ({len(history)})", ""]
        for t in history:
            who = (t.author_name or "user") if t.role == "user" else bot_name
            lines += [f"**{who}** · {_when(t.at)}", "", t.content, ""]
        if not history and not summary:
            lines += ["Nothing is stored for this channel.", ""]
        stamp = time.strftime("%Y%m%d-%H%M", time.gmtime(now))
        stem = f"{place.channel_name or 'conversation'}-{stamp}"
        return Export(
            markdown="\n".join(lines),
            json=json.dumps(data, ensure_ascii=False, indent=2),
            stem="".join(c if c.isalnum() or c in "-_" else "_" for c in stem),
        )


def describe(report: MemoryReport) -> str:
    """A few lines for /memory show and the console."""
    lines = [
        f"**{report.stored_turns}** messages stored; the newest **{report.fitting_turns}** "
        f"fit the next request ({report.fitting_tokens:,} tokens).",
    ]
    if report.summary:
        lines += [
            f"Summary of {report.summary.turns} earlier messages "
            f"({report.summary.tokens:,} tokens, updated {_when(report.summary.at)}):",
            report.summary.text.strip(),
        ]
    elif report.summarize:
        lines.append("No summary yet: nothing has left the window.")
    else:
        lines.append("Summaries are off (`history.summarize`): older messages are forgotten.")
    return "\n".join(lines)
