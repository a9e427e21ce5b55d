"""BG/NBD and Gamma-Gamma: the customer-base literature's baseline ("buy till you die").

BG/NBD (Fader, Hardie & Lee 2005, "Counting your customers the easy way"): while alive a
customer buys at a Poisson rate λ ~ Gamma(r, α); after each purchase they drop out with
probability p ~ Beta(a, b). A customer is summarised by ``x`` (repeat purchases), ``t_x``
(time of the last purchase since the first) and ``T`` (time since the first purchase).
Gamma-Gamma (Fader, Hardie & Lee 2005, "RFM and CLV") models the average spend ``m_x`` of
the repeat purchases with parameters ``p, q, γ``.

Written here in numpy/scipy (maximum likelihood, closed-form conditional expectations)
rather than taken from a package: ``lifetimes`` is archived, ``btyd`` is a 2022 beta and
``pymc-marketing`` brings PyMC and PyTensor for a four-parameter likelihood.
``tests/unit/churn/test_btyd.py`` checks the fit against the published CDNOW-sample values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import optimize, special

__all__ = ["BgNbd", "GammaGamma", "fit_bgnbd", "fit_gamma_gamma"]

Array = npt.NDArray[np.float64]


def _arr(v: npt.ArrayLike) -> Array:
    return np.asarray(v, dtype=np.float64)


@dataclass(frozen=True)
class BgNbd:
    """Fitted BG/NBD parameters (time in the unit of the data it was fitted on)."""

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float = 0.0

    def p_alive(self, x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike) -> Array:
        """P(still alive at ``T`` | x, t_x, T)."""
        x, t_x, T = _arr(x), _arr(t_x), _arr(T)
        ratio = self._dead_odds(x, t_x, T)
        return 1.0 / (1.0 + ratio)

    def _dead_odds(self, x: Array, t_x: Array, T: Array) -> Array:
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        with np.errstate(divide="ignore", invalid="ignore"):
            log_odds = (
                np.log(a)
                - np.log(np.maximum(b + x - 1.0, 1e-300))
                + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
            )
        odds: Array = np.where(x > 0, np.exp(np.minimum(log_odds, 700.0)), 0.0)
        return odds

    def p_active(self, t: float, x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike) -> Array:
        """P(at least one purchase in (T, T + t] | x, t_x, T).

        Alive customers buy at rate λ, whose posterior given they are alive is Gamma(r + x, α + T);
        no purchase in ``t`` then has probability ((α+T)/(α+T+t))^(r+x). The dead never buy.
        """
        x, t_x, T = _arr(x), _arr(t_x), _arr(T)
        none = np.exp((self.r + x) * (np.log(self.alpha + T) - np.log(self.alpha + T + t)))
        p: Array = self.p_alive(x, t_x, T) * (1.0 - none)
        return p

    def expected_purchases(self, t: float, x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike) -> Array:
        """E[purchases in (T, T + t] | x, t_x, T] (FHL 2005, eq. 10)."""
        x, t_x, T = _arr(x), _arr(t_x), _arr(T)
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        z = t / (alpha + T + t)
        hyp = special.hyp2f1(r + x, b + x, a + b + x - 1.0, z)
        first = (a + b + x - 1.0) / (a - 1.0)
        second = 1.0 - np.exp((r + x) * (np.log(alpha + T) - np.log(alpha + T + t))) * hyp
        expected: Array = first * second / (1.0 + self._dead_odds(x, t_x, T))
        return expected


def _bgnbd_ll(params: Array, x: Array, t_x: Array, T: Array, w: Array) -> float:
    r, alpha, a, b = np.exp(params)
    common = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    a1 = special.betaln(a, b + x) - special.betaln(a, b) - (r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        a2 = np.where(
            x > 0,
            special.betaln(a + 1.0, np.maximum(b + x - 1.0, 1e-12))
            - special.betaln(a, b)
            - (r + x) * np.log(alpha + t_x),
            -np.inf,
        )
    ll = common + np.logaddexp(a1, a2)
    return float(np.sum(w * ll))


def fit_bgnbd(x: npt.ArrayLike, t_x: npt.ArrayLike, T: npt.ArrayLike, weights: npt.ArrayLike | None = None) -> BgNbd:
    """Maximum-likelihood BG/NBD parameters of customers (x, t_x, T); ``weights``: customers per row."""
    xa, ta, Ta = _arr(x), _arr(t_x), _arr(T)
    w = np.ones_like(xa) if weights is None else _arr(weights)
    if not (len(xa) == len(ta) == len(Ta) == len(w)) or not len(xa):
        raise ValueError("x, t_x and T must be non-empty and of equal length")
    if np.any(xa < 0) or np.any(ta < 0) or np.any(Ta < ta):
        raise ValueError("need x >= 0 and 0 <= t_x <= T")
    best: optimize.OptimizeResult | None = None
    for start in (np.zeros(4), np.log([0.5, 5.0, 1.0, 2.0])):
        res = optimize.minimize(
            lambda p: -_bgnbd_ll(p, xa, ta, Ta, w),
            start,
            method="Nelder-Mead",
            options={"maxiter": 20_000, "xatol": 1e-8, "fatol": 1e-10},
        )
        res = optimize.minimize(lambda p: -_bgnbd_ll(p, xa, ta, Ta, w), res.x, method="L-BFGS-B")
        if best is None or res.fun < best.fun:
            best = res
    assert best is not None
    r, alpha, a, b = (float(v) for v in np.exp(best.x))
    return BgNbd(r=r, alpha=alpha, a=a, b=b, log_likelihood=-float(best.fun))


@dataclass(frozen=True)
class GammaGamma:
    """Fitted Gamma-Gamma spend parameters."""

    p: float
    q: float
    gamma: float
    log_likelihood: float = 0.0

    def expected_spend(self, x: npt.ArrayLike, m_x: npt.ArrayLike) -> Array:
        """E[average spend per transaction | x repeat purchases averaging m_x]; the population mean for x = 0."""
        xa, ma = _arr(x), _arr(m_x)
        population = self.p * self.gamma / (self.q - 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            post = (self.gamma + ma * xa) * self.p / (self.p * xa + self.q - 1.0)
        spend: Array = np.where(xa > 0, post, population)
        return spend


def _gg_ll(params: Array, x: Array, m: Array) -> float:
    p, q, g = np.exp(params)
    px = p * x
    ll = (
        special.gammaln(px + q)
        - special.gammaln(px)
        - special.gammaln(q)
        + q * np.log(g)
        + (px - 1.0) * np.log(m)
        + px * np.log(x)
        - (px + q) * np.log(g + x * m)
    )
    return float(np.sum(ll))


def fit_gamma_gamma(x: npt.ArrayLike, m_x: npt.ArrayLike) -> GammaGamma:
    """Maximum-likelihood Gamma-Gamma parameters from repeat buyers (x > 0, m_x > 0 only)."""
    xa, ma = _arr(x), _arr(m_x)
    keep = (xa > 0) & (ma > 0)
    xa, ma = xa[keep], ma[keep]
    if not len(xa):
        raise ValueError("Gamma-Gamma needs customers with repeat purchases and positive spend")
    res = optimize.minimize(
        lambda v: -_gg_ll(v, xa, ma),
        np.log([1.0, 1.0, 1.0]),
        method="Nelder-Mead",
        options={"maxiter": 20_000, "xatol": 1e-8, "fatol": 1e-10},
    )
    res = optimize.minimize(lambda v: -_gg_ll(v, xa, ma), res.x, method="L-BFGS-B")
    p, q, g = (float(v) for v in np.exp(res.x))
    return GammaGamma(p=p, q=q, gamma=g, log_likelihood=-float(res.fun))
