"""The /usage chart: a real PNG whose bars, measured in pixels, match the numbers."""

from __future__ import annotations

import io
import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from bot.chat.chart import (
    BACKGROUND,
    HEIGHT,
    OTHER,
    PALETTE,
    WIDTH,
    group_models,
    layout,
    nice_ceiling,
    render,
)

DAYS = [f"202611{d:02d}" for d in range(1, 31)]


def decode(png: bytes) -> Image.Image:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.format == "PNG"
    return image.convert("RGB")


def column_heights(image: Image.Image, x: int, top: int, bottom: int) -> dict[tuple[int, ...], int]:
    """How many pixels of each colour one column of the plot area has."""
    counts: dict[tuple[int, ...], int] = {}
    for y in range(top, bottom):
        pixel = image.getpixel((x, y))
        assert isinstance(pixel, tuple)
        counts[pixel] = counts.get(pixel, 0) + 1
    return counts


def test_png_of_the_expected_size_with_bars_matching_the_data() -> None:
    big = [0] * 30
    small = [0] * 30
    big[29], small[29] = 6000, 2000  # today: 8000 in all
    big[10] = 4000
    small[20] = 1000
    png = render({"big": big, "small": small}, DAYS)
    image = decode(png)
    assert image.size == (WIDTH, HEIGHT)
    plan = layout({"big": big, "small": small})
    assert plan.scale_max == 10_000
    blue, green = PALETTE[0], PALETTE[1]  # largest model first
    assert plan.colors == {"big": blue, "small": green}
    slot = (plan.right - plan.left) / 30

    def measure(day: int) -> dict[tuple[int, ...], int]:
        x = plan.left + int((day + 0.5) * slot)
        return column_heights(image, x, plan.top - 5, plan.bottom + 1)

    h = plan.plot_height
    today = measure(29)
    assert abs(today[blue] - 0.6 * h) <= 1 and abs(today[green] - 0.2 * h) <= 1
    assert abs(measure(10)[blue] - 0.4 * h) <= 1 and green not in measure(10)
    assert abs(measure(20)[green] - 0.1 * h) <= 1 and blue not in measure(20)
    empty = measure(5)
    assert blue not in empty and green not in empty
    # Stacked: the second model sits directly on top of the first.
    x = plan.left + int(29.5 * slot)
    colours = [image.getpixel((x, y)) for y in range(plan.top, plan.bottom)]
    first_blue = colours.index(blue)
    assert colours[first_blue - 1] == green
    assert all(c == blue for c in colours[first_blue:])


def test_no_usage_draws_an_empty_chart() -> None:
    image = decode(render({}, DAYS))
    assert image.size == (WIDTH, HEIGHT)
    assert image.getpixel((WIDTH - 5, HEIGHT - 5)) == BACKGROUND


def test_many_models_keep_distinct_colours_and_group_the_rest() -> None:
    series = {f"m{i}": [i + 1] * 30 for i in range(12)}
    grouped = group_models(series)
    assert len(grouped) == len(PALETTE) and OTHER in grouped
    assert sum(sum(v) for v in grouped.values()) == sum(sum(v) for v in series.values())
    assert next(iter(grouped)) == "m11", "the largest model comes first"


def test_nice_ceiling() -> None:
    assert [nice_ceiling(v) for v in (0, 1, 3, 7, 8000, 12_000, 25_001)] == [
        1,
        1,
        5,
        10,
        10_000,
        20_000,
        50_000,
    ]


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.text("abcdef", min_size=1, max_size=4),
        st.lists(st.integers(0, 10**7), min_size=30, max_size=30),
        max_size=10,
    )
)
def test_segments_stay_inside_the_plot_and_never_overlap(series: dict[str, list[int]]) -> None:
    plan = layout(series)
    assert plan.scale_max >= max(
        (sum(col) for col in zip(*series.values(), strict=True)), default=0
    )
    by_day: dict[int, list[tuple[int, int]]] = {}
    for seg in plan.segments:
        assert plan.top <= seg.y0 < seg.y1 <= plan.bottom
        assert plan.left <= seg.x0 < seg.x1 <= plan.right
        by_day.setdefault(seg.day, []).append((seg.y0, seg.y1))
    for spans in by_day.values():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
