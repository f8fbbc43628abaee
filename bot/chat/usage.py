"""Token usage reports: today, 7 and 30 days, a per-day series, and cost.

Counters are written by `Store.commit` in the same transaction as the turn; this module
only reads them. Figures the provider did not report are kept apart (`est_` fields) so
reports can say how much of a total is the bot's own estimate.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

from bot.config import Price, UsageConfig
from bot.errors import QuotaExceeded
from bot.memory.store import DAY, Store, utc_day

SCOPES = ("user", "channel", "server")
SPARK = "▁▂▃▄▅▆▇█"


@dataclass(frozen=True, slots=True)
class Totals:
    prompt: int = 0
    completion: int = 0
    requests: int = 0
    # How much of prompt/completion is the bot's estimate rather than the provider's count.
    estimated_prompt: int = 0
    estimated_completion: int = 0
    cost: float | None = None
    # How much of prompt/completion went to background summaries (not replies).
    summary_prompt: int = 0
    summary_completion: int = 0
    summary_requests: int = 0

    @property
    def summary_total(self) -> int:
        return self.summary_prompt + self.summary_completion

    @property
    def total(self) -> int:
        return self.prompt + self.completion

    @property
    def has_estimates(self) -> bool:
        return bool(self.estimated_prompt or self.estimated_completion)


@dataclass(frozen=True, slots=True)
class UsageReport:
    scope: str
    ident: int
    today: Totals
    week: Totals
    month: Totals
    # Total tokens per day, oldest first, ending today (30 entries).
    series: list[int]
    currency: str
    # The same days as `series`, and tokens per day per model (largest 30-day total first).
    days: list[str] = dataclasses.field(default_factory=list)
    model_series: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    # 30-day totals per model, in the same order.
    by_model: dict[str, Totals] = dataclasses.field(default_factory=dict)
    # (user id, tokens in 30 days), most first; only asked for with scope "server".
    top_users: list[tuple[int, int]] = dataclasses.field(default_factory=list)

    def sparkline(self, days: int = 30) -> str:
        return sparkline(self.series[-days:])


def sparkline(values: list[int]) -> str:
    top = max(values, default=0)
    if top <= 0:
        return SPARK[0] * len(values)
    return "".join(SPARK[min(len(SPARK) - 1, v * (len(SPARK) - 1) // top)] for v in values)


def split_by_model(row: dict[str, int]) -> dict[str, dict[str, int]]:
    """One day's counters as one row per model (fields `prompt|m`, `est_prompt|m`, ...)."""
    out: dict[str, dict[str, int]] = {}
    for name, value in row.items():
        kind, _, model = name.partition("|")
        if not model:
            continue
        sub = out.setdefault(model, {})
        sub[name] = value
        plain = kind.removeprefix("est_")
        sub[plain] = sub.get(plain, 0) + value
    return out


class UsageService:
    def __init__(
        self,
        store: Store,
        config: UsageConfig,
        *,
        prices: Callable[[str], Price | None] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        # Per-model prices from [models]; `usage.prices` answers for names it does not know.
        self._prices = prices

    def price(self, model: str) -> Price | None:
        found = self._prices(model) if self._prices is not None else None
        return found or self.config.prices.get(model)

    def check_quota(self, used_today: int) -> None:
        """Refuse before a request when the user's daily quota is spent."""
        quota = self.config.daily_token_quota
        if quota and used_today >= quota:
            raise QuotaExceeded(used_today, quota)

    async def report(
        self, scope: str, ident: int, now: float | None = None, *, top_users: int = 0
    ) -> UsageReport:
        if scope not in SCOPES:
            raise ValueError(f"unknown usage scope {scope!r}")
        now = time.time() if now is None else now
        days = [utc_day(now - i * DAY) for i in range(29, -1, -1)]
        rows = await self.store.usage_days(scope, ident, days)
        per_day = [split_by_model(row) for row in rows]
        models = {m for day in per_day for m in day}
        by_model = {m: self._sum([day.get(m, {}) for day in per_day]) for m in models}
        order = sorted(models, key=lambda m: (-by_model[m].total, m))
        top: list[tuple[int, int]] = []
        if top_users and scope == "server":
            users = await self.store.usage_users(ident, days)
            top = sorted(users.items(), key=lambda kv: (-kv[1], kv[0]))[:top_users]
        return UsageReport(
            scope=scope,
            ident=ident,
            today=self._sum(rows[-1:]),
            week=self._sum(rows[-7:]),
            month=self._sum(rows),
            series=[row.get("prompt", 0) + row.get("completion", 0) for row in rows],
            currency=self.config.currency,
            days=days,
            model_series={
                m: [
                    d.get(m, {}).get("prompt", 0) + d.get(m, {}).get("completion", 0)
                    for d in per_day
                ]
                for m in order
            },
            by_model={m: by_model[m] for m in order},
            top_users=top,
        )

    def _sum(self, rows: list[dict[str, int]]) -> Totals:
        prompt = completion = requests = est_p = est_c = 0
        cost = 0.0
        priced = False
        for row in rows:
            prompt += row.get("prompt", 0)
            completion += row.get("completion", 0)
            requests += row.get("requests", 0)
            for field, value in row.items():
                kind, _, model = field.partition("|")
                if not model:
                    continue
                estimated = kind.startswith("est_")
                kind = kind.removeprefix("est_")
                if estimated:
                    est_p += value if kind == "prompt" else 0
                    est_c += value if kind == "completion" else 0
                price = self.price(model)
                if price is not None:
                    priced = True
                    per_million = price.prompt if kind == "prompt" else price.completion
                    cost += value * per_million / 1_000_000
        return Totals(
            prompt=prompt,
            completion=completion,
            requests=requests,
            estimated_prompt=est_p,
            estimated_completion=est_c,
            cost=cost if priced or self.config.prices else None,
            summary_prompt=sum(row.get("summary_prompt", 0) for row in rows),
            summary_completion=sum(row.get("summary_completion", 0) for row in rows),
            summary_requests=sum(row.get("summary_requests", 0) for row in rows),
        )


def describe(t: Totals, currency: str) -> str:
    """A few lines for one period, as /usage and the console show them."""
    lines = [f"**{t.total:,}** tokens", f"{t.prompt:,} prompt · {t.completion:,} completion"]
    if t.cost is not None:
        lines.append(f"≈ {currency}{t.cost:,.4f}")
    if t.has_estimates:
        lines.append(f"*{t.estimated_prompt + t.estimated_completion:,} estimated*")
    if t.summary_requests:
        lines.append(summary_line(t))
    return "\n".join(lines)


def summary_line(t: Totals) -> str:
    """How much of a total went to background summaries, apart from replies."""
    calls = "summary" if t.summary_requests == 1 else "summaries"
    return f"incl. {t.summary_total:,} for {t.summary_requests:,} {calls} of old messages"


def describe_models(report: UsageReport, limit: int = 10) -> str:
    """One line per model for the last 30 days: tokens and, when priced, cost."""
    lines = []
    for name, t in list(report.by_model.items())[:limit]:
        cost = f" · ≈ {report.currency}{t.cost:,.4f}" if t.cost is not None else ""
        lines.append(f"`{name}`: **{t.total:,}** tokens{cost}")
    hidden = len(report.by_model) - limit
    if hidden > 0:
        lines.append(f"… and {hidden} more")
    return "\n".join(lines)
