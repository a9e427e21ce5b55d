"""Stripe billing webhooks become the contract's subscription and payment events.

Stripe posts an ``Event`` (docs.stripe.com/api/events/object): ``id``, ``type``, ``created`` and
``data.object`` (a Subscription or an Invoice), with ``data.previous_attributes`` on ``*.updated``
events holding the old values of whatever changed. The mapping is stateless, so a retry maps the
same way, and every produced event's ``event_id`` derives from Stripe's ids: the consumer's
event-id de-duplication turns Stripe's retries (same event, new signature) into no-ops, and the
retry is answered 200 like the first delivery.

MRR is what a subscription bills per month while it is paying: each item's ``price.unit_amount``
x ``quantity`` normalised to a month (``recurring.interval`` / ``interval_count``), in major units
(``JPY`` has no minor unit, ``KWD`` three), converted to the configured currency by a fixed rate.
Metered and tiered prices have no fixed amount and count 0; an item without a price counts 0.

Statuses that pay: ``active``, ``past_due``, ``unpaid``, ``paused`` (the customer is still
subscribed; a failed payment is reported by ``invoice.payment_failed``). ``trialing`` and
``incomplete`` do not pay yet. The mapping sees one event at a time, so every MRR it adds must
be what a later ``deleted`` subtracts, and a deleted subscription no longer says which status it
had: that is why ``paused`` counts. The price: a subscription Stripe pauses because its trial
ended without a payment method counts as paying from then on, until it is deleted or resumes.

=========================================  ==================================================
``customer.subscription.created``          paying: ``new`` (+MRR); trial/incomplete: ignored
``customer.subscription.updated``          not paying -> paying (trial converted): ``new``;
                                           both paying: MRR up ``upgrade``, down ``downgrade``,
                                           equal with a new period ``renewal``, else ignored;
                                           -> ``canceled``: ignored (``deleted`` follows)
``customer.subscription.deleted``          ``cancel`` (-MRR); ended within its trial: ignored
``invoice.paid``, ``.payment_succeeded``   ``payment`` ``paid`` (``late`` after its due date);
                                           both name one invoice: one event id per invoice
``invoice.payment_failed``                 ``payment`` ``late``, one per failed attempt
=========================================  ==================================================

``cancel_at_period_end`` alone changes no MRR (ignored): the cancellation counts when Stripe
ends the subscription. Zero-amount invoices (trials) are ignored.
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from router.errors import BadInput, Forbidden, Invalid, Unauthorized, without_values
from router.ops import metrics
from router.serving.publisher import EventPublisher
from router.serving.signatures import SignatureError, verify_stripe
from router.settings import WebhookSettings
from schemas.api import ProducedEvent, StripeReceipt
from schemas.events import CustomerEvent, Payment, SubscriptionChanged, event_decoder, event_encoder

__all__ = ["StripeMapper", "StripeService", "parse_rates"]

_IDENTIFIER = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
_PAYING = frozenset({"active", "past_due", "unpaid", "paused"})
_PER_MONTH = {"day": 365.25 / 12, "week": 365.25 / 12 / 7, "month": 1.0, "year": 1 / 12}
# docs.stripe.com/currencies: zero-decimal and three-decimal currencies; every other has two.
_ZERO_DECIMAL = frozenset(
    ["BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF"]
)
_THREE_DECIMAL = frozenset(["BHD", "JOD", "KWD", "OMR", "TND"])
_SUBSCRIPTION_TYPES = frozenset(
    {"customer.subscription.created", "customer.subscription.updated", "customer.subscription.deleted"}
)
_INVOICE_TYPES = frozenset({"invoice.paid", "invoice.payment_succeeded", "invoice.payment_failed"})


# -- Stripe's objects, decoded leniently (unknown fields ignored, every field optional) ---------


class _Recurring(msgspec.Struct):
    interval: str | None = None
    interval_count: int | None = None
    usage_type: str | None = None


class _Price(msgspec.Struct):
    id: str | None = None
    currency: str | None = None
    unit_amount: int | None = None
    unit_amount_decimal: str | None = None
    recurring: _Recurring | None = None
    nickname: str | None = None
    lookup_key: str | None = None


class _Plan(msgspec.Struct):
    """The legacy shape of a price (``plan``), still sent beside ``price``."""

    id: str | None = None
    currency: str | None = None
    amount: int | None = None
    amount_decimal: str | None = None
    interval: str | None = None
    interval_count: int | None = None
    usage_type: str | None = None
    nickname: str | None = None


class _Item(msgspec.Struct):
    price: _Price | None = None
    plan: _Plan | None = None
    quantity: int | None = None
    current_period_start: int | None = None


class _Items(msgspec.Struct):
    data: list[_Item] = []


class _Customer(msgspec.Struct):
    """An expanded customer object (``customer`` is usually just its id)."""

    id: str | None = None
    metadata: dict[str, Any] | None = None


class _Subscription(msgspec.Struct):
    id: str | None = None
    customer: str | _Customer | None = None
    status: str | None = None
    currency: str | None = None
    items: _Items | None = None
    metadata: dict[str, Any] | None = None
    trial_end: int | None = None
    ended_at: int | None = None
    current_period_start: int | None = None


class _SubscriptionBefore(msgspec.Struct):
    """``previous_attributes`` of an update: only what changed, the old values."""

    status: str | msgspec.UnsetType | None = msgspec.UNSET
    items: _Items | msgspec.UnsetType | None = msgspec.UNSET
    current_period_start: int | msgspec.UnsetType | None = msgspec.UNSET


class _Transitions(msgspec.Struct):
    paid_at: int | None = None


class _SubscriptionDetails(msgspec.Struct):
    metadata: dict[str, Any] | None = None


class _Parent(msgspec.Struct):
    subscription_details: _SubscriptionDetails | None = None


class _Invoice(msgspec.Struct):
    id: str | None = None
    customer: str | _Customer | None = None
    currency: str | None = None
    amount_paid: int | None = None
    amount_due: int | None = None
    due_date: int | None = None
    created: int | None = None
    attempt_count: int | None = None
    status_transitions: _Transitions | None = None
    metadata: dict[str, Any] | None = None
    subscription_details: _SubscriptionDetails | None = None
    """Before API version 2025-03-31 the subscription's metadata sat here ..."""
    parent: _Parent | None = None
    """... since then under ``parent.subscription_details``."""


class _Data(msgspec.Struct):
    object: msgspec.Raw = msgspec.field(default_factory=lambda: msgspec.Raw(b"null"))
    previous_attributes: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    """Empty when absent."""


class _Event(msgspec.Struct):
    id: str = ""
    type: str = ""
    created: int | None = None
    data: _Data | None = None


_event_dec = msgspec.json.Decoder(_Event)
_sub_dec = msgspec.json.Decoder(_Subscription)
_before_dec = msgspec.json.Decoder(_SubscriptionBefore)
_invoice_dec = msgspec.json.Decoder(_Invoice)


def parse_rates(base: str, spec: str) -> dict[str, float]:
    """``USD=0.92,GBP=1.17`` -> currency -> value of one unit in ``base`` (``base`` itself is 1).

    Raises ``ValueError`` naming the bad entry.
    """
    rates = {base.strip().upper(): 1.0}
    for i, entry in enumerate(e.strip() for e in spec.split(",")):
        if not entry:
            continue
        code, sep, value = entry.partition("=")
        code = code.strip().upper()
        try:
            rate = float(value)
        except ValueError:
            rate = math.nan
        if not sep or not re.fullmatch(r"[A-Z]{3}", code) or not (0 < rate < 1e6):
            raise ValueError(f"ROUTER_WEBHOOKS_STRIPE_RATES entry {i + 1}: expected CUR=positive number")
        rates[code] = rate
    return rates


class StripeMapper:
    """Stripe event bytes -> the contract's events (pure: no I/O)."""

    def __init__(self, settings: WebhookSettings) -> None:
        self.customer_field = settings.stripe_customer_field
        self.currency = settings.stripe_currency.strip().upper()
        self.rates = parse_rates(self.currency, settings.stripe_rates)

    def map(self, body: bytes) -> tuple[str, str, list[CustomerEvent], str | None]:
        """(Stripe event id, type, events to produce, why nothing is produced or None)."""
        try:
            event = _event_dec.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise BadInput(f"stripe event: {_shape(exc)}") from None
        if not _IDENTIFIER.match(event.id) or event.data is None:
            raise BadInput("stripe event: needs an id (evt_...) and data.object")
        at = event.created if event.created is not None and event.created > 0 else int(time.time())
        if event.type in _SUBSCRIPTION_TYPES:
            events, ignored = self._subscription(event, at)
        elif event.type in _INVOICE_TYPES:
            events, ignored = self._invoice(event, at)
        else:
            events, ignored = [], f"event type {event.type or '(none)'} is not mapped"
        return event.id, event.type, events, ignored

    # -- subscriptions ---------------------------------------------------------------------------

    def _subscription(self, event: _Event, at: int) -> tuple[list[CustomerEvent], str | None]:
        assert event.data is not None
        sub = _decode(_sub_dec, event.data.object, "data.object")
        customer_id = self._customer_id(sub.customer, sub.metadata)
        now = self._mrr(sub)
        paying = sub.status in _PAYING
        change: Literal["new", "upgrade", "downgrade", "renewal", "cancel"]
        if event.type == "customer.subscription.created":
            if not paying:
                return [], f"subscription is {sub.status or 'without status'}: its MRR counts once it pays"
            change, delta = "new", now
        elif event.type == "customer.subscription.deleted":
            ended = sub.ended_at or at
            if sub.trial_end is not None and ended <= sub.trial_end:
                return [], "subscription ended within its trial: it never paid"
            # what it billed until it ended (its status now says "canceled")
            change, delta = "cancel", -self._mrr(msgspec.structs.replace(sub, status="active"))
        else:
            raw_before = event.data.previous_attributes
            before = _decode(_before_dec, raw_before, "data.previous_attributes") if len(raw_before) else None
            old = _SubscriptionBefore() if before is None else before
            was_status = sub.status if old.status is msgspec.UNSET else old.status
            was_paying = was_status in _PAYING
            if sub.status == "canceled":
                return [], "subscription canceled: counted by customer.subscription.deleted"
            if not paying:
                return [], f"subscription is {sub.status or 'without status'}: no MRR"
            if not was_paying:
                change, delta = "new", now
            else:
                previous = sub if old.items is msgspec.UNSET else msgspec.structs.replace(sub, items=old.items)
                delta = round(now - self._mrr(msgspec.structs.replace(previous, status=sub.status)), 2)
                if delta > 0:
                    change = "upgrade"
                elif delta < 0:
                    change = "downgrade"
                elif old.current_period_start is not msgspec.UNSET or _items_period_moved(sub, old):
                    change = "renewal"
                else:
                    return [], "no change of MRR, status or billing period"
        plan = _plan_name(sub)
        out = SubscriptionChanged(
            event_id=f"stripe:{event.id}",
            customer_id=customer_id,
            occurred_at=_when(at),
            change=change,
            plan=plan,
            mrr_delta=delta,
        )
        return [out], None

    def _mrr(self, sub: _Subscription) -> float:
        """Monthly recurring revenue of ``sub`` in the configured currency (0 when it does not pay)."""
        if sub.status not in _PAYING or sub.items is None:
            return 0.0
        total = 0.0
        for item in sub.items.data:
            amount, currency, interval, count, usage = _price_terms(item)
            if amount is None or interval not in _PER_MONTH or usage == "metered":
                continue
            quantity = 1 if item.quantity is None else max(0, item.quantity)
            per_month = amount * quantity * _PER_MONTH[interval] / max(1, count)
            total += self._major(per_month, currency or sub.currency)
        return round(total, 2)

    # -- invoices --------------------------------------------------------------------------------

    def _invoice(self, event: _Event, at: int) -> tuple[list[CustomerEvent], str | None]:
        assert event.data is not None
        inv = _decode(_invoice_dec, event.data.object, "data.object")
        if inv.id is None or not _IDENTIFIER.match(inv.id):
            raise BadInput("stripe event: data.object.id must be the invoice id (in_...)")
        metadata = {
            **(
                (inv.parent.subscription_details.metadata or {})
                if inv.parent and inv.parent.subscription_details
                else {}
            ),
            **((inv.subscription_details.metadata or {}) if inv.subscription_details else {}),
            **(inv.metadata or {}),
        }
        customer_id = self._customer_id(inv.customer, metadata)
        if event.type == "invoice.payment_failed":
            due = inv.amount_due or 0
            start = inv.due_date or inv.created or at
            payment = Payment(
                event_id=f"stripe:{inv.id}:failed:{inv.attempt_count or 0}",
                customer_id=customer_id,
                occurred_at=_when(at),
                invoice_id=inv.id,
                amount=self._major(max(0, due), inv.currency),
                status="late",
                days_late=min(3650, max(0, (at - start) // 86_400)),
            )
            return [payment], None
        paid = inv.amount_paid or 0
        if paid <= 0:
            return [], "zero-amount invoice (trial or fully credited)"
        paid_at = (inv.status_transitions.paid_at if inv.status_transitions else None) or at
        late_days = math.ceil((paid_at - inv.due_date) / 86_400) if inv.due_date else 0
        payment = Payment(
            # invoice.paid and invoice.payment_succeeded both announce this payment: one event id.
            event_id=f"stripe:{inv.id}:paid",
            customer_id=customer_id,
            occurred_at=_when(paid_at),
            invoice_id=inv.id,
            amount=self._major(paid, inv.currency),
            status="late" if late_days > 0 else "paid",
            days_late=min(3650, late_days) if late_days > 0 else 0,
        )
        return [payment], None

    # -- shared ----------------------------------------------------------------------------------

    def _major(self, minor: float, currency: str | None) -> float:
        code = (currency or self.currency).upper()
        rate = self.rates.get(code)
        if rate is None:
            raise Invalid(
                f"stripe event: currency {code[:3]} has no rate to {self.currency} (set ROUTER_WEBHOOKS_STRIPE_RATES)"
            )
        unit = 1.0 if code in _ZERO_DECIMAL else 1000.0 if code in _THREE_DECIMAL else 100.0
        return round(minor / unit * rate, 2)

    def _customer_id(self, customer: str | _Customer | None, metadata: dict[str, Any] | None) -> str:
        candidates: list[Any] = [(metadata or {}).get(self.customer_field)]
        if isinstance(customer, _Customer):
            candidates.append((customer.metadata or {}).get(self.customer_field))
            candidates.append(customer.id)
        else:
            candidates.append(customer)
        for value in candidates:
            if isinstance(value, str) and value.strip():
                if not _IDENTIFIER.match(value.strip()):
                    raise Invalid(
                        f"stripe event: customer id (metadata {self.customer_field} or customer) is not a valid "
                        "identifier (1-128 of A-Z a-z 0-9 _ . : -)"
                    )
                return value.strip()
        raise BadInput(f"stripe event: no customer (data.object.customer or metadata {self.customer_field})")


def _decode(decoder: msgspec.json.Decoder[Any], raw: msgspec.Raw, where: str) -> Any:
    try:
        return decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise BadInput(f"stripe event {where}: {_shape(exc)}") from None


def _shape(exc: Exception) -> str:
    return without_values(str(exc)) if isinstance(exc, msgspec.ValidationError) else "not valid JSON"


def _price_terms(item: _Item) -> tuple[float | None, str | None, str | None, int, str | None]:
    """(amount in minor units, currency, interval, interval count, usage type) of an item."""
    p = item.price
    if p is not None:
        amount = float(p.unit_amount) if p.unit_amount is not None else _decimal(p.unit_amount_decimal)
        r = p.recurring
        if r is None:
            return None, p.currency, None, 1, None  # a one-off price is no recurring revenue
        return amount, p.currency, r.interval, r.interval_count or 1, r.usage_type
    legacy = item.plan
    if legacy is not None:
        amount = float(legacy.amount) if legacy.amount is not None else _decimal(legacy.amount_decimal)
        return amount, legacy.currency, legacy.interval, legacy.interval_count or 1, legacy.usage_type
    return None, None, None, 1, None


def _decimal(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) and value >= 0 else None


def _items_period_moved(sub: _Subscription, old: _SubscriptionBefore) -> bool:
    """Since API version 2025-03-31 the billing period sits on the items."""
    if old.items is msgspec.UNSET or old.items is None or sub.items is None:
        return False
    before = [i.current_period_start for i in old.items.data]
    after = [i.current_period_start for i in sub.items.data]
    return before != after and any(s is not None for s in after)


def _plan_name(sub: _Subscription) -> str | None:
    for item in sub.items.data if sub.items else []:
        p = item.price
        for name in (p.nickname, p.lookup_key, p.id) if p else ():
            if name:
                return name[:64]
        if item.plan is not None:
            for name in (item.plan.nickname, item.plan.id):
                if name:
                    return name[:64]
    return None


def _when(ts: int) -> datetime:
    return datetime.fromtimestamp(min(max(ts, 0), 253_402_300_799), UTC)


class StripeService:
    """Verify, map and produce (acks=all) one Stripe event; 200 only once Kafka has the events."""

    def __init__(self, publisher: EventPublisher, settings: WebhookSettings) -> None:
        self.publisher = publisher
        self.settings = settings
        self.mapper = StripeMapper(settings)

    async def receive(self, signature: str | None, body: bytes) -> StripeReceipt:
        secret = self.settings.stripe_secret
        if not secret:
            raise Forbidden("stripe webhook is not configured on this service (no signing secret)")
        try:
            verify_stripe(secret, signature, body, now=time.time(), tolerance_s=self.settings.max_age_s)
        except SignatureError as exc:
            metrics.WEBHOOK_SIGNATURE_FAILURES.labels(exc.reason).inc()
            raise Unauthorized(f"stripe webhook: {exc.message}") from None
        stripe_id, kind, events, ignored = self.mapper.map(body)
        for event in events:
            _within_contract(event)
        if events:
            await self.publisher.publish_many(events)
        metrics.INBOUND_EVENTS.labels("stripe", "produced" if events else "ignored").inc(max(1, len(events)))
        produced = [ProducedEvent(event_id=e.event_id, type=_tag(e)) for e in events]
        return StripeReceipt(stripe_event_id=stripe_id, type=kind, produced=produced, ignored=ignored)


def _within_contract(event: CustomerEvent) -> None:
    """What the consumer will accept: a Struct built in code skips the contract's range checks."""
    try:
        event_decoder.decode(event_encoder.encode(event))
    except msgspec.ValidationError as exc:
        raise Invalid(
            f"stripe event: the {_tag(event)} event it maps to is out of range: {without_values(str(exc))}"
        ) from None


def _tag(event: CustomerEvent) -> str:
    tag = type(event).__struct_config__.tag
    return str(tag)
