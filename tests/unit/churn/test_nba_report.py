"""The control group's arithmetic: Wilson and Newcombe intervals against published values, arm assignment."""

from __future__ import annotations

import pytest

from router.churn.lifecycle.nba import _report, newcombe, wilson
from router.policy.control import arm_of, control_point

# Newcombe RG (1998). Two-sided confidence intervals for the single proportion: comparison of seven
# methods. Statistics in Medicine 17:857-872, table I, method 3 (Wilson score, no continuity correction).
WILSON_1998 = [
    ((81, 263), (0.2553, 0.3662)),
    ((15, 148), (0.0624, 0.1605)),
    ((0, 20), (0.0, 0.1611)),
    ((1, 29), (0.0061, 0.1718)),
]

# Newcombe RG (1998). Interval estimation for the difference between independent proportions: comparison
# of eleven methods. Statistics in Medicine 17:873-890, table II, method 10 (hybrid score, no correction).
NEWCOMBE_1998 = [
    ((56, 70, 48, 80), (0.0524, 0.3339)),
    ((9, 10, 3, 10), (0.1705, 0.8090)),
    ((6, 7, 2, 7), (0.0582, 0.8062)),
    ((5, 56, 0, 29), (-0.0381, 0.1926)),
    ((0, 10, 0, 20), (-0.1611, 0.2775)),
    ((0, 10, 0, 10), (-0.2775, 0.2775)),
    ((10, 10, 0, 20), (0.6791, 1.0)),
    ((10, 10, 0, 10), (0.6075, 1.0)),
]


@pytest.mark.parametrize(("counts", "expected"), WILSON_1998)
def test_wilson_matches_newcombe_1998(counts: tuple[int, int], expected: tuple[float, float]) -> None:
    low, high = wilson(*counts)
    assert (round(low, 4), round(high, 4)) == expected


@pytest.mark.parametrize(("counts", "expected"), NEWCOMBE_1998)
def test_newcombe_hybrid_score_matches_newcombe_1998(
    counts: tuple[int, int, int, int], expected: tuple[float, float]
) -> None:
    s1, n1, s2, n2 = counts
    d, low, high = newcombe(*counts)
    assert d == pytest.approx(s1 / n1 - s2 / n2)
    assert (round(low, 4), round(high, 4)) == expected


def test_interval_edge_cases() -> None:
    assert wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="within"):
        wilson(5, 3)
    with pytest.raises(ValueError, match="confidence"):
        wilson(1, 2, confidence=1.0)
    narrow, wide = wilson(50, 100, 0.90), wilson(50, 100, 0.99)
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]


def test_a_customer_stays_in_one_arm_and_the_share_is_respected() -> None:
    keys = [f"key-{i:05d}" for i in range(20_000)]
    arms = [arm_of(k, 0.05) for k in keys]
    assert arms == [arm_of(k, 0.05) for k in keys]  # deterministic
    share = arms.count("control") / len(keys)
    assert 0.045 < share < 0.055
    assert all(arm_of(k, 0.0) == "action" for k in keys[:1000])
    assert all(arm_of(k, 1.0) == "control" for k in keys[:1000])
    # Raising the share only moves customers into the control group, never out of it.
    assert all(arm_of(k, 0.10) == "control" for k, a in zip(keys, arms, strict=True) if a == "control")
    assert all(0.0 <= control_point(k) < 1.0 for k in keys[:1000])


def test_the_report_counts_each_customer_once_and_leaves_censored_ones_out() -> None:
    day = 86_400.0
    first = {"a": (0.0, "action"), "b": (0.0, "action"), "c": (0.0, "control"), "d": (0.0, "control"),
             "late": (95 * day, "action")}  # fmt: skip
    churned = {"b": [10 * day], "d": [91 * day]}  # d churned after the horizon: retained
    r = _report(first, churned, 100 * day, source="test", horizon_days=90, confidence=0.95, share=0.5)
    assert (r.action.customers, r.action.retained) == (2, 1)
    assert (r.control.customers, r.control.retained) == (2, 2)
    assert r.censored == 1
    assert r.difference == pytest.approx(-0.5)
    _, low, high = newcombe(1, 2, 2, 2)
    assert (r.difference_low, r.difference_high) == (low, high)
    with pytest.raises(ValueError, match="both arms"):
        _report({"a": (0.0, "action")}, {}, 100 * day, source="t", horizon_days=90, confidence=0.95, share=0.1)
