"""``router nba-report``: retention with and without the next-best-action, with confidence intervals.

The unit is the customer: each customer counts once, at their first decision in the period, in
the arm the API assigned (:func:`router.policy.control.arm_of`, fixed per customer), so the two
groups are random samples of the same population and the comparison is intention-to-treat:
everyone in the ``action`` arm counts, whatever the rules chose for them. Retained = no
cancellation and no ``churned`` outcome within the horizon after the decision; a decision whose
horizon the data does not yet cover is left out (censored), never counted as retained.

Intervals: Wilson score interval per arm, and Newcombe's hybrid score interval (method 10 of
Newcombe, Statistics in Medicine 17:873-890, 1998) for the difference of the two rates; both
behave at small counts and rates near 0 or 1, where the Wald interval does not.

Two sources: audited decisions in Redis (their ``arm``) with outcomes from an event log, or an
event history alone (``--events``; every ticket is a contact and the arm is assigned with this
deployment's identity key as the API would), which is how it runs on the demo history.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from router.core.identity import IdentityHasher
from router.policy.control import ARMS, arm_of
from router.settings import Settings
from schemas.events import CustomerEvent, Outcome, SubscriptionChanged, TicketOpened

__all__ = ["ArmFigures", "NbaReport", "format_report", "newcombe", "report_from_audit", "report_from_history", "wilson"]

DAY = 86_400


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    return statistics.NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (no continuity correction); (0, 1) when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be within 0..{n}, got {successes}")
    z = _z(confidence)
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z / (1.0 + z2n) * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(s1: int, n1: int, s2: int, n2: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """(p1 - p2, lower, upper): Newcombe's hybrid score interval for a difference of proportions."""
    p1 = s1 / n1 if n1 else 0.0
    p2 = s2 / n2 if n2 else 0.0
    l1, u1 = wilson(s1, n1, confidence)
    l2, u2 = wilson(s2, n2, confidence)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


class ArmFigures(msgspec.Struct, frozen=True, kw_only=True):
    arm: str
    customers: int
    retained: int
    rate: float
    low: float
    high: float


class NbaReport(msgspec.Struct, frozen=True, kw_only=True):
    source: str
    horizon_days: int
    confidence: float
    control_share: float | None
    """The share the arms were assigned with (history source); None for audited decisions (each carries its arm)."""
    action: ArmFigures
    control: ArmFigures
    difference: float
    """Retention rate of the action arm minus the control arm's."""
    difference_low: float
    difference_high: float
    censored: int
    """Customers whose first decision is less than a horizon before the end of the data: left out."""
    period: tuple[str, str]
    targeted: NbaReport | None = None
    """Audit source: the same comparison among customers for whom the policy chose something other than
    the standard action at their first decision (given in the action arm, withheld in the control arm);
    a subgroup both arms define alike, where an effect is not diluted by customers who get the standard
    action anyway. None when an arm has no such customer with a complete horizon."""


def _arm(name: str, retained: int, n: int, confidence: float) -> ArmFigures:
    low, high = wilson(retained, n, confidence)
    return ArmFigures(arm=name, customers=n, retained=retained, rate=retained / n if n else float("nan"),
                      low=low, high=high)  # fmt: skip


def _report(
    first: dict[str, tuple[float, str]],
    churned_at: dict[str, list[float]],
    end: float,
    *,
    source: str,
    horizon_days: int,
    confidence: float,
    share: float | None,
) -> NbaReport:
    """``first``: customer -> (time of the first decision, arm); ``churned_at``: customer -> churn times."""
    horizon = horizon_days * DAY
    counts: dict[str, list[int]] = {arm: [0, 0] for arm in ARMS}  # [customers, retained]
    censored = 0
    for customer, (at, arm) in first.items():
        if at + horizon > end:
            censored += 1
            continue
        lost = any(at < t <= at + horizon for t in churned_at.get(customer, ()))
        counts[arm][0] += 1
        counts[arm][1] += not lost
    (na, ra), (nc, rc) = counts["action"], counts["control"]
    if not na or not nc:
        raise ValueError(
            f"need customers in both arms with a complete horizon (action {na}, control {nc}, censored {censored}): "
            "a longer period, or a control share above 0"
        )
    d, low, high = newcombe(ra, na, rc, nc, confidence)
    times = [at for at, _ in first.values()]
    return NbaReport(
        source=source,
        horizon_days=horizon_days,
        confidence=confidence,
        control_share=share,
        action=_arm("action", ra, na, confidence),
        control=_arm("control", rc, nc, confidence),
        difference=d,
        difference_low=low,
        difference_high=high,
        censored=censored,
        period=(_day(min(times)), _day(max(times))),
    )


def _day(t: float) -> str:
    return f"{datetime.fromtimestamp(t, UTC):%Y-%m-%d}"


def _is_churn(event: CustomerEvent) -> bool:
    return (isinstance(event, SubscriptionChanged) and event.change == "cancel") or (
        isinstance(event, Outcome) and event.outcome == "churned"
    )


def report_from_history(
    path: Path,
    settings: Settings,
    *,
    share: float,
    horizon_days: int,
    confidence: float = 0.95,
    progress: bool = False,
) -> NbaReport:
    """Every customer's first ticket (while subscribed) is their decision, in the arm the API would assign."""
    from router.churn.training.dataset import read_events

    if not 0.0 < share < 1.0:
        raise ValueError(f"the control share must be between 0 and 1 (exclusive), got {share}")
    hasher = IdentityHasher.from_settings(settings.identity)
    events: Iterable[CustomerEvent] = read_events(path)
    if progress:
        from tqdm import tqdm

        events = tqdm(events, desc="reading events", unit=" events", unit_scale=True, mininterval=1.0, disable=None)
    first: dict[str, tuple[float, str]] = {}
    churned: dict[str, list[float]] = {}
    gone: set[str] = set()
    end = 0.0
    for e in events:
        t = e.occurred_at.timestamp()
        end = max(end, t)
        cid = e.customer_id
        if _is_churn(e):
            churned.setdefault(cid, []).append(t)
            gone.add(cid)
        elif isinstance(e, TicketOpened) and cid not in first and cid not in gone:
            first[cid] = (t, arm_of(hasher.customer_key(cid), share))
    return _report(first, churned, end, source=f"history {path}", horizon_days=horizon_days,
                   confidence=confidence, share=share)  # fmt: skip


async def report_from_audit(
    settings: Settings, outcomes: Path, *, days: int, horizon_days: int, confidence: float = 0.95
) -> NbaReport:
    """Audited decisions of the last ``days`` that carry an arm; churn from the events in ``outcomes``."""
    from router.churn.training.dataset import read_events
    from router.policy import load_policy
    from router.state.audit import AuditReader, AuditRecord
    from router.state.store import StateStore, connect_redis

    hasher = IdentityHasher.from_settings(settings.identity)
    client = connect_redis(settings.redis, timeout_s=10.0)
    first: dict[str, tuple[float, str]] = {}
    targeted: set[str] = set()
    standard = load_policy(settings.policy.path).standard_action.code
    try:
        reader = AuditReader(StateStore(client, settings.redis.prefix, hasher))
        now = time.time()
        async for rec in reader.between(now - days * DAY, now):
            if not isinstance(rec, AuditRecord) or rec.arm not in ARMS or not rec.customer_key:
                continue
            key, arm = rec.customer_key, str(rec.arm)
            if key not in first or rec.at < first[key][0]:
                first[key] = (rec.at, arm)
                chosen = rec.actions if arm == "action" else rec.withheld
                (targeted.add if any(code != standard for code in chosen) else targeted.discard)(key)
    finally:
        await client.aclose()
    churned: dict[str, list[float]] = {}
    end = 0.0
    for e in read_events(outcomes):
        t = e.occurred_at.timestamp()
        end = max(end, t)
        if _is_churn(e):
            churned.setdefault(hasher.customer_key(e.customer_id), []).append(t)
    source = f"audit (last {days} days) + outcomes {outcomes}"
    report = _report(first, churned, end, source=source, horizon_days=horizon_days, confidence=confidence,
                     share=None)  # fmt: skip
    try:
        sub = _report({k: v for k, v in first.items() if k in targeted}, churned, end,
                      source=f"{source}, customers the policy chose an action for", horizon_days=horizon_days,
                      confidence=confidence, share=None)  # fmt: skip
    except ValueError:
        return report
    return msgspec.structs.replace(report, targeted=sub)


def format_report(r: NbaReport) -> str:
    pct = 100.0 * r.confidence
    lines = [
        f"Next-best-action effectiveness ({r.source})",
        f"first decision per customer {r.period[0]} .. {r.period[1]}; retained = no cancellation or churned "
        f"outcome within {r.horizon_days} days"
        + (f"; control share {r.control_share:g}" if r.control_share is not None else ""),
        "",
        f"{'arm':<8} {'customers':>9} {'retained':>9} {'rate':>8}   {pct:g} % CI (Wilson)",
    ]
    for a in (r.action, r.control):
        lines.append(f"{a.arm:<8} {a.customers:>9,} {a.retained:>9,} {a.rate * 100:>7.2f} %   "
                     f"{a.low * 100:.2f} .. {a.high * 100:.2f} %")  # fmt: skip
    lines += [
        "",
        f"difference (action - control): {r.difference * 100:+.2f} pp, {pct:g} % CI "
        f"{r.difference_low * 100:+.2f} .. {r.difference_high * 100:+.2f} pp (Newcombe hybrid score)",
        f"{r.censored:,} customers left out: their horizon is not over yet",
    ]
    if r.difference_low > 0:
        lines.append("the action arm retains more customers (the interval excludes 0)")
    elif r.difference_high < 0:
        lines.append("the action arm retains fewer customers (the interval excludes 0)")
    else:
        lines.append("no difference can be claimed at this confidence (the interval includes 0)")
    if r.targeted is not None:
        lines += ["", "Among customers the policy chose another action than the standard one for:", "",
                  format_report(r.targeted)]  # fmt: skip
    return "\n".join(lines)
