"""BG/NBD and Gamma-Gamma: the published CDNOW-sample estimates, and what the formulas promise."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

import numpy as np
import pytest

from router.churn.btyd import fit_bgnbd, fit_gamma_gamma


def _cdnow_summary() -> tuple[list[float], list[float], list[float], list[float], int]:
    """(x, t_x, T in weeks, mean repeat spend) as of 1997-09-30, the literature's calibration period,
    and the number of purchase days after it."""
    from router.churn.backtest import cdnow_path

    try:
        path = cdnow_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    spend: dict[str, dict[dt.date, float]] = defaultdict(lambda: defaultdict(float))
    for line in path.read_text().splitlines():
        cid, _, day, _, amount = line.split()
        spend[cid][dt.date(int(day[:4]), int(day[4:6]), int(day[6:]))] += float(amount)
    end = dt.date(1997, 9, 30)
    x, t_x, T, m = [], [], [], []
    later = sum(d > end for days in spend.values() for d in days)
    for days in spend.values():
        cal = sorted(d for d in days if d <= end)
        x.append(len(cal) - 1)
        t_x.append((cal[-1] - cal[0]).days / 7)
        T.append((end - cal[0]).days / 7)
        repeat = [days[d] for d in cal[1:]]
        m.append(sum(repeat) / len(repeat) if repeat else 0.0)
    return x, t_x, T, m, later


def test_fit_matches_the_published_cdnow_estimates() -> None:
    x, t_x, T, m, _ = _cdnow_summary()
    assert len(x) == 2357
    bg = fit_bgnbd(x, t_x, T)
    # Fader, Hardie & Lee (2005), "Counting your customers the easy way", CDNOW sample
    assert (bg.r, bg.alpha, bg.a, bg.b) == pytest.approx((0.2426, 4.4136, 0.7929, 2.4259), abs=6e-4)
    assert bg.log_likelihood == pytest.approx(-9582.4, abs=0.1)
    gg = fit_gamma_gamma(x, m)
    # Fader, Hardie & Lee (2005), "RFM and CLV": 946 repeat buyers of the same sample
    assert sum(v > 0 for v in x) == 946
    assert (gg.p, gg.q, gg.gamma) == pytest.approx((6.25, 3.74, 15.44), abs=6e-3)


def test_fit_recovers_the_parameters_of_simulated_customers() -> None:
    rng = np.random.default_rng(1)
    n, T = 6000, 52.0
    lam = rng.gamma(0.5, 1 / 3.0, n)  # r 0.5, alpha 3
    p = rng.beta(1.0, 4.0, n)
    x, t_x = np.zeros(n), np.zeros(n)
    for i in range(n):
        t = 0.0
        while True:
            t += rng.exponential(1 / lam[i])
            if t > T:
                break
            x[i] += 1
            t_x[i] = t
            if rng.random() < p[i]:
                break
    bg = fit_bgnbd(x, t_x, np.full(n, T))
    assert bg.r == pytest.approx(0.5, rel=0.15) and bg.alpha == pytest.approx(3.0, rel=0.25)
    assert bg.a == pytest.approx(1.0, rel=0.3) and bg.b == pytest.approx(4.0, rel=0.35)


def test_conditional_answers_behave() -> None:
    x, t_x, T, _, later = _cdnow_summary()
    bg = fit_bgnbd(x, t_x, T)
    # One-time buyers are alive for sure (no purchase to drop out after); the longer a repeat buyer is silent, the likelier dead.
    assert bg.p_alive([0], [0], [30])[0] == 1.0
    silent = bg.p_alive([3, 3, 3], [30, 20, 5], [38, 38, 38])
    assert silent[0] > silent[1] > silent[2]
    # P(active) is a probability below P(alive) and rises with the span; expected purchases grow with it.
    pa = bg.p_active(39, [2, 0], [30, 0], [38, 38])
    assert np.all((pa > 0) & (pa < bg.p_alive([2, 0], [30, 0], [38, 38])))
    assert np.all(bg.p_active(78, [2, 0], [30, 0], [38, 38]) > pa)
    e = bg.expected_purchases(39, np.asarray(x), np.asarray(t_x), np.asarray(T))
    # The forecast for the next 39 weeks is the right size: 1,653 against the 1,882 purchase days that followed.
    assert abs(e.sum() - later) < 0.15 * later, (e.sum(), later)
    with pytest.raises(ValueError):
        fit_bgnbd([1], [5], [3])
