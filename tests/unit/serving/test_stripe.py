"""Stripe events -> the contract's subscription and payment events (pure mapping)."""

from __future__ import annotations

import time

import msgspec
import pytest

from router.errors import BadInput, Invalid
from router.serving.publisher import EventPublisher
from router.serving.signatures import sign_stripe
from router.serving.stripe import StripeMapper, StripeService, parse_rates
from router.settings import KafkaSettings, WebhookSettings
from schemas.events import Payment, SubscriptionChanged
from tests.support.vendors import (
    NOW,
    stripe_event,
    stripe_invoice,
    stripe_item,
    stripe_price,
    stripe_subscription,
)

MAPPER = StripeMapper(WebhookSettings(stripe_rates="USD=0.9"))


def mapped(event: dict) -> tuple[list, str | None]:
    _, _, events, ignored = MAPPER.map(msgspec.json.encode(event))
    return events, ignored


def one_subscription(event: dict) -> SubscriptionChanged:
    events, ignored = mapped(event)
    assert ignored is None and len(events) == 1
    (e,) = events
    assert isinstance(e, SubscriptionChanged)
    return e


def test_created_subscription_is_new_mrr_from_price_times_quantity() -> None:
    sub = stripe_subscription([stripe_item(stripe_price(2000), quantity=3)])
    e = one_subscription(stripe_event("customer.subscription.created", sub))
    assert (e.change, e.mrr_delta, e.plan) == ("new", 60.0, "Pro monthly")
    assert e.event_id == "stripe:evt_1NG8Du2eZvKYlo2CUI79vXWy" and e.customer_id == "cus_QXg1o8vcGmoR32"
    assert int(e.occurred_at.timestamp()) == NOW


def test_intervals_normalise_to_a_month_and_currencies_to_major_units() -> None:
    items = [
        stripe_item(stripe_price(120_000, interval="year")),  # 1200/yr -> 100/month
        stripe_item(stripe_price(3000, interval="month", interval_count=3)),  # 30 per quarter -> 10
        stripe_item(stripe_price(700, interval="week"), quantity=2),  # 14/week -> 60.88
        stripe_item(stripe_price(None)),  # tiered: no fixed amount
        stripe_item(stripe_price(5000, usage_type="metered")),  # billed on usage
        stripe_item(stripe_price(9900, recurring=False)),  # one-off
        stripe_item(None),  # missing price
        stripe_item(stripe_price(2500), quantity=0),  # zero quantity
    ]
    e = one_subscription(stripe_event("customer.subscription.created", stripe_subscription(items)))
    assert e.mrr_delta == pytest.approx(100 + 10 + 14 * 365.25 / 12 / 7, abs=0.01)
    yen = stripe_subscription([stripe_item(stripe_price(1000, currency="jpy"))], currency="jpy")
    with pytest.raises(Invalid, match="JPY has no rate"):
        mapped(stripe_event("customer.subscription.created", yen))
    jp = StripeMapper(WebhookSettings(stripe_currency="EUR", stripe_rates="JPY=0.0062,KWD=2.98"))
    _, _, (ev,), _ = jp.map(msgspec.json.encode(stripe_event("customer.subscription.created", yen)))
    assert ev.mrr_delta == pytest.approx(6.2)  # 1000 yen (no minor unit) at 0.0062
    kwd = stripe_subscription([stripe_item(stripe_price(10_000, currency="kwd"))], currency="kwd")
    _, _, (ev,), _ = jp.map(msgspec.json.encode(stripe_event("customer.subscription.created", kwd)))
    assert ev.mrr_delta == pytest.approx(29.8)  # 10.000 KWD (three decimals) at 2.98
    usd = stripe_subscription([stripe_item(stripe_price(1000, currency="usd"))], currency="usd")
    assert one_subscription(stripe_event("customer.subscription.created", usd)).mrr_delta == 9.0


def test_trial_counts_when_it_converts_and_not_when_it_ends_unpaid() -> None:
    trial = stripe_subscription(status="trialing", trial_end=NOW + 86_400)
    events, ignored = mapped(stripe_event("customer.subscription.created", trial))
    assert events == [] and ignored is not None and "trialing" in ignored
    converted = stripe_subscription(status="active", trial_end=NOW - 60)
    e = one_subscription(
        stripe_event("customer.subscription.updated", converted, previous={"status": "trialing"}, event_id="evt_2")
    )
    assert (e.change, e.mrr_delta) == ("new", 20.0)
    ended = stripe_subscription(status="canceled", trial_end=NOW + 86_400, ended_at=NOW)
    events, ignored = mapped(stripe_event("customer.subscription.deleted", ended))
    assert events == [] and "trial" in str(ignored)


def test_update_uses_previous_attributes_for_the_old_mrr() -> None:
    now = stripe_subscription([stripe_item(stripe_price(2000), quantity=5)])
    before = {"items": {"object": "list", "data": [stripe_item(stripe_price(2000), quantity=2)]}}
    e = one_subscription(stripe_event("customer.subscription.updated", now, previous=before))
    assert (e.change, e.mrr_delta) == ("upgrade", 60.0)
    down = stripe_subscription([stripe_item(stripe_price(1000), quantity=1)])
    e = one_subscription(stripe_event("customer.subscription.updated", down, previous=before))
    assert (e.change, e.mrr_delta) == ("downgrade", -30.0)


def test_update_without_mrr_change() -> None:
    sub = stripe_subscription(cancel_at_period_end=True)
    events, ignored = mapped(
        stripe_event("customer.subscription.updated", sub, previous={"cancel_at_period_end": False})
    )
    assert events == [] and ignored == "no change of MRR, status or billing period"
    # a new billing period on the items (API 2025-03-31): a renewal
    renewed = stripe_subscription([stripe_item(stripe_price(), period_start=NOW)])
    before = {"items": {"object": "list", "data": [stripe_item(stripe_price(), period_start=NOW - 30 * 86_400)]}}
    e = one_subscription(stripe_event("customer.subscription.updated", renewed, previous=before))
    assert (e.change, e.mrr_delta) == ("renewal", 0.0)
    # an update to canceled: the deleted event counts it
    events, ignored = mapped(
        stripe_event(
            "customer.subscription.updated", stripe_subscription(status="canceled"), previous={"status": "active"}
        )
    )
    assert events == [] and "deleted" in str(ignored)


def test_deleted_subscription_cancels_its_mrr() -> None:
    sub = stripe_subscription([stripe_item(stripe_price(4900))], status="canceled", ended_at=NOW)
    e = one_subscription(stripe_event("customer.subscription.deleted", sub))
    assert (e.change, e.mrr_delta) == ("cancel", -49.0)


def test_customer_id_from_metadata_then_expanded_customer_then_stripe_id() -> None:
    sub = stripe_subscription(metadata={"customer_id": "C000042"})
    assert one_subscription(stripe_event("customer.subscription.created", sub)).customer_id == "C000042"
    blank = stripe_subscription(metadata={"customer_id": "  "})  # blank means absent
    assert one_subscription(stripe_event("customer.subscription.created", blank)).customer_id.startswith("cus_")
    expanded = stripe_subscription(customer={"id": "cus_X", "object": "customer", "metadata": {"customer_id": "C7"}})
    assert one_subscription(stripe_event("customer.subscription.created", expanded)).customer_id == "C7"
    bad = stripe_subscription(metadata={"customer_id": "jane@example.com"})
    with pytest.raises(Invalid) as err:
        mapped(stripe_event("customer.subscription.created", bad))
    assert "jane" not in err.value.message
    nobody = stripe_subscription(customer=None)
    with pytest.raises(BadInput, match="no customer"):
        mapped(stripe_event("customer.subscription.created", nobody))


def test_invoice_paid_and_payment_succeeded_are_one_payment() -> None:
    inv = stripe_invoice(amount_paid=4900, subscription_metadata={"customer_id": "C000042"})
    (a,), _ = mapped(stripe_event("invoice.paid", inv, event_id="evt_paid"))
    (b,), _ = mapped(stripe_event("invoice.payment_succeeded", inv, event_id="evt_succeeded"))
    assert isinstance(a, Payment) and a == b
    assert (a.status, a.amount, a.customer_id, a.invoice_id) == ("paid", 49.0, "C000042", "in_1Pgc6tB7WZ01zgkWu9fdqL6I")


def test_invoice_paid_after_its_due_date_is_late() -> None:
    inv = stripe_invoice(due_date=NOW - 10 * 86_400 - 60, paid_at=NOW)
    (p,), _ = mapped(stripe_event("invoice.paid", inv))
    assert (p.status, p.days_late) == ("late", 11)


def test_failed_payment_is_late_once_per_attempt_and_zero_invoices_are_ignored() -> None:
    inv = stripe_invoice(amount_paid=0, amount_due=2000, paid_at=None, attempt_count=2)
    (p,), _ = mapped(stripe_event("invoice.payment_failed", inv))
    assert (p.status, p.amount, p.event_id) == ("late", 20.0, "stripe:in_1Pgc6tB7WZ01zgkWu9fdqL6I:failed:2")
    events, ignored = mapped(stripe_event("invoice.paid", stripe_invoice(amount_paid=0, amount_due=0)))
    assert events == [] and "zero-amount" in str(ignored)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not valid JSON"),
        (b'{"id": "evt_1", "type": "customer.subscription.created"}', "data.object"),
        (b'{"id": "", "type": "invoice.paid", "data": {"object": {}}}', "needs an id"),
        (b'{"id": "evt_1", "type": "invoice.paid", "data": {"object": {"id": 5}}}', "data.object"),
        (b'{"id": "evt_1", "type": "customer.subscription.created", "data": {"object": {"items": "x"}}}', "items"),
    ],
)
def test_malformed_events_get_a_400_naming_the_field(body: bytes, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        MAPPER.map(body)


def test_unmapped_types_are_acknowledged() -> None:
    _, kind, events, ignored = MAPPER.map(msgspec.json.encode(stripe_event("charge.succeeded", {"id": "ch_1"})))
    assert kind == "charge.succeeded" and events == [] and "not mapped" in str(ignored)


def test_rates_are_checked() -> None:
    assert parse_rates("eur", " usd=0.92 , GBP=1.17") == {"EUR": 1.0, "USD": 0.92, "GBP": 1.17}
    for spec in ("USD", "USD=x", "US=1", "USD=-1"):
        with pytest.raises(ValueError, match="entry 1"):
            parse_rates("EUR", spec)


async def test_an_amount_beyond_the_contract_is_refused_before_kafka() -> None:
    # The publisher has no broker: reaching it would raise Unavailable, not Invalid.
    hooks = WebhookSettings(stripe_secret="whsec_unit")
    service = StripeService(EventPublisher(KafkaSettings(bootstrap="")), hooks)
    huge = stripe_subscription([stripe_item(stripe_price(10**14))])  # a trillion EUR a month
    body = msgspec.json.encode(stripe_event("customer.subscription.created", huge))
    with pytest.raises(Invalid, match="subscription_changed event it maps to is out of range"):
        await service.receive(sign_stripe("whsec_unit", int(time.time()), body), body)


def test_every_mrr_added_is_what_the_deletion_subtracts() -> None:
    """Whatever path a subscription takes, its MRR sums to zero once Stripe deletes it."""
    seats = [stripe_item(stripe_price(2000), quantity=2)]
    more = [stripe_item(stripe_price(2000), quantity=5)]
    paths = [
        # (status, items) in order; the last is the deletion
        [("active", seats), ("active", more), ("canceled", more)],
        [("trialing", seats), ("active", seats), ("past_due", seats), ("unpaid", seats), ("canceled", seats)],
        [("trialing", seats), ("paused", seats), ("active", more), ("canceled", more)],
        [("incomplete", seats), ("active", seats), ("active", more), ("canceled", more)],
    ]
    for path in paths:
        total, before = 0.0, None
        for n, (status, items) in enumerate(path):
            last = n == len(path) - 1
            sub = stripe_subscription(items, status=status, ended_at=NOW if last else None)
            if n == 0:
                kind, previous = "customer.subscription.created", None
            elif last:
                kind, previous = "customer.subscription.deleted", None
            else:
                kind = "customer.subscription.updated"
                previous = {"status": before[0], "items": {"object": "list", "data": before[1]}}
            events, _ = mapped(stripe_event(kind, sub, previous=previous, event_id=f"evt_{n}"))
            total += sum(e.mrr_delta for e in events)
            before = (status, items)
        assert total == pytest.approx(0.0), path
