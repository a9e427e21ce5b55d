"""Scores derived from a snapshot: CLV, its percentile, upsell, advocacy, sentiment, cost to serve.

Churn comes from the ONNX model (:mod:`router.churn.model`); everything here is transparent
arithmetic on the same feature vector, so an agent can be told why. :func:`assess` is the one
place the score set is put together: a decision and the customer view (every score, and the CLV
with its parts) call it. The consumer and its sweep store only the CLV (and its histogram bin):
they call :func:`clv_parts`, the very function :func:`assess` takes the set's CLV from, and skip
the scores they would throw away (upsell, advocacy, sentiment: ~2 us a customer).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from router.core.features import FEATURE_NAMES
from router.core.reducer import CONTACT_CHANNELS, CONTACT_SEVERITIES, Snapshot
from router.settings import ModelSettings

__all__ = [
    "CLV_FORMULA",
    "DEFAULT_CHURN",
    "NO_SERVICE_COST",
    "ClvDistribution",
    "ClvParts",
    "ScoreSet",
    "ServicePrices",
    "advocacy_score",
    "assess",
    "clv_bin",
    "clv_parts",
    "expected_months",
    "sentiment_label",
    "support_cost",
    "upsell_score",
]

_F = {name: i for i, name in enumerate(FEATURE_NAMES)}
_TENURE, _MRR, _SENTIMENT = _F["tenure_days"], _F["mrr"], _F["sentiment_90d"]
_BINS_PER_E = 50
"""Histogram resolution: 50 bins per factor e (about 2 % wide), so percentiles are exact to
well under one point unless a single CLV value is shared by many customers."""


def expected_months(churn: float, settings: ModelSettings) -> float:
    """Discounted expected remaining lifetime in months, from the churn probability over the horizon."""
    churn = min(max(churn, 0.0), 0.999)
    monthly_survival = (1.0 - churn) ** (30.0 / settings.horizon_days)
    monthly_discount = (1.0 + settings.annual_discount_rate) ** (1.0 / 12.0)
    r = monthly_survival / monthly_discount
    n = settings.max_lifetime_months
    return r * (1.0 - r**n) / (1.0 - r) if r < 1.0 else float(n)


DEFAULT_CHURN = 0.1
"""Churn assumed for a value estimate when no model score exists (no model, or it failed)."""

CLV_FORMULA = (
    "CLV = (order margin per month + MRR x subscription margin rate - support cost per month) "
    "x expected remaining months (from churn risk, discounted) - acquisition cost"
)


class ServicePrices(NamedTuple):
    """What serving a customer costs, from the policy's ``[service_cost]`` table."""

    per_contact: tuple[float, ...]
    """Price of a ticket by channel and severity, at ``router.core.reducer.contact_index``."""
    per_hour: float
    """Price of an hour of handling time, for tickets whose resolution reported it."""
    currency: str = "EUR"


NO_SERVICE_COST = ServicePrices((0.0,) * (len(CONTACT_CHANNELS) * len(CONTACT_SEVERITIES)), 0.0)
"""Prices of zero: CLV without the cost to serve (tests, tools without a policy)."""


def support_cost(snap: Snapshot, prices: ServicePrices) -> float:
    """What the customer's support contacts have cost so far.

    A ticket whose resolution reported its handling time is priced by the hour; the others by
    their channel and severity. Which opened ticket a timed resolution belongs to is not kept,
    so the timed tickets replace that share of the per-contact cost at the customer's average price.
    """
    contacts = snap.contacts
    n = sum(contacts)
    hours = snap.handling_s / 3600.0 * prices.per_hour
    if not n:
        return hours
    per_contact = sum(c * p for c, p in zip(contacts, prices.per_contact, strict=False))
    untimed = max(0, n - snap.timed_tickets) / n
    return per_contact * untimed + hours


class ClvParts(NamedTuple):
    """Customer lifetime value with the inputs a person needs to check it."""

    value: float
    order_margin_per_month: float
    """Average monthly order margin (average order value x purchase frequency x margin rate) over the tenure."""
    subscription_margin: float
    """Monthly margin of the active subscription (MRR x subscription margin rate)."""
    expected_months: float
    acquisition_cost: float
    mrr: float
    support_cost_per_month: float = 0.0
    """Cost of the customer's support contacts so far, per month of tenure (priced by the policy)."""

    @property
    def monthly_margin(self) -> float:
        return self.order_margin_per_month + self.subscription_margin

    @property
    def support_cost_per_year(self) -> float:
        return self.support_cost_per_month * 12.0


class ScoreSet(NamedTuple):
    """Every score of one customer at one moment, from one feature row and one churn probability."""

    churn: float
    """The churn probability the other scores were computed with."""
    clv: ClvParts
    upsell: float
    advocacy: float
    sentiment: float | None
    """Tone of recent contacts -1..1; None when the customer never had a rated contact."""


def clv_parts(
    snap: Snapshot, feats: Sequence[float], churn: float, settings: ModelSettings, prices: ServicePrices
) -> ClvParts:
    """Customer lifetime value: (monthly margin - monthly support cost) x expected remaining months - acquisition cost.

    Order margin and support cost are both averaged over the tenure in months (at least one).
    """
    tenure_months = max(1.0, feats[_TENURE] / 30.0)
    order_margin = (snap.margin_cents + snap.unmargined_cents * settings.default_margin_rate) / 100.0 / tenure_months
    mrr = feats[_MRR]
    sub_margin = mrr * settings.subscription_margin_rate if snap.subscription == "active" else 0.0
    support = support_cost(snap, prices) / tenure_months if snap.contacts or snap.handling_s else 0.0
    months = expected_months(churn, settings)
    value = (order_margin + sub_margin - support) * months - snap.acquisition_cost
    return ClvParts(value, order_margin, sub_margin, months, snap.acquisition_cost, mrr, support)


def assess(
    snap: Snapshot, feats: Sequence[float], churn: float | None, settings: ModelSettings, prices: ServicePrices
) -> ScoreSet:
    """The score set of a snapshot whose features are ``feats`` (``churn`` None: :data:`DEFAULT_CHURN`).

    ``prices`` come from the policy's cost-to-serve table (``Policy.service_prices``).
    """
    p = DEFAULT_CHURN if churn is None else churn
    mood = feats[_SENTIMENT]
    return ScoreSet(
        churn=p,
        clv=clv_parts(snap, feats, p, settings, prices),
        upsell=upsell_score(feats, p),
        advocacy=advocacy_score(feats),
        sentiment=mood if mood or snap.tickets_resolved else None,
    )


def clv_bin(value: float) -> int:
    """Histogram bin of a CLV value (signed log scale, so negative CLV has bins too)."""
    return round(math.copysign(math.log1p(abs(value)), value) * _BINS_PER_E)


class ClvDistribution:
    """The population's CLV distribution, from the sharded histogram; O(log bins) lookups."""

    __slots__ = ("_bins", "_cum", "total")

    def __init__(self, histogram: Mapping[int, int]) -> None:
        items = sorted((b, c) for b, c in histogram.items() if c > 0)
        self._bins = [b for b, _ in items]
        self._cum: list[int] = []
        running = 0
        for _, c in items:
            running += c
            self._cum.append(running)
        self.total = running

    def percentile(self, value: float) -> float | None:
        """Share of customers with a lower CLV (ties count half), 0-100; None if empty."""
        if not self.total:
            return None
        b = clv_bin(value)
        i = bisect.bisect_left(self._bins, b)
        below = self._cum[i - 1] if i > 0 else 0
        at = (self._cum[i] - below) if i < len(self._bins) and self._bins[i] == b else 0
        return 100.0 * (below + at / 2.0) / self.total


def upsell_score(feats: Sequence[float], churn: float) -> float:
    """Upgrade potential 0-1: engaged, growing, paying on time, not just upgraded, not leaving."""
    trend = min(feats[_F["login_trend"]], 3.0) / 3.0
    adoption = min(feats[_F["features_used_30d"]] / 60.0, 1.0)
    pays_well = 1.0 - min(feats[_F["late_payment_ratio"]] * 2.0, 1.0)
    mood = (feats[_F["sentiment_90d"]] + 1.0) / 2.0
    fresh_upgrade = 0.5 if feats[_F["upgrades_90d"]] > 0 else 1.0
    score = (0.35 * trend + 0.25 * adoption + 0.2 * pays_well + 0.2 * mood) * fresh_upgrade * (1.0 - churn)
    return min(max(score, 0.0), 1.0)


def advocacy_score(feats: Sequence[float]) -> float:
    """Willingness to recommend 0-1: NPS when known, else CSAT and tone of recent contacts."""
    nps = feats[_F["nps"]]
    csat = feats[_F["csat_avg"]]
    mood = (feats[_F["sentiment_90d"]] + 1.0) / 2.0
    parts = [mood]
    if nps >= 0:
        parts.append(nps / 10.0)
        parts.append(nps / 10.0)  # the customer's own answer weighs double
    if csat > 0:
        parts.append((csat - 1.0) / 4.0)
    return sum(parts) / len(parts)


def sentiment_label(value: float | None) -> str:
    """Plain-words tone for the agent's card."""
    if value is None:
        return "unknown"
    if value > 0.25:
        return "positive"
    if value < -0.25:
        return "negative"
    return "neutral"
