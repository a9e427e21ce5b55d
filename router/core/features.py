"""Model features of a snapshot at a point in time: the same function for serving and training.

``as_of`` is "now" when serving and the cutoff when training; the snapshot passed in
for training was folded only from events at or before the cutoff, so nothing leaks.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from router.core.reducer import DAY, B, Snapshot, day_of

__all__ = [
    "CLOCK_FEATURES",
    "FEATURE_NAMES",
    "N_FEATURES",
    "clock_origins",
    "clock_origins_many",
    "features",
    "windows_change_at",
    "windows_change_at_many",
]

FEATURE_NAMES: tuple[str, ...] = (
    "tenure_days",
    "days_since_last_interaction",
    "orders_30d",
    "orders_90d",
    "revenue_90d",
    "avg_order_value",
    "logins_30d",
    "logins_prev_30d_avg",
    "login_trend",
    "features_used_30d",
    "late_payments_90d",
    "late_payment_ratio",
    "tickets_30d",
    "severe_tickets_90d",
    "open_tickets",
    "unresolved_tickets_90d",
    "sentiment_90d",
    "nps",
    "mrr",
    "mrr_change_90d",
    "downgrades_90d",
    "upgrades_90d",
    "subscription_active",
    "csat_avg",
    "log_company_size",
    # lifetime purchase history, in the customer-base literature's terms (BG/NBD's x, t_x, T)
    "orders_total",
    "spend_total",
    "days_since_last_order",
    "order_age_days",
    "order_recency_days",
    "mean_order_gap_days",
    "last_order_gap_days",
    "expected_activity_ratio",
)
N_FEATURES = len(FEATURE_NAMES)
CLOCK_FEATURES: tuple[int, ...] = tuple(
    FEATURE_NAMES.index(name)
    for name in (
        "tenure_days",
        "days_since_last_interaction",
        "days_since_last_order",
        "order_age_days",
        "expected_activity_ratio",
    )
)
"""Features that grow with the clock between events: tenure, days since the last interaction, days since
the last order and since the first (one per day), and the expected-activity ratio (days since the last
order over the mean gap between orders: ``1 / gap`` per day). Every other feature changes only with the
snapshot or at a day boundary (:func:`windows_change_at`)."""


def features(snap: Snapshot, as_of: int) -> list[float]:
    """Feature vector in :data:`FEATURE_NAMES` order for ``snap`` as of epoch second ``as_of``."""
    today = day_of(as_of)
    orders30 = orders90 = logins30 = logins_prev = feats30 = 0
    revenue90 = late90 = tickets30 = severe90 = unresolved90 = 0
    sent_sum = sent_n = mrr90 = down90 = up90 = 0
    for day, bucket in snap.days.items():
        age = today - day
        if age < 0 or age >= 90:
            continue
        b = bucket + _ZEROS[len(bucket) :]
        if age < 30:
            orders30 += b[B.ORDERS]
            logins30 += b[B.LOGINS]
            feats30 += b[B.FEATURES]
            tickets30 += b[B.TICKETS]
        else:
            logins_prev += b[B.LOGINS]
        orders90 += b[B.ORDERS]
        revenue90 += b[B.REVENUE_CENTS]
        late90 += b[B.LATE_PAYMENTS]
        severe90 += b[B.SEVERE_TICKETS]
        unresolved90 += b[B.UNRESOLVED]
        sent_sum += b[B.SENTIMENT_SUM]
        sent_n += b[B.SENTIMENT_N]
        mrr90 += b[B.MRR_DELTA_CENTS]
        down90 += b[B.DOWNGRADES]
        up90 += b[B.UPGRADES]
    start = snap.signup_day * DAY if snap.signup_day is not None else snap.first_seen
    tenure = max(0.0, (as_of - start) / DAY) if start else 0.0
    since_last = (as_of - snap.last_interaction_at) / DAY if snap.last_interaction_at else tenure
    logins_prev_avg = logins_prev / 2.0
    first, last = snap.first_order_at, snap.last_order_at
    since_order = max(0.0, (as_of - last) / DAY) if last else 0.0
    gap = _mean_gap_days(snap)
    return [
        tenure,
        max(0.0, since_last),
        float(orders30),
        float(orders90),
        revenue90 / 100.0,
        snap.revenue_cents / 100.0 / snap.orders_total if snap.orders_total else 0.0,
        float(logins30),
        logins_prev_avg,
        (logins30 + 1.0) / (logins_prev_avg + 1.0),
        float(feats30),
        float(late90),
        snap.late_payments_total / snap.payments_total if snap.payments_total else 0.0,
        float(tickets30),
        float(severe90),
        float(max(0, snap.tickets_total - snap.tickets_resolved)),
        float(unresolved90),
        sent_sum / 100.0 / sent_n if sent_n else 0.0,
        float(snap.nps) if snap.nps is not None else -1.0,
        max(0, snap.mrr_cents) / 100.0,
        mrr90 / 100.0,
        float(down90),
        float(up90),
        1.0 if snap.subscription == "active" else 0.0,
        snap.csat_sum / snap.csat_n if snap.csat_n else 0.0,
        math.log1p(snap.company_size or 0),
        float(snap.orders_total),
        snap.revenue_cents / 100.0,
        since_order,
        max(0.0, (as_of - first) / DAY) if first else 0.0,
        (last - first) / DAY if first else 0.0,
        gap,
        (last - snap.prev_order_at) / DAY if snap.prev_order_at else 0.0,
        since_order / gap if gap else 0.0,
    ]


def clock_origins(snap: Snapshot) -> list[tuple[int | None, float]]:
    """Per :data:`CLOCK_FEATURES`, the epoch second it counts from (``None``: it stays constant) and its rate.

    Before its origin a clock feature is 0; from it on, ``(t - origin) / DAY * rate``. Mirrors
    :func:`features` (a test holds them together).
    """
    start = snap.signup_day * DAY if snap.signup_day is not None else snap.first_seen
    tenure_origin = start or None
    first, last = snap.first_order_at, snap.last_order_at
    gap = _mean_gap_days(snap)
    return [
        (tenure_origin, 1.0),
        (snap.last_interaction_at or tenure_origin, 1.0),
        (last or None, 1.0),
        (first or None, 1.0),
        (last or None, 1.0 / gap) if gap else (None, 0.0),
    ]


def clock_origins_many(snaps: Sequence[Snapshot]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """:func:`clock_origins` of many snapshots at once: (origins, rates), each [n, len(CLOCK_FEATURES)].

    An origin of 0 stands for ``None`` (a constant feature; no origin is ever epoch second 0, which
    the other maps to ``None`` too), its rate then 0. The same numbers (a test holds them together).
    """
    n = len(snaps)
    raw = np.array(
        [
            v
            for s in snaps
            for v in (
                s.signup_day * DAY if s.signup_day is not None else s.first_seen,
                s.last_interaction_at,
                s.first_order_at,
                s.last_order_at,
                s.orders_total,
            )
        ],
        dtype=np.int64,
    ).reshape(n, 5)
    start, interaction, first, last, orders = raw.T
    spread = last > first
    # _mean_gap_days: int / int and then / int, as Python divides them (exact below 2**53)
    gap = np.where((orders > 1) & spread, (last - first) / DAY / np.maximum(orders - 1, 1), 0.0)
    has_gap = gap != 0.0
    origins = np.stack(
        [start, np.where(interaction != 0, interaction, start), last, first, np.where(has_gap, last, 0)], axis=1
    )
    rates = np.ones((n, 5), dtype=np.float64)
    rates[:, 4] = np.where(has_gap, 1.0 / np.where(has_gap, gap, 1.0), 0.0)
    rates[origins == 0] = 0.0
    return origins, rates


def _mean_gap_days(snap: Snapshot) -> float:
    """Mean days between orders, first to last (0 with fewer than two order times)."""
    first, last, n = snap.first_order_at, snap.last_order_at, snap.orders_total
    return (last - first) / DAY / (n - 1) if n > 1 and last > first else 0.0


def windows_change_at(snap: Snapshot, as_of: int) -> int:
    """First epoch second after ``as_of`` at which a windowed feature of ``snap`` can change.

    A day bucket enters the windows on its day and leaves the 30- and 90-day windows 30 and
    90 days later; between those day boundaries the window sums are constant.
    """
    today = day_of(as_of)
    days = sorted(snap.days)
    nxt = _FAR_DAY
    for width in (0, 30, 90):  # the first bucket whose day + width is still ahead
        i = bisect.bisect_right(days, today - width)
        if i < len(days):
            nxt = min(nxt, days[i] + width)
    return nxt * DAY


def windows_change_at_many(snaps: Sequence[Snapshot], as_of: Sequence[int]) -> npt.NDArray[np.int64]:
    """:func:`windows_change_at` of many snapshots at once (the consumer's batches), the same integers.

    Per bucket, the first of its day, 30 and 90 days later that is still ahead; the earliest over the
    customer's buckets is the earliest over each width's first bucket ahead, which is what the other computes.
    """
    n = len(snaps)
    lens = [len(s.days) for s in snaps]
    days = np.fromiter((d for s in snaps for d in s.days), np.int64, sum(lens))
    today = np.repeat(np.asarray(as_of, dtype=np.int64) // DAY, lens)
    ahead = np.where(
        days > today,
        days,
        np.where(days > today - 30, days + 30, np.where(days > today - 90, days + 90, _FAR_DAY)),
    )
    out = np.full(n, _FAR_DAY, dtype=np.int64)
    np.minimum.at(out, np.repeat(np.arange(n), lens), ahead)
    return out * DAY


_FAR_DAY = 1 << 40
_ZEROS = [0] * B.SIZE
