"""Small statistics: medians, percentiles, least-squares slopes."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: Sequence[float], digits: int = 4) -> dict[str, float]:
    """Median and p90 (the 90th percentile of the observed values) of repeated measurements."""
    if not values:
        return {"median": float("nan"), "p90": float("nan"), "n": 0}
    return {
        "median": round(statistics.median(values), digits),
        "p90": round(percentile(values, 90), digits),
        "n": len(values),
    }


def slope(ys: Sequence[float], xs: Sequence[float] | None = None) -> float:
    """Least-squares slope of ys against xs (default 0, 1, 2 ...)."""
    xs = list(range(len(ys))) if xs is None else list(xs)
    if len(ys) < 2:
        return 0.0
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread


def finite(value: float | None) -> float | None:
    """None for NaN/inf, so JSON output stays valid."""
    return value if value is not None and math.isfinite(value) else None
