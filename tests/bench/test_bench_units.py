"""The pure parts of the storage timing: percentiles, histograms, and the io_timeout rule."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from diskpaxos.bench import recommend, stats
from diskpaxos.timeouts import Timeouts


def test_nearest_rank_percentiles() -> None:
    s = stats.summary([float(x) for x in range(1, 1001)])
    assert (s["n"], s["min"], s["median"], s["p99"], s["p999"], s["max"]) == (1000, 1, 500.5, 990, 999, 1000)
    assert stats.summary([3.0])["p999"] == 3.0
    assert math.isnan(stats.summary([])["median"])


@given(st.lists(st.floats(min_value=1e-4, max_value=1e6), min_size=1, max_size=300))
def test_summary_is_ordered_and_histogram_counts_every_sample(xs: list[float]) -> None:
    s = stats.summary(xs)
    assert s["min"] <= s["median"] <= s["p99"] <= s["p999"] <= s["max"]
    assert s["p99"] in xs and s["p999"] in xs
    h = stats.histogram(xs)
    assert sum(b["count"] for b in h) == len(xs) and h[0]["count"] and h[-1]["count"]


def tail(p999_ms: float, max_ms: float) -> dict:
    return {"n": 1000, "median": p999_ms / 2, "p999": p999_ms, "max": max_ms}


@pytest.mark.parametrize("renewal_max_ms, expected", [
    (1.0, 1),          # fast storage: the smallest io_timeout
    (499.0, 1),        # 2 x 499 ms fits in 1 s
    (501.0, 2),        # 2 x 501 ms does not
    (4_600.0, 10),     # 9.2 s: sanlock's default
    (200_000.0, None),  # nothing up to 255 s fits
])
def test_recommendation_from_the_max(renewal_max_ms: float, expected: int | None) -> None:
    r = recommend.recommend({"renewal": tail(1.0, renewal_max_ms), "write_sector": tail(0.1, 0.2)})
    assert r["io_timeout"] == expected
    assert r["binding_operation"] == "renewal"
    if expected is not None:
        t = Timeouts(expected)
        assert (r["renewal_interval_s"], r["renewal_fail_s"], r["host_dead_s"]) == \
            (t.id_renewal, t.id_renewal_fail, t.host_dead)


def test_p999_has_the_larger_margin() -> None:
    # p99.9 of 300 ms x 4 = 1.2 s > 1 s, though 2 x max (0.7 s) would fit
    assert recommend.recommend({"write_sector": tail(300.0, 350.0)})["io_timeout"] == 2


def test_acquire_has_six_io_timeouts() -> None:
    # 2 x 2.9 s = 5.8 s fits paxos_acquire_free_max at io_timeout 1 (6 s)
    r = recommend.recommend({"acquire": tail(1000.0, 2900.0)})
    assert r["io_timeout"] == 1 and r["checks"][0]["budget"] == "paxos_acquire_free_max"


def test_operations_without_samples_or_budget_are_not_checked() -> None:
    r = recommend.recommend({"renewal": {"n": 0, "p999": math.nan, "max": math.nan}, "other": tail(1e6, 1e6)})
    assert r["io_timeout"] == 1 and r["checks"] == []
