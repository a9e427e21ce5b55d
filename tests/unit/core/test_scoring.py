"""Scores: CLV arithmetic and percentiles from the sharded histogram (within one point)."""

from __future__ import annotations

import bisect
import random

from hypothesis import given
from hypothesis import strategies as st

from router.core.scoring import ClvDistribution, clv_bin, expected_months
from router.settings import ModelSettings


def _exact_percentile(sorted_values: list[float], v: float) -> float:
    lo = bisect.bisect_left(sorted_values, v)
    hi = bisect.bisect_right(sorted_values, v)
    return 100.0 * (lo + (hi - lo) / 2) / len(sorted_values)


def test_percentile_within_one_point_on_a_skewed_population() -> None:
    rnd = random.Random(3)
    # log-normal values, a long tail of big customers, some negative CLV (CAC not earned back)
    values = [rnd.lognormvariate(7, 1.6) - rnd.choice([0, 0, 0, 500]) for _ in range(50_000)]
    hist: dict[int, int] = {}
    for v in values:
        hist[clv_bin(v)] = hist.get(clv_bin(v), 0) + 1
    dist = ClvDistribution(hist)
    ordered = sorted(values)
    worst = max(abs(dist.percentile(v) - _exact_percentile(ordered, v)) for v in values[:5000])  # type: ignore[operator]
    assert worst < 1.0, worst


def test_empty_population_has_no_percentile() -> None:
    assert ClvDistribution({}).percentile(100.0) is None


@given(st.floats(0, 0.999), st.floats(0, 0.999))
def test_expected_lifetime_falls_as_churn_rises(a: float, b: float) -> None:
    s = ModelSettings()
    lo, hi = sorted((a, b))
    assert expected_months(hi, s) <= expected_months(lo, s) + 1e-9
    assert 0 <= expected_months(hi, s) <= s.max_lifetime_months


def test_bins_are_monotone() -> None:
    xs = sorted(random.Random(1).uniform(-1e6, 1e6) for _ in range(10_000))
    bins = [clv_bin(x) for x in xs]
    assert bins == sorted(bins)
