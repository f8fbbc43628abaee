"""Small statistics helpers (no numpy: the project does not depend on it)."""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["percentile", "summary"]


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0-100) with linear interpolation, like numpy's default.

    NaN for an empty sequence, so a missing figure shows as such instead of as zero.
    """
    if not values:
        return math.nan
    data = sorted(values)
    if len(data) == 1:
        return float(data[0])
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return float(data[lo] + (data[hi] - data[lo]) * (pos - lo))


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, p95, max, mean and count of `values` (NaN where empty)."""
    return {
        "median": percentile(values, 50),
        "p95": percentile(values, 95),
        "max": float(max(values)) if values else math.nan,
        "mean": float(sum(values) / len(values)) if values else math.nan,
        "n": float(len(values)),
    }
