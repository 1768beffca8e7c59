"""Summaries of latency samples: percentiles and a log-scale histogram.

Pure functions over lists of milliseconds, shared by ``bench storage``,
``bench compare`` and the plots, so every figure in a report is computed the
same way (nearest-rank percentiles: a reported p99 is a sample that was seen).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

# Histogram bucket upper bounds in ms: 1-2-5 steps from 10 µs to 100 s, then +inf.
BUCKETS_MS: tuple[float, ...] = tuple(m * 10.0 ** e for e in range(-2, 5) for m in (1, 2, 5)) + (1e5,)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of already sorted values; nan when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(round(q * len(sorted_values) / 100, 9)))  # round: 99.9 / 100 * 1000 > 999
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def summary(values_ms: Sequence[float]) -> dict[str, float | int]:
    """n, min, median, mean, p99, p99.9 and max of samples in ms (the JSON field names)."""
    s = sorted(values_ms)
    n = len(s)
    if not n:
        return {"n": 0, "min": math.nan, "median": math.nan, "mean": math.nan, "p99": math.nan,
                "p999": math.nan, "max": math.nan}
    mid = n // 2
    median = s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2
    return {"n": n, "min": float(s[0]), "median": float(median), "mean": float(sum(s) / n),
            "p99": percentile(s, 99), "p999": percentile(s, 99.9), "max": float(s[-1])}


def median(values: Sequence[float]) -> float:
    return float(summary(values)["median"])


def histogram(values_ms: Sequence[float]) -> list[dict[str, Any]]:
    """Counts per bucket ``{"le_ms": upper bound, "count": n}``, from the first to the last non-empty one."""
    counts = [0] * len(BUCKETS_MS)
    for v in values_ms:
        for i, bound in enumerate(BUCKETS_MS):
            if v <= bound or i == len(BUCKETS_MS) - 1:
                counts[i] += 1
                break
    used = [i for i, c in enumerate(counts) if c]
    if not used:
        return []
    return [{"le_ms": BUCKETS_MS[i], "count": counts[i]} for i in range(used[0], used[-1] + 1)]


def ratio(ours: float, theirs: float) -> float:
    """ours / theirs, nan when either is missing or theirs is 0."""
    if not theirs or math.isnan(ours) or math.isnan(theirs):
        return math.nan
    return ours / theirs
