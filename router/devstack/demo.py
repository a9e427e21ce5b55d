"""A synthetic subscription business: seeded, reproducible customer event streams.

Every customer carries a hidden *health* that drifts day by day. Health drives what the
business can observe (logins, feature breadth, late payments, ticket load and severity,
sentiment, NPS, upgrades and downgrades), and low health makes the customer decide to
leave; a leaving customer's usage fades and complaints pile up for a few weeks before the
cancellation arrives. A small share of customers cancels without warning. So churn is
learnable from the event stream but not trivially.

Value varies by orders of magnitude: many consumer and small-business accounts, a few
enterprise contracts worth tens of thousands a month.

The same simulation backs three uses: :func:`generate_history` (an iterator of events,
globally sorted by ``occurred_at``), :func:`write_jsonl` (``router generate``), and
:func:`produce_demo` (backfill to Kafka, then live traffic for the same population).
"""

from __future__ import annotations

import asyncio
import heapq
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Literal

import msgspec

from router.settings import Settings
from schemas.events import (
    CustomerEvent,
    CustomerProfile,
    NpsResponse,
    OrderPlaced,
    Outcome,
    Payment,
    SubscriptionChanged,
    TicketOpened,
    TicketResolved,
    Usage,
    event_encoder,
)

__all__ = ["Population", "generate_history", "produce_demo", "with_progress", "write_jsonl"]

DAY = 86_400
Segment = Literal["consumer", "smb", "mid_market", "enterprise"]


@dataclass(frozen=True, slots=True)
class _SegmentSpec:
    share: float
    plans: tuple[tuple[str, float], ...]
    """Plan ladder (name, list MRR), cheapest first: upgrades and downgrades move along it."""
    price_sigma: float
    """Log-normal spread of negotiated prices around list price."""
    annual: float
    """Share of customers on annual contracts (renewal events, outcome 'renewed')."""
    logins: float
    """Mean logins per day at neutral health (a whole company for business segments)."""
    breadth: int
    """Number of product features a healthy account uses."""
    tickets: float
    """Tickets per day at neutral health."""
    orders: float
    """One-off orders (services, hardware, extra seats) per day."""
    order_mu: float
    """log mean of an order amount."""
    churn: float
    """Multiplier on the hazard of deciding to leave."""
    cac: tuple[float, float]
    size: tuple[int, int]
    channels: tuple[Literal["email", "phone", "chat", "web", "social"], ...]


_SEGMENTS: dict[Segment, _SegmentSpec] = {
    "consumer": _SegmentSpec(
        0.46,
        (("consumer-basic", 9.0), ("consumer-plus", 19.0), ("consumer-family", 29.0)),
        0.0,
        0.0,
        0.8,
        6,
        0.010,
        0.010,
        3.4,
        1.5,
        (20, 90),
        (1, 1),
        ("email", "chat", "web", "social"),
    ),
    "smb": _SegmentSpec(
        0.36,
        (("smb-starter", 49.0), ("smb-team", 129.0), ("smb-business", 299.0)),
        0.15,
        0.2,
        4.0,
        12,
        0.020,
        0.015,
        5.3,
        1.0,
        (150, 900),
        (2, 60),
        ("email", "chat", "phone", "web"),
    ),
    "mid_market": _SegmentSpec(
        0.14,
        (("growth", 690.0), ("scale", 1490.0), ("scale-plus", 2900.0)),
        0.3,
        0.6,
        25.0,
        20,
        0.045,
        0.020,
        7.6,
        0.65,
        (2_000, 12_000),
        (60, 1_500),
        ("email", "phone", "web"),
    ),
    "enterprise": _SegmentSpec(
        0.04,
        (("enterprise", 6000.0), ("enterprise-plus", 14000.0), ("enterprise-global", 30000.0)),
        0.45,
        0.9,
        160.0,
        30,
        0.12,
        0.030,
        9.5,
        0.4,
        (20_000, 120_000),
        (1_500, 80_000),
        ("phone", "email"),
    ),
}
_SEGMENT_ORDER: tuple[Segment, ...] = ("consumer", "smb", "mid_market", "enterprise")
_CATEGORIES = ("technical", "billing", "account", "how_to", "feature_request", "outage", "integration")
_FIRST = (
    "lena",
    "jonas",
    "mia",
    "paul",
    "emma",
    "noah",
    "amelia",
    "oliver",
    "ava",
    "liam",
    "sofia",
    "ben",
    "hannah",
    "lukas",
    "grace",
    "jack",
    "chloe",
    "ethan",
    "marie",
    "felix",
)
_LAST = (
    "schmidt",
    "mueller",
    "fischer",
    "weber",
    "smith",
    "jones",
    "taylor",
    "brown",
    "johnson",
    "garcia",
    "miller",
    "davis",
    "wagner",
    "becker",
    "evans",
    "walker",
    "wright",
    "hoffmann",
    "koch",
    "clark",
)
_COMPANY = (
    "acme",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "stark",
    "wayne",
    "wonka",
    "tyrell",
    "cyberdyne",
    "soylent",
    "vandelay",
    "massive",
    "aperture",
    "monarch",
    "nakatomi",
    "oceanic",
    "dunder",
    "pied",
    "gringotts",
)
_COMPANY_SUFFIX = ("gmbh", "ltd", "inc", "ag", "llc", "plc", "co")


# --- fictional phone numbers -------------------------------------------------------------
# Only ranges set aside for drama and documentation: German 030 23125xxx and friends,
# Ofcom's 020 7946 0xxx / 0113 496 0xxx / 07700 900xxx, and North American 555-01xx.

_DE_RANGES = (("30", "23125"), ("40", "66969"), ("69", "90009"), ("89", "99998"))
_UK_RANGES = (
    ("20", "7946 0"),
    ("113", "496 0"),
    ("161", "496 0"),
    ("117", "496 0"),
    ("121", "496 0"),
    ("7700", "900"),
)
_US_AREAS = tuple(a for a in range(201, 990) if a % 100 // 10 != 9 and a % 100 != 11)


def _phone(country: str, k: int, style: int) -> str:
    """The ``k``-th fictional number of ``country`` in notation ``style`` (0..4)."""
    if country == "DE":
        area, sub = _DE_RANGES[k // 1000 % len(_DE_RANGES)]
        ext = f"{k % 1000:03d}"
        return (
            f"+49 {area} {sub}{ext}",
            f"0{area} {sub}{ext}",
            f"+49 (0){area} {sub}-{ext}",
            f"0049 {area} {sub} {ext}",
            f"0{area}/{sub}{ext}",
        )[style % 5]
    if country == "UK":
        area, prefix = _UK_RANGES[k // 1000 % len(_UK_RANGES)]
        local = f"{prefix}{k % 1000:03d}"
        return (
            f"+44 {area} {local}",
            f"+44 (0){area} {local}",
            f"0044 {area} {local.replace(' ', '')}",
            f"+44{area}{local.replace(' ', '')}",
            f"+44 {area} {local}",
        )[style % 5]
    area_code = _US_AREAS[k // 100 % len(_US_AREAS)]
    line = f"01{k % 100:02d}"
    return (
        f"+1 ({area_code}) 555-{line}",
        f"+1-{area_code}-555-{line}",
        f"001 {area_code} 555 {line}",
        f"+1 {area_code}.555.{line}",
        f"+1 {area_code} 555 {line}",
    )[style % 5]


_POOL_SIZE = {"DE": 1000 * len(_DE_RANGES), "UK": 1000 * len(_UK_RANGES), "US": 100 * len(_US_AREAS)}


class _PhoneBook:
    """Hands out distinct fictional numbers per country (reused only once a pool runs dry)."""

    def __init__(self, rng: random.Random) -> None:
        self._order = {c: rng.sample(range(n), n) for c, n in _POOL_SIZE.items()}
        self._next = dict.fromkeys(_POOL_SIZE, 0)

    def take(self, country: str) -> int:
        i = self._next[country]
        self._next[country] = i + 1
        order = self._order[country]
        return order[i % len(order)]


# --- one customer ------------------------------------------------------------------------


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


_TABLE_RNG = random.Random(0x5EED)
_NORMALS = tuple(_TABLE_RNG.gauss(0.0, 1.0) for _ in range(8192))


def _normal(rand: Callable[[], float]) -> float:
    """A standard normal draw from a fixed table: ~10x cheaper than ``Random.gauss``."""
    return _NORMALS[int(rand() * 8192.0)]


def _between(rand: Callable[[], float], lo: int, hi: int) -> int:
    """Uniform integer in ``[lo, hi]`` (``Random.randint`` without its overhead)."""
    return lo + int(rand() * (hi - lo + 1))


def _count(rng: random.Random, mean: float) -> int:
    """A cheap Poisson-like count: exact for small means, normal approximation above."""
    if mean <= 0.0:
        return 0
    if mean < 12.0:
        limit, k, p = math.exp(-mean), 0, rng.random()
        while p > limit:
            k += 1
            p *= rng.random()
        return k
    return max(0, round(mean + math.sqrt(mean) * _normal(rng.random)))


class _Customer:
    __slots__ = (
        "annual",
        "bill_anchor",
        "breadth",
        "cac",
        "cid",
        "country",
        "emails",
        "first_day",
        "gone",
        "h",
        "idx",
        "leave_day",
        "leave_len",
        "leaving",
        "mrr",
        "mu",
        "n",
        "payer",
        "phones",
        "plan_i",
        "rng",
        "segment",
        "signup",
        "size",
        "spec",
        "started",
    )

    def __init__(self, idx: int, seed: int, start_day: int, end_day: int, book: _PhoneBook) -> None:
        rng = self.rng = random.Random(seed * 1_000_003 + idx)
        self.idx = idx
        self.cid = f"C{idx:06d}"
        u = rng.random()
        acc = 0.0
        segment: Segment = "consumer"
        for seg in _SEGMENT_ORDER:
            acc += _SEGMENTS[seg].share
            if u < acc:
                segment = seg
                break
        self.segment = segment
        spec = self.spec = _SEGMENTS[segment]
        self.plan_i = min(len(spec.plans) - 1, int(rng.random() ** 1.7 * len(spec.plans)))
        self.mrr = round(spec.plans[self.plan_i][1] * math.exp(spec.price_sigma * _normal(rng.random)), 2)
        self.annual = rng.random() < spec.annual
        lo, hi = spec.size
        self.size = lo if lo == hi else int(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        self.cac = round(rng.uniform(*spec.cac), 2)
        self.breadth = max(2, round(spec.breadth * rng.uniform(0.6, 1.2)))
        # Hidden state: long-run health ``mu`` (drifts, takes shocks) and today's health ``h``.
        self.mu = 0.7 + 0.6 * _normal(rng.random)
        self.h = self.mu + 0.4 * _normal(rng.random)
        self.payer = 0.8 * _normal(rng.random)
        if rng.random() < 0.55:  # existing customer at the start of the window
            self.signup = start_day - _between(rng.random, 20, 1500)
            self.first_day = start_day
        else:
            self.signup = self.first_day = _between(rng.random, start_day, max(start_day, end_day - 30))
        self.bill_anchor = self.signup % 30
        self.country = rng.choices(("DE", "UK", "US"), (0.45, 0.3, 0.25))[0]
        self.phones = [
            _phone(self.country, book.take(self.country), rng.randrange(5))
            for _ in range(1 if rng.random() < 0.6 else 2)
        ]
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        if segment == "consumer":
            domain = rng.choice(("mail.example", "post.example", "inbox.example.com"))
        else:
            domain = f"{rng.choice(_COMPANY)}-{rng.choice(_COMPANY_SUFFIX)}.example"
        self.emails = [f"{first}.{last}.{idx}@{domain}"]
        if segment != "consumer" and rng.random() < 0.5:
            self.emails.append(f"billing.{self.cid.lower()}@{domain}")
        self.n = 0
        self.started = False
        self.gone = False
        self.leaving = False
        self.leave_day = 0
        self.leave_len = 0

    def eid(self) -> str:
        self.n += 1
        return f"{self.cid}-{self.n:06d}"


def _at(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class Population:
    """The simulated customer base, advanced one day at a time.

    Events scheduled for later (ticket resolutions, late payments, outcomes) wait in a heap,
    so each day's batch is complete and sorted: concatenated batches are globally sorted.
    """

    def __init__(self, n_customers: int, start: datetime, end: datetime, seed: int) -> None:
        if n_customers < 1:
            raise ValueError("n_customers must be >= 1")
        self.start_ts = int(start.timestamp())
        self.day = self.start_ts // DAY
        end_day = max(self.day + 1, int(end.timestamp()) // DAY)
        self._book = _PhoneBook(random.Random(seed))
        self.customers = [_Customer(i + 1, seed, self.day, end_day, self._book) for i in range(n_customers)]
        self._future: list[tuple[int, int, CustomerEvent]] = []
        self._today: list[tuple[int, int, CustomerEvent]] = []
        self._day_end = 0
        self._seq = 0

    # The heap's tie-breaker keeps same-second events in the order they were scheduled.
    def _later(self, ts: int, event: CustomerEvent) -> None:
        self._seq += 1
        heapq.heappush(self._future, (ts, self._seq, event))

    def _emit(self, event: CustomerEvent) -> None:
        ts = int(event.occurred_at.timestamp())
        if ts < self._day_end:
            self._seq += 1
            self._today.append((ts, self._seq, event))
        else:
            self._later(ts, event)

    def next_day(self) -> list[CustomerEvent]:
        """Simulate the next day; return every event that happens in it, sorted by time."""
        day = self.day
        self.day += 1
        base = day * DAY
        end = self._day_end = base + DAY
        today = self._today = []
        for c in self.customers:
            if not c.gone and day >= c.first_day:
                self._simulate(c, day, base)
        future = self._future
        while future and future[0][0] < end:
            today.append(heapq.heappop(future))
        today.sort(key=lambda item: (item[0], item[1]))
        return [item[2] for item in today if item[0] >= self.start_ts]

    def _simulate(self, c: _Customer, day: int, base: int) -> None:
        rng = c.rng
        spec = c.spec
        cid = c.cid
        rand = rng.random

        emit = self._emit
        if not c.started:
            c.started = True
            # A window starting mid-day must still see every customer's first events.
            t0 = max(
                base + _between(rng.random, 8 * 3600, 11 * 3600),
                self.start_ts + _between(rng.random, 0, 3600),
            )
            emit(self._profile(c, t0))
            emit(
                SubscriptionChanged(
                    event_id=c.eid(),
                    customer_id=cid,
                    occurred_at=_at(t0 + 60),
                    change="new",
                    plan=spec.plans[c.plan_i][0],
                    mrr_delta=c.mrr,
                )
            )
            return

        # Health: mean-reverting around a drifting baseline, with rare shocks
        # (a reorganisation, a competitor's offer, a botched migration).
        normals = _NORMALS  # inlined _normal(): this loop runs once per customer and day
        c.mu += 0.012 * normals[int(rand() * 8192.0)]
        if rand() < 0.003:
            c.mu -= rng.uniform(0.5, 1.6)
        elif rand() < 0.002:
            c.mu += rng.uniform(0.3, 0.9)
        c.h += 0.05 * (c.mu - c.h) + 0.15 * normals[int(rand() * 8192.0)]
        tenure = day - c.signup
        he = c.h
        if c.leaving:
            progress = (day - c.leave_day) / c.leave_len
            he -= 2.2 * progress
            if rand() < 0.004:  # talked round by an account manager
                c.leaving = False
                c.mu += 0.5
                c.h += 0.8
            elif progress >= 1.0:
                self._cancel(c, base + _between(rng.random, 9 * 3600, 17 * 3600), emit)
                return
        else:
            hazard = 0.0011 * spec.churn * (1.8 if tenure < 120 else 1.0) * math.exp(-1.5 * c.h)
            if rand() < hazard:
                c.leaving = True
                c.leave_day = day
                c.leave_len = _between(rng.random, 20, 75)
            elif rand() < 0.00005 * spec.churn:  # sudden churn: budget cut, acquisition, insolvency
                self._cancel(c, base + _between(rng.random, 9 * 3600, 17 * 3600), emit)
                return

        weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
        # Usage, aggregated once a day (some days the producer's batch is missing).
        if rand() < 0.9:
            week = (1.25 if weekday >= 5 else 0.9) if c.segment == "consumer" else (0.25 if weekday >= 5 else 1.2)
            logins = _count(rng, spec.logins * week * math.exp(0.6 * he + 0.25 * normals[int(rand() * 8192.0)]))
            if logins or rand() < 0.3:
                used = min(c.breadth, _count(rng, c.breadth * _sigmoid(1.2 * he) * (1.0 if logins else 0.1)))
                emit(
                    Usage(
                        event_id=c.eid(),
                        customer_id=cid,
                        occurred_at=_at(base + 23 * 3600 + _between(rng.random, 0, 3000)),
                        logins=logins,
                        features_used=used,
                    )
                )

        # Billing every 30 days from signup; late payers are often unhappy ones.
        if tenure > 0 and (day - c.bill_anchor) % 30 == 0:
            t = base + 6 * 3600
            invoice = f"INV-{cid}-{tenure // 30:03d}"
            emit(
                Payment(
                    event_id=c.eid(),
                    customer_id=cid,
                    occurred_at=_at(t),
                    invoice_id=invoice,
                    amount=c.mrr,
                    status="due",
                )
            )
            if rand() < _sigmoid(-2.6 + c.payer - 1.1 * he):
                late = 3 + int(rng.expovariate(1 / 9))
                tp = t + late * DAY + _between(rng.random, 0, 8 * 3600)
                emit(
                    Payment(
                        event_id=c.eid(),
                        customer_id=cid,
                        occurred_at=_at(tp),
                        invoice_id=invoice,
                        amount=c.mrr,
                        status="late",
                        days_late=late,
                    )
                )
                c.mu -= 0.05
            else:
                tp = t + _between(rng.random, 0, 2) * DAY + _between(rng.random, 3600, 10 * 3600)
                emit(
                    Payment(
                        event_id=c.eid(),
                        customer_id=cid,
                        occurred_at=_at(tp),
                        invoice_id=invoice,
                        amount=c.mrr,
                        status="paid",
                    )
                )
            if c.annual and tenure % 360 == 0:
                emit(
                    SubscriptionChanged(
                        event_id=c.eid(),
                        customer_id=cid,
                        occurred_at=_at(t + 3600),
                        change="renewal",
                        plan=spec.plans[c.plan_i][0],
                        mrr_delta=0.0,
                    )
                )
                emit(Outcome(event_id=c.eid(), customer_id=cid, occurred_at=_at(t + 7200), outcome="renewed"))

        # Support tickets: more, and more severe, when things go badly.
        if rand() < spec.tickets * math.exp(-0.8 * he) * (1.6 if c.leaving else 1.0):
            self._ticket(c, base, he, emit)

        # Rare events share one gate draw (thinning): most customer-days end here, cheaply.
        if rand() < _RARE_GATE:
            self._rare(c, base, he)

    def _rare(self, c: _Customer, base: int, he: float) -> None:
        """Orders, surveys, plan changes and profile updates; each check is scaled by the gate."""
        rng = c.rng
        rand = rng.random
        spec = c.spec
        cid = c.cid
        emit = self._emit
        g = 1.0 / _RARE_GATE

        # One-off orders.
        if rand() < g * spec.orders * math.exp(0.3 * he):
            t = base + _between(rng.random, 8 * 3600, 20 * 3600)
            amount = round(math.exp(spec.order_mu + 0.7 * _normal(rng.random)), 2)
            emit(
                OrderPlaced(
                    event_id=c.eid(),
                    customer_id=cid,
                    occurred_at=_at(t),
                    order_id=f"O-{cid}-{c.n}",
                    amount=amount,
                    margin=round(amount * rng.uniform(0.2, 0.6), 2) if rand() < 0.8 else None,
                    currency="GBP" if c.country == "UK" else "USD" if c.country == "US" else "EUR",
                )
            )

        # Surveys.
        if rand() < g * 0.004:
            t = base + _between(rng.random, 8 * 3600, 20 * 3600)
            score = max(0, min(10, round(7.2 + 1.7 * he + 1.3 * _normal(rng.random))))
            emit(NpsResponse(event_id=c.eid(), customer_id=cid, occurred_at=_at(t), score=score))

        # Expansion and contraction along the plan ladder.
        t = base + _between(rng.random, 9 * 3600, 18 * 3600)
        if not c.leaving and c.plan_i + 1 < len(spec.plans) and rand() < g * 0.0012 * math.exp(0.9 * (he - 0.5)):
            self._change_plan(c, t, +1, emit)
        elif not c.leaving and rand() < g * 0.0007 * math.exp(0.6 * he):
            delta = round(c.mrr * rng.uniform(0.05, 0.2), 2)
            c.mrr = round(c.mrr + delta, 2)
            emit(
                SubscriptionChanged(
                    event_id=c.eid(),
                    customer_id=cid,
                    occurred_at=_at(t),
                    change="add_on",
                    plan=spec.plans[c.plan_i][0],
                    mrr_delta=delta,
                )
            )
            emit(
                Outcome(
                    event_id=c.eid(),
                    customer_id=cid,
                    occurred_at=_at(t + _between(rng.random, 1, 5) * DAY),
                    outcome="upsold",
                )
            )
        elif c.plan_i > 0 and rand() < g * (0.012 if c.leaving else 0.0006 * math.exp(-1.1 * he)):
            self._change_plan(c, t, -1, emit)

        if rand() < g * 0.0015:  # profile maintenance: new contact number, company grew
            if rand() < 0.5 and len(c.phones) < 3:
                c.phones.append(_phone(c.country, self._book.take(c.country), rng.randrange(5)))
            if c.segment != "consumer":
                c.size = max(2, int(c.size * rng.uniform(0.9, 1.25)))
            t = base + _between(rng.random, 8 * 3600, 18 * 3600)
            emit(self._profile(c, t))

    def _profile(self, c: _Customer, ts: int) -> CustomerProfile:
        return CustomerProfile(
            event_id=c.eid(),
            customer_id=c.cid,
            occurred_at=_at(ts),
            segment=c.segment,
            plan=c.spec.plans[c.plan_i][0],
            phones=list(c.phones),
            emails=list(c.emails),
            acquisition_cost=c.cac,
            signup_date=date.fromordinal(_EPOCH_ORDINAL + c.signup),
            company_size=c.size,
            automated_decision_consent=c.idx % 17 != 0,
        )

    def _change_plan(self, c: _Customer, ts: int, step: int, emit: Callable[[CustomerEvent], None]) -> None:
        c.plan_i += step
        new_mrr = round(c.spec.plans[c.plan_i][1] * math.exp(c.spec.price_sigma * _normal(c.rng.random)), 2)
        new_mrr = max(new_mrr, c.mrr + 1) if step > 0 else min(new_mrr, c.mrr - 1)
        new_mrr = max(1.0, new_mrr)
        delta = round(new_mrr - c.mrr, 2)
        c.mrr = new_mrr
        emit(
            SubscriptionChanged(
                event_id=c.eid(),
                customer_id=c.cid,
                occurred_at=_at(ts),
                change="upgrade" if step > 0 else "downgrade",
                plan=c.spec.plans[c.plan_i][0],
                mrr_delta=delta,
            )
        )
        if step > 0:
            t = ts + _between(c.rng.random, 1, 5) * DAY
            emit(Outcome(event_id=c.eid(), customer_id=c.cid, occurred_at=_at(t), outcome="upsold"))
        else:
            c.mu -= 0.1

    def _ticket(self, c: _Customer, base: int, he: float, emit: Callable[[CustomerEvent], None]) -> None:
        rng = c.rng
        t = base + _between(rng.random, 7 * 3600, 21 * 3600)
        u = rng.random() + 0.12 * he
        severity: Literal["low", "normal", "high", "urgent"] = (
            "urgent" if u < 0.07 else "high" if u < 0.25 else "normal" if u < 0.8 else "low"
        )
        tid = f"T-{c.cid}-{c.n}"
        emit(
            TicketOpened(
                event_id=c.eid(),
                customer_id=c.cid,
                occurred_at=_at(t),
                ticket_id=tid,
                severity=severity,
                category=rng.choice(_CATEGORIES),
                channel=rng.choice(c.spec.channels),
            )
        )
        if rng.random() < 0.03 + (0.12 if c.leaving else 0.0):
            c.mu -= 0.15 if severity in ("high", "urgent") else 0.05
            return  # never closed: stays open
        hours = math.exp((1.5 if severity in ("high", "urgent") else 2.8) + 0.9 * _normal(rng.random)) * (
            1.0 + max(0.0, -he)
        )
        resolved = rng.random() < _sigmoid(1.6 + 0.8 * he)
        sentiment = max(-1.0, min(1.0, 0.35 * he - (0.45 if not resolved else 0.0) + 0.3 * _normal(rng.random)))
        csat = max(1, min(5, round(3.2 + 1.8 * sentiment + 0.6 * _normal(rng.random)))) if rng.random() < 0.6 else None
        tr = t + int(hours * 3600) + 60
        emit(
            TicketResolved(
                event_id=c.eid(),
                customer_id=c.cid,
                occurred_at=_at(tr),
                ticket_id=tid,
                severity=severity,
                sentiment=round(sentiment, 2),
                csat=csat,
                resolved=resolved,
            )
        )
        if not resolved:
            c.mu -= 0.25 if severity in ("high", "urgent") else 0.08

    def _cancel(self, c: _Customer, ts: int, emit: Callable[[CustomerEvent], None]) -> None:
        emit(
            SubscriptionChanged(
                event_id=c.eid(),
                customer_id=c.cid,
                occurred_at=_at(ts),
                change="cancel",
                plan=c.spec.plans[c.plan_i][0],
                mrr_delta=-c.mrr,
            )
        )
        t = ts + _between(c.rng.random, 0, 30) * DAY + 3600
        emit(Outcome(event_id=c.eid(), customer_id=c.cid, occurred_at=_at(t), outcome="churned"))
        c.gone = True
        c.mrr = 0.0


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_RARE_GATE = 0.1


# --- public entry points ------------------------------------------------------------------


def generate_history(
    n_customers: int, start: datetime, end: datetime, seed: int, *, every: int = 1
) -> Iterator[CustomerEvent]:
    """Yield the events of ``n_customers`` customers in ``[start, end)``, sorted by ``occurred_at``.

    Reproducible: the same arguments give the same events (ids included). ``every`` keeps only
    every k-th customer (C000001, C00000(1+k), ...): a customer's events depend only on the seed and
    its number, so the sample's events are exactly theirs in the whole history.
    """
    pop = Population(n_customers, start, end, seed)
    if every > 1:
        pop.customers = pop.customers[::every]
    yield from _batches(pop, int(end.timestamp()))


def with_progress(events: Iterable[CustomerEvent], start: datetime, end: datetime) -> Iterator[CustomerEvent]:
    """``events`` (sorted by time) unchanged, with a progress bar in simulated days on a terminal (tqdm)."""
    from tqdm import tqdm

    total = max(1, (end - start).days)
    start_ts = start.timestamp()
    with tqdm(total=total, desc="simulating", unit=" days", mininterval=0.5, disable=None) as bar:
        done = 0
        for event in events:
            day = min(total, int((event.occurred_at.timestamp() - start_ts) // DAY))
            if day > done:
                bar.update(day - done)
                done = day
            yield event
        bar.update(total - done)


def _batches(pop: Population, end_ts: int) -> Iterator[CustomerEvent]:
    while pop.day * DAY < end_ts:
        for event in pop.next_day():
            if int(event.occurred_at.timestamp()) >= end_ts:
                # Leave it for whoever continues this population (the live phase).
                pop._later(int(event.occurred_at.timestamp()), event)
                continue
            yield event


def write_jsonl(events: Iterable[CustomerEvent], out: str | Path | IO[bytes]) -> int:
    """Write events as JSON Lines (one ``schemas.events`` object per line); return the count."""
    if isinstance(out, (str, Path)):
        with open(out, "wb") as fh:
            return write_jsonl(events, fh)
    n = 0
    buf = bytearray()
    for event in events:
        event_encoder.encode_into(event, buf, len(buf))
        buf += b"\n"
        n += 1
        if len(buf) > 1 << 20:
            out.write(buf)
            buf.clear()
    out.write(buf)
    return n


def history_window(months: int, end: datetime | None = None) -> tuple[datetime, datetime]:
    """``(start, end)`` spanning ``months`` calendar months before ``end`` (midnight UTC)."""
    end = end or datetime(2026, 11, 1, tzinfo=UTC)
    y, m = divmod(end.year * 12 + end.month - 1 - months, 12)
    return end.replace(year=y, month=m + 1, day=min(end.day, 28)), end


async def produce_demo(
    settings: Settings,
    *,
    customers: int,
    history_days: int,
    rate: float,
    duration_s: float | None,
    seed: int,
) -> None:
    """Backfill ``history_days`` of history ending now, then emit live events at ``rate``/s.

    Records are keyed by customer id (all events of a customer in one partition, in order).
    Live events continue the same population, stamped with the wall-clock time of sending.
    Runs until ``duration_s`` of live traffic have passed (None: until cancelled).
    """
    from aiokafka import AIOKafkaProducer

    topic = settings.kafka.events_topic
    now = datetime.now(UTC)
    pop = Population(customers, now - timedelta(days=history_days), now, seed)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap,
        acks="all",
        linger_ms=20,
        max_batch_size=256 * 1024,
        max_request_size=4 * 1024 * 1024,
    )
    await producer.start()
    sent = 0
    try:
        started = last_report = time.monotonic()
        pending: list[asyncio.Future[object]] = []
        for event in _batches(pop, int(now.timestamp())):
            pending.append(await producer.send(topic, event_encoder.encode(event), key=event.customer_id.encode()))
            sent += 1
            if len(pending) >= 5_000:
                await asyncio.gather(*pending)
                pending.clear()
                if time.monotonic() - last_report > 3.0:
                    last_report = time.monotonic()
                    print(
                        f"demo: backfilled {sent:,} events ({sent / (last_report - started):,.0f}/s), "
                        f"at {_at(pop.day * DAY):%Y-%m-%d}",
                        file=sys.stderr,
                        flush=True,
                    )
        await asyncio.gather(*pending)
        print(
            f"demo: backfill done, {sent:,} events for {customers:,} customers in "
            f"{time.monotonic() - started:.1f}s; live at {rate:g} events/s",
            file=sys.stderr,
            flush=True,
        )
        if rate > 0:
            await _live(producer, topic, pop, rate, duration_s)
    finally:
        await producer.stop()


async def _live(producer: Any, topic: str, pop: Population, rate: float, duration_s: float | None) -> None:
    started = last_report = time.monotonic()
    live = 0
    while duration_s is None or time.monotonic() - started < duration_s:
        day = pop.next_day()
        if not day:  # the whole population has left: idle, but stay cancellable
            await asyncio.sleep(0.5)
            continue
        for event in day:
            elapsed = time.monotonic() - started
            if duration_s is not None and elapsed >= duration_s:
                break
            wait = live / rate - elapsed
            if wait > 0:
                await asyncio.sleep(wait)
            stamped = msgspec.structs.replace(event, occurred_at=datetime.now(UTC))
            await producer.send(topic, event_encoder.encode(stamped), key=event.customer_id.encode())
            live += 1
            if time.monotonic() - last_report > 10.0:
                last_report = time.monotonic()
                print(f"demo: {live:,} live events", file=sys.stderr, flush=True)
    await producer.flush()
