"""The one reducer: fold a customer event into a customer snapshot.

The Kafka consumer calls :func:`fold` online; the training pipeline replays event logs
through the very same function to build point-in-time features, so serving and training
cannot drift apart.

Design rules that make the fold safe under at-least-once, out-of-order delivery:

* Everything that accumulates is a commutative sum (lifetime counters and per-day buckets
  keyed by *event* day), so the order in which events arrive does not matter.
* Everything that is "the latest value" (plan, profile, NPS, subscription status, last
  interaction) is last-writer-wins by ``(occurred_at, event hash)``, again order-free.
* Duplicates (same ``event_id``) are recognised through a small set of recent event hashes.
* An event older than ``max event time seen - lateness`` is *too late*: it is not applied
  (its day bucket may already be pruned and its duplicate may be forgotten), and the caller
  is told so it can count and dead-letter it. A replay of the same log drops the same events,
  so training and serving still agree.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable
from datetime import date, datetime
from typing import Any

import msgspec

from router.core.identity import IdentityHasher
from schemas.events import (
    CustomerEvent,
    CustomerProfile,
    ErasureRequested,
    NpsResponse,
    OrderPlaced,
    Outcome,
    Payment,
    SubscriptionChanged,
    TicketOpened,
    TicketResolved,
    Usage,
)

__all__ = [
    "CONTACT_CHANNELS",
    "CONTACT_SEVERITIES",
    "DAY",
    "WINDOW_DAYS",
    "Applied",
    "B",
    "Snapshot",
    "contact_index",
    "day_of",
    "event_hash",
    "fold",
    "fold_all",
    "plan_of",
]

DAY = 86_400
WINDOW_DAYS = 90
"""Longest rolling window any feature reads; buckets older than this (plus lateness) are pruned."""


class B:
    """Positions in a day bucket (a list of ints, trailing zeros trimmed to save memory)."""

    ORDERS = 0
    REVENUE_CENTS = 1
    LOGINS = 2
    FEATURES = 3
    TICKETS = 4
    SEVERE_TICKETS = 5
    LATE_PAYMENTS = 6
    SENTIMENT_SUM = 7  # sentiment x 100
    SENTIMENT_N = 8
    MRR_DELTA_CENTS = 9
    DOWNGRADES = 10
    UPGRADES = 11
    UNRESOLVED = 12
    SIZE = 13


class Applied(enum.Enum):
    """What :func:`fold` did with an event."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    TOO_LATE = "too_late"
    ERASED = "erased"  # before (or within the lateness bound after) an erasure: ignored on purpose
    IGNORED = "ignored"
    """An outcome for a customer the state does not know (or no longer knows): feedback on a
    decision never creates a customer, or anyone holding a helpdesk key could invent some."""


class Snapshot(msgspec.Struct, kw_only=True, array_like=True, omit_defaults=False):
    """Per-customer state kept in Redis (msgpack, positional to keep it small).

    Append new fields at the end with a default: positional encoding stays compatible.
    Times are epoch seconds (UTC); money in the business currency.
    """

    customer_id: str = ""
    first_seen: int = 0
    last_event_at: int = 0
    """Maximum event time seen: the reference for lateness and pruning."""
    last_interaction_at: int = 0
    last_interaction: str = ""
    last_interaction_key: int = 0
    # profile (last writer wins)
    profile_key: tuple[int, int] = (0, 0)
    segment: str = "unknown"
    profile_plan: str = "none"
    acquisition_cost: float = 0.0
    signup_day: int | None = None
    company_size: int | None = None
    consent: bool = True
    phone_keys: list[str] = []
    """Keyed hashes of the customer's phone numbers (E.164), never the numbers themselves."""
    email_keys: list[str] = []
    # lifetime counters (commutative)
    orders_total: int = 0
    revenue_cents: int = 0
    margin_cents: int = 0
    """Margin of orders that reported one; ``unmargined_cents`` is revenue of those that did not."""
    unmargined_cents: int = 0
    payments_total: int = 0
    late_payments_total: int = 0
    tickets_total: int = 0
    tickets_resolved: int = 0
    severe_tickets_total: int = 0
    csat_sum: int = 0
    csat_n: int = 0
    upgrades_total: int = 0
    downgrades_total: int = 0
    mrr_cents: int = 0
    # subscription status (last writer wins)
    sub_key: tuple[int, int] = (0, 0)
    subscription: str = "none"
    """none | active | cancelled"""
    sub_plan: str = "none"
    nps_key: tuple[int, int] = (0, 0)
    nps: int | None = None
    outcome_key: tuple[int, int] = (0, 0)
    outcome: str | None = None
    days: dict[int, list[int]] = {}
    """Day index (epoch day of the event) -> bucket, see :class:`B`."""
    seen: dict[int, int] = {}
    """Recent event hashes -> event time, for de-duplication within the lateness bound."""
    erased_at: int = 0
    """Erasure time; events up to it plus the lateness bound are ignored. A tombstone keeps only this."""
    events_applied: int = 0
    contacts: list[int] = []
    """Tickets opened per channel and severity, at :func:`contact_index` (trailing zeros trimmed):
    what serving the customer costs is priced from these by the policy."""
    timed_tickets: int = 0
    """Resolved tickets that reported their handling time."""
    handling_s: int = 0
    """Their handling time summed, in seconds."""
    first_order_at: int = 0
    """Time of the earliest order (0: none): the customer's age in the customer-base sense counts from it."""
    last_order_at: int = 0
    """Time of the latest order (0: none)."""
    prev_order_at: int = 0
    """Latest order time before ``last_order_at`` (0: fewer than two distinct order times): the last gap."""


CONTACT_CHANNELS: tuple[str, ...] = ("email", "phone", "chat", "web", "social")
"""``TicketOpened.channel`` values, in the order of :attr:`Snapshot.contacts`."""
CONTACT_SEVERITIES: tuple[str, ...] = ("low", "normal", "high", "urgent")
_CHANNEL_AT = {c: i * len(CONTACT_SEVERITIES) for i, c in enumerate(CONTACT_CHANNELS)}
_SEVERITY_AT = {s: i for i, s in enumerate(CONTACT_SEVERITIES)}


def contact_index(channel: str, severity: str) -> int:
    """Position of a (channel, severity) pair in :attr:`Snapshot.contacts`."""
    return _CHANNEL_AT[channel] + _SEVERITY_AT[severity]


def day_of(ts: int) -> int:
    """Epoch day of an epoch-seconds timestamp."""
    return ts // DAY


def event_hash(event_id: str) -> int:
    """Stable 63-bit hash of an event id (ids can be long; the snapshot keeps only this)."""
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big") >> 1


def _ts(dt: datetime) -> int:
    return int(dt.timestamp())


def _bump(days: dict[int, list[int]], day: int, pos: int, amount: int) -> None:
    bucket = days.get(day)
    if bucket is None:
        bucket = days[day] = []
    if len(bucket) <= pos:
        bucket.extend([0] * (pos + 1 - len(bucket)))
    bucket[pos] += amount


def _cents(amount: float) -> int:
    return round(amount * 100)


def fold(
    snap: Snapshot | None,
    event: CustomerEvent,
    *,
    lateness_s: int,
    hasher: IdentityHasher,
) -> tuple[Snapshot, Applied]:
    """Fold one event into ``snap`` (mutated and returned; a new one when ``snap`` is None)."""
    if snap is None:
        snap = Snapshot()
    t = _ts(event.occurred_at)
    h = event_hash(event.event_id)
    if isinstance(event, ErasureRequested):
        # Never too late, never undone: it wipes everything and leaves a tombstone without PII.
        if snap.erased_at and t <= snap.erased_at:
            return snap, Applied.DUPLICATE
        erased_at = max(t, snap.erased_at)
        return Snapshot(erased_at=erased_at, last_event_at=erased_at), Applied.APPLIED
    if snap.erased_at and t <= snap.erased_at + lateness_s:
        # Events up to the lateness bound after the erasure could have arrived before it and been
        # wiped; ignoring them here too keeps the result independent of arrival order.
        return snap, Applied.ERASED
    if not snap.customer_id and isinstance(event, Outcome):
        return snap, Applied.IGNORED
    if snap.last_event_at and t < snap.last_event_at - lateness_s:
        return snap, Applied.TOO_LATE
    if h in snap.seen:
        return snap, Applied.DUPLICATE

    if not snap.customer_id:
        snap.customer_id = event.customer_id
        snap.first_seen = t
    elif t < snap.first_seen:
        snap.first_seen = t
    snap.seen[h] = t
    snap.events_applied += 1
    key = (t, h)
    kind = type(event)
    _APPLY[kind](snap, event, key, t // DAY, hasher)

    describe = _DESCRIBE.get(kind)
    if describe is not None and key > (snap.last_interaction_at, snap.last_interaction_key):
        snap.last_interaction_at = t
        snap.last_interaction_key = h
        snap.last_interaction = describe(event)

    if t > snap.last_event_at:
        previous = snap.last_event_at
        snap.last_event_at = t
        _prune(snap, lateness_s, previous)
    return snap, Applied.APPLIED


# One function per event type, looked up by the event's class: a chain of isinstance checks cost
# more than the work of the common events (usage, orders) it dispatched.


def _profile(snap: Snapshot, event: CustomerProfile, key: tuple[int, int], day: int, hasher: IdentityHasher) -> None:
    if key > snap.profile_key:
        snap.profile_key = key
        snap.segment = event.segment
        snap.profile_plan = event.plan
        snap.acquisition_cost = event.acquisition_cost
        snap.signup_day = event.signup_date.toordinal() - _EPOCH_ORDINAL if event.signup_date else None
        snap.company_size = event.company_size
        snap.consent = event.automated_decision_consent
        snap.phone_keys = sorted({k for k in map(hasher.phone_key, event.phones) if k})
        snap.email_keys = sorted({k for k in map(hasher.email_key, event.emails) if k})


def _order(snap: Snapshot, event: OrderPlaced, key: tuple[int, int], day: int, hasher: IdentityHasher) -> None:
    cents = _cents(event.amount)
    snap.orders_total += 1
    snap.revenue_cents += cents
    if event.margin is not None:
        snap.margin_cents += _cents(event.margin)
    else:
        snap.unmargined_cents += cents
    _bump(snap.days, day, B.ORDERS, 1)
    _bump(snap.days, day, B.REVENUE_CENTS, cents)
    # The earliest and the two latest distinct order times: a min and a top-2 of a set, so order-free.
    t = key[0]
    if not snap.first_order_at or t < snap.first_order_at:
        snap.first_order_at = t
    if t > snap.last_order_at:
        snap.prev_order_at = snap.last_order_at
        snap.last_order_at = t
    elif snap.prev_order_at < t < snap.last_order_at:
        snap.prev_order_at = t


def _payment(snap: Snapshot, event: Payment, key: tuple[int, int], day: int, hasher: IdentityHasher) -> None:
    if event.status != "due":
        snap.payments_total += 1
    if event.status == "late":
        snap.late_payments_total += 1
        _bump(snap.days, day, B.LATE_PAYMENTS, 1)


def _subscription(
    snap: Snapshot, event: SubscriptionChanged, key: tuple[int, int], day: int, hasher: IdentityHasher
) -> None:
    days = snap.days
    delta = _cents(event.mrr_delta)
    snap.mrr_cents += delta
    _bump(days, day, B.MRR_DELTA_CENTS, delta)
    if event.change == "upgrade" or event.change == "add_on":
        snap.upgrades_total += 1
        _bump(days, day, B.UPGRADES, 1)
    elif event.change == "downgrade":
        snap.downgrades_total += 1
        _bump(days, day, B.DOWNGRADES, 1)
    if key > snap.sub_key:
        snap.sub_key = key
        snap.subscription = "cancelled" if event.change == "cancel" else "active"
        if event.plan:
            snap.sub_plan = event.plan


def _ticket_opened(snap: Snapshot, event: TicketOpened, key: tuple[int, int], day: int, hasher: IdentityHasher) -> None:
    snap.tickets_total += 1
    _bump(snap.days, day, B.TICKETS, 1)
    contacts = snap.contacts
    i = _CHANNEL_AT[event.channel] + _SEVERITY_AT[event.severity]
    if len(contacts) <= i:
        contacts.extend([0] * (i + 1 - len(contacts)))
    contacts[i] += 1
    if event.severity in _SEVERE:
        snap.severe_tickets_total += 1
        _bump(snap.days, day, B.SEVERE_TICKETS, 1)


def _ticket_resolved(
    snap: Snapshot, event: TicketResolved, key: tuple[int, int], day: int, hasher: IdentityHasher
) -> None:
    days = snap.days
    snap.tickets_resolved += 1
    _bump(days, day, B.SENTIMENT_SUM, round(event.sentiment * 100))
    _bump(days, day, B.SENTIMENT_N, 1)
    if not event.resolved:
        _bump(days, day, B.UNRESOLVED, 1)
    if event.csat is not None:
        snap.csat_sum += event.csat
        snap.csat_n += 1
    minutes = event.handling_minutes
    if isinstance(minutes, (int, float)):  # absent (UNSET) or null: not reported
        snap.timed_tickets += 1
        snap.handling_s += round(minutes * 60)


def _usage(snap: Snapshot, event: Usage, key: tuple[int, int], day: int, hasher: IdentityHasher) -> None:
    bucket = snap.days.get(day)
    if bucket is None:
        # the most common event on a new day: build the bucket in one go
        snap.days[day] = [0, 0, event.logins, event.features_used]
        return
    if len(bucket) <= B.FEATURES:
        bucket.extend([0] * (B.FEATURES + 1 - len(bucket)))
    bucket[B.LOGINS] += event.logins
    bucket[B.FEATURES] += event.features_used


def _nps(snap: Snapshot, event: NpsResponse, key: tuple[int, int], day: int, hasher: IdentityHasher) -> None:
    if key > snap.nps_key:
        snap.nps_key = key
        snap.nps = event.score


def _outcome(snap: Snapshot, event: Outcome, key: tuple[int, int], day: int, hasher: IdentityHasher) -> None:
    if key > snap.outcome_key:
        snap.outcome_key = key
        snap.outcome = event.outcome


def plan_of(snap: Snapshot) -> str:
    """The customer's current plan: from the newer of profile and subscription events."""
    if snap.sub_plan != "none" and snap.sub_key >= snap.profile_key:
        return snap.sub_plan
    return snap.profile_plan if snap.profile_plan != "none" else snap.sub_plan


def _prune(snap: Snapshot, lateness_s: int, previous_max: int) -> None:
    # Order-independent: what is kept depends only on the maximum event time seen.
    oldest_day = day_of(snap.last_event_at - lateness_s) - WINDOW_DAYS
    if oldest_day > day_of(previous_max - lateness_s) - WINDOW_DAYS or not previous_max:
        for d in [d for d in snap.days if d < oldest_day]:
            del snap.days[d]
    oldest_seen = snap.last_event_at - lateness_s
    if len(snap.seen) > 1:
        for h in [h for h, t in snap.seen.items() if t < oldest_seen]:
            del snap.seen[h]
    elif snap.seen:
        # the common case, one recent event: check it without building a list
        ((h, t),) = snap.seen.items()
        if t < oldest_seen:
            del snap.seen[h]


def _describe_order(event: OrderPlaced) -> str:
    return f"order placed ({event.amount:.0f} {event.currency})"


def _describe_payment(event: Payment) -> str:
    if event.status == "due":
        return "invoice issued"
    return "payment on time" if event.status == "paid" else f"late payment ({event.days_late} days)"


def _describe_subscription(event: SubscriptionChanged) -> str:
    return f"subscription {event.change.replace('_', '-')}"


def _describe_ticket_opened(event: TicketOpened) -> str:
    return f"{event.severity} {event.category} ticket opened via {event.channel}"


def _describe_ticket_resolved(event: TicketResolved) -> str:
    mood = "positive" if event.sentiment > 0.25 else "negative" if event.sentiment < -0.25 else "neutral"
    return f"ticket {'resolved' if event.resolved else 'closed unresolved'}, {mood} tone"


def _describe_usage(event: Usage) -> str:
    return "product usage"


def _describe_nps(event: NpsResponse) -> str:
    return f"NPS answer {event.score}/10"


def fold_all(
    events: list[CustomerEvent],
    *,
    lateness_s: int,
    hasher: IdentityHasher,
    snap: Snapshot | None = None,
) -> Snapshot | None:
    """Fold a sequence of events of one customer in the given order (used by replays and tests)."""
    for event in events:
        snap, _ = fold(snap, event, lateness_s=lateness_s, hasher=hasher)
    return snap


_SEVERE = frozenset({"high", "urgent"})
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_APPLY: dict[type, Callable[[Snapshot, Any, tuple[int, int], int, IdentityHasher], None]] = {
    CustomerProfile: _profile,
    OrderPlaced: _order,
    Payment: _payment,
    SubscriptionChanged: _subscription,
    TicketOpened: _ticket_opened,
    TicketResolved: _ticket_resolved,
    Usage: _usage,
    NpsResponse: _nps,
    Outcome: _outcome,
}
"""What each (non-erasure) event type does to the snapshot."""
_DESCRIBE: dict[type, Callable[[Any], str]] = {
    OrderPlaced: _describe_order,
    Payment: _describe_payment,
    SubscriptionChanged: _describe_subscription,
    TicketOpened: _describe_ticket_opened,
    TicketResolved: _describe_ticket_resolved,
    Usage: _describe_usage,
    NpsResponse: _describe_nps,
}
"""Plain words for the agent's card (no PII). Outcomes and profile changes are not interactions."""
