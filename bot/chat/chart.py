"""The /usage chart: tokens per day as stacked bars, one colour per model, as a PNG.

Why a picture: a 30-character sparkline cannot show which model used what, and a
stacked bar chart can. Drawn with Pillow (no plotting library: it is one chart), in a
pure function of the numbers, so tests decode the PNG and measure the bars. The layout
is computed separately (`layout`) and the drawing only paints it, so what the tests
measure is exactly what the numbers say.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

WIDTH = 800
HEIGHT = 360
BACKGROUND = (43, 45, 49)  # Discord's dark embed background
GRID = (70, 73, 79)
TEXT = (219, 222, 225)
MUTED = (148, 155, 164)
# Distinct, readable on dark; the order follows the models' totals (largest first).
PALETTE = [
    (88, 101, 242),
    (87, 242, 135),
    (254, 231, 92),
    (235, 69, 158),
    (237, 66, 69),
    (69, 221, 235),
    (250, 166, 26),
    (155, 89, 182),
]
OTHER_COLOR = (128, 132, 142)
OTHER = "other"
# Margins around the plot: room for axis labels left, day labels and the legend below.
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 36, 84


@dataclass(frozen=True, slots=True)
class Segment:
    """One model's part of one day's bar, in pixels (x1/y1 exclusive)."""

    day: int
    model: str
    color: tuple[int, int, int]
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0


@dataclass(frozen=True, slots=True)
class Layout:
    width: int
    height: int
    # The plot area: bars grow up from `bottom` (exclusive) over `plot_height` pixels.
    left: int
    right: int
    top: int
    bottom: int
    scale_max: int
    segments: list[Segment]
    colors: dict[str, tuple[int, int, int]]

    @property
    def plot_height(self) -> int:
        return self.bottom - self.top


def nice_ceiling(value: int) -> int:
    """The smallest 1, 2, 2.5 or 5 times a power of ten that is at least `value`."""
    if value <= 0:
        return 1
    magnitude = 1
    while magnitude * 10 <= value:
        magnitude *= 10
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return int(step * magnitude)
    return 10 * magnitude  # pragma: no cover - the loop always returns


def group_models(
    series: Mapping[str, Sequence[int]], limit: int = len(PALETTE)
) -> dict[str, list[int]]:
    """At most `limit` series: the largest models, the rest summed as "other"."""
    ordered = sorted(series.items(), key=lambda kv: (-sum(kv[1]), kv[0]))
    if len(ordered) <= limit:
        return {k: list(v) for k, v in ordered}
    kept = {k: list(v) for k, v in ordered[: limit - 1]}
    rest = [sum(col) for col in zip(*(v for _, v in ordered[limit - 1 :]), strict=True)]
    kept[OTHER] = rest
    return kept


def layout(
    series: Mapping[str, Sequence[int]], *, width: int = WIDTH, height: int = HEIGHT
) -> Layout:
    """Where every bar segment goes. `series`: tokens per day per model, all the same length."""
    grouped = group_models(series)
    colors = {
        name: OTHER_COLOR if name == OTHER else PALETTE[i % len(PALETTE)]
        for i, name in enumerate(grouped)
    }
    days = max((len(v) for v in grouped.values()), default=0)
    totals = [sum(v[d] for v in grouped.values()) for d in range(days)]
    scale_max = nice_ceiling(max(totals, default=0))
    left, right, top, bottom = LEFT, width - RIGHT, TOP, height - BOTTOM
    plot_h = bottom - top
    slot = (right - left) / max(days, 1)
    gap = max(1, round(slot * 0.2))
    segments: list[Segment] = []
    for d in range(days):
        x0 = left + round(d * slot) + gap // 2
        x1 = left + round((d + 1) * slot) - (gap - gap // 2)
        cumulative = 0
        for name, values in grouped.items():
            value = values[d]
            if value <= 0:
                continue
            # Edges from cumulative sums, so rounding never makes a bar taller than its total.
            lower = bottom - round(cumulative * plot_h / scale_max)
            cumulative += value
            upper = bottom - round(cumulative * plot_h / scale_max)
            if upper < lower:
                segments.append(Segment(d, name, colors[name], x0, upper, x1, lower))
    return Layout(width, height, left, right, top, bottom, scale_max, segments, colors)


def short_number(n: float) -> str:
    for size, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g}{suffix}"
    return f"{n:.3g}"


def render(
    series: Mapping[str, Sequence[int]],
    days: Sequence[str] = (),
    *,
    title: str = "Tokens per day",
    width: int = WIDTH,
    height: int = HEIGHT,
) -> bytes:
    """The chart as PNG bytes. `days`: labels (YYYYMMDD) for the x axis, oldest first."""
    plan = layout(series, width=width, height=height)
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12)
    title_font = ImageFont.load_default(size=15)
    draw.text((plan.left, 10), title, fill=TEXT, font=title_font)
    # Horizontal grid lines with their values, at 0, 1/4, ... of the scale.
    for i in range(5):
        y = plan.bottom - round(i * plan.plot_height / 4)
        draw.line([(plan.left, y), (plan.right, y)], fill=GRID)
        label = short_number(plan.scale_max * i / 4)
        w = draw.textlength(label, font=font)
        draw.text((plan.left - 8 - w, y - 7), label, fill=MUTED, font=font)
    for seg in plan.segments:
        draw.rectangle([seg.x0, seg.y0, seg.x1 - 1, seg.y1 - 1], fill=seg.color)
    # Every fifth day (and the last) labelled as MM-DD.
    count = max((len(v) for v in series.values()), default=len(days))
    slot = (plan.right - plan.left) / max(count, 1)
    for d, day in enumerate(days):
        if d % 5 and d != len(days) - 1:
            continue
        label = f"{day[4:6]}-{day[6:8]}" if len(day) == 8 else day
        cx = plan.left + (d + 0.5) * slot
        w = draw.textlength(label, font=font)
        draw.text((cx - w / 2, plan.bottom + 6), label, fill=MUTED, font=font)
    # Legend: a swatch and the model name each, left to right, wrapping.
    x, y = plan.left, plan.bottom + 30
    for name, color in plan.colors.items():
        w = int(draw.textlength(name, font=font))
        if x + 18 + w > plan.right and x > plan.left:
            x, y = plan.left, y + 18
        draw.rectangle([x, y + 2, x + 11, y + 13], fill=color)
        draw.text((x + 16, y), name, fill=TEXT, font=font)
        x += 16 + w + 18
    if not plan.segments:
        msg = "No tokens used in this period"
        w = draw.textlength(msg, font=title_font)
        mid = (plan.top + plan.bottom) // 2
        draw.text(((plan.left + plan.right - w) / 2, mid - 8), msg, fill=MUTED, font=title_font)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()
