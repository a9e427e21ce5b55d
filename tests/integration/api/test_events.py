"""Events over HTTP (POST /v1/events) and the Stripe adapter, on the real broker and consumer.

202 (or Stripe's 200) means Kafka has the events: the test reads them from the topic right after
the answer, then runs the real consumer and checks what it applied.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from router.devstack.infra import free_port
from router.settings import Settings
from tests.support.api_support import (
    auth,
    live_server,
    module_settings,
    stripe_request,
)
from tests.support.helpers import drain_topic, read_snapshot, running_consumer, state_store, wait_until_caught_up
from tests.support.vendors import NOW, stripe_event, stripe_invoice, stripe_item, stripe_price, stripe_subscription

BATCH_MAX = 6
BODY_MAX = 20_000


@pytest.fixture(scope="module")
def served(
    broker: str, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[httpx.Client, Settings]]:
    s = module_settings(
        broker, redis_server.url, "events", api={"events_batch_max": BATCH_MAX, "events_max_body_bytes": BODY_MAX}
    )
    with live_server(s, tmp_path_factory.mktemp("events") / "api.log") as client:
        yield client, s


def _at(days_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days_ago)).isoformat().replace("+00:00", "Z")


def _batch(cid: str) -> list[dict[str, Any]]:
    return [
        {"type": "customer_profile", "event_id": f"{cid}-p", "customer_id": cid, "occurred_at": _at(30),
         "segment": "mid_market", "plan": "team", "emails": ["ops@example.org"]},
        {"type": "subscription_changed", "event_id": f"{cid}-s", "customer_id": cid, "occurred_at": _at(29.9),
         "change": "new", "plan": "team", "mrr_delta": 490.0},
        {"type": "order_placed", "event_id": f"{cid}-o", "customer_id": cid, "occurred_at": _at(29.5),
         "order_id": "o-1", "amount": 120.0, "currency": "EUR"},
        {"type": "usage", "event_id": f"{cid}-u", "customer_id": cid, "occurred_at": _at(29.4), "logins": 12},
    ]  # fmt: skip


async def _applied(s: Settings, expected_records: int, customer_id: str) -> Any:
    async with running_consumer(s) as worker:
        await wait_until_caught_up(worker, s, expected_records)
    async with state_store(s) as store:
        return await read_snapshot(store, customer_id)


def test_a_batch_is_in_kafka_when_answered_and_the_consumer_applies_it(served: tuple[httpx.Client, Settings]) -> None:
    client, s = served
    events = _batch("HTTP1")
    r = client.post("/v1/events", json={"events": events}, headers=auth("events"))
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["accepted"] == 4
    assert [e["event_id"] for e in body["events"]] == [e["event_id"] for e in events]
    assert [e["type"] for e in body["events"]] == [e["type"] for e in events]
    # acknowledged before the answer: every record is readable now, keyed by customer
    records = asyncio.run(drain_topic(s, s.kafka.events_topic, 4, timeout=10))
    mine = [rec for rec in records if rec.key == b"HTTP1"]  # type: ignore[attr-defined]
    assert len(mine) == 4
    # a retry of the whole batch is harmless: the consumer skips event ids it applied
    assert client.post("/v1/events", json={"events": events}, headers=auth("events")).status_code == 202
    snap = asyncio.run(_applied(s, 8, "HTTP1"))
    assert snap is not None
    assert (snap.orders_total, snap.mrr_cents) == (1, 49_000)


def test_invalid_items_are_named_and_nothing_is_produced(served: tuple[httpx.Client, Settings]) -> None:
    client, s = served
    before = len(asyncio.run(drain_topic(s, s.kafka.events_topic, 0, timeout=2)))
    events = _batch("HTTP2")
    events[1] = {**events[1], "mrr_delta": "jane@example.org"}  # a value that must never be echoed
    events[2] = {"type": "erasure_requested", "event_id": "HTTP2-e", "customer_id": "HTTP2", "occurred_at": _at(1)}
    events[3] = {**events[3], "occurred_at": (datetime.now(UTC) + timedelta(days=3)).isoformat()}
    events.append(
        {"type": "nps_response", "event_id": "HTTP2-n", "customer_id": "HTTP2", "occurred_at": _at(1), "score": 11}
    )
    r = client.post("/v1/events", json={"events": events}, headers=auth("events"))
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == "bad_request" and "nothing produced" in body["detail"]
    problems = {p["index"]: p["problem"] for p in body["items"]}
    assert sorted(problems) == [1, 2, 3, 4]
    assert "mrr_delta" in problems[1] and "erasure" in problems[2]
    assert "future" in problems[3] and "score" in problems[4]
    assert "jane@example.org" not in r.text
    after = len(asyncio.run(drain_topic(s, s.kafka.events_topic, 0, timeout=2)))
    assert after == before


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (b'{"events": []}', 400, "at least one"),
        (b'{"events": "all of them"}', 400, "events"),
        (b'{"items": []}', 400, "body"),
        (b"[1, 2]", 400, "body"),
        (b'{"events": [', 400, "JSON"),
    ],
)
def test_malformed_batches(served: tuple[httpx.Client, Settings], body: bytes, status: int, detail: str) -> None:
    client, _ = served
    r = client.post("/v1/events", content=body, headers={**auth("events"), "content-type": "application/json"})
    assert r.status_code == status and detail in r.json()["detail"], r.text


def test_limits_and_scope(served: tuple[httpx.Client, Settings]) -> None:
    client, _ = served
    events = [{**_batch("HTTP3")[3], "event_id": f"HTTP3-u{i}"} for i in range(BATCH_MAX + 1)]
    r = client.post("/v1/events", json={"events": events}, headers=auth("events"))
    assert r.status_code == 400 and f"at most {BATCH_MAX}" in r.json()["detail"]
    r = client.post("/v1/events", json={"events": [{"pad": "x" * BODY_MAX}]}, headers=auth("events"))
    assert r.status_code == 413
    good = {"events": _batch("HTTP4")[:1]}
    assert client.post("/v1/events", json=good).status_code == 401
    assert client.post("/v1/events", json=good, headers=auth("telephony")).status_code == 403
    assert client.post("/v1/events", json=good, headers=auth("admin")).status_code == 403
    # the events key does nothing else
    r = client.post("/v1/classify", json={"customer": {"customer_id": "HTTP4"}}, headers=auth("events"))
    assert r.status_code == 403
    r = client.post("/v1/events", content=b"events=1", headers={**auth("events"), "content-type": "text/plain"})
    assert r.status_code == 415


# -- Stripe ----------------------------------------------------------------------------------------


def _stripe(client: httpx.Client, event: dict[str, Any], **kw: Any) -> httpx.Response:
    body, headers = stripe_request(event, **kw)
    return client.post("/v1/webhooks/stripe", content=body, headers=headers)


def test_stripe_events_become_contract_events_once(served: tuple[httpx.Client, Settings]) -> None:
    client, s = served
    meta = {"customer_id": "STRIPE1"}
    created = stripe_event(
        "customer.subscription.created",
        stripe_subscription([stripe_item(stripe_price(2500), quantity=2)], metadata=meta),
        event_id="evt_1SubCreated0001", created=NOW - 3600,
    )  # fmt: skip
    r = _stripe(client, created)
    assert r.status_code == 200, r.text
    assert r.json()["produced"] == [{"event_id": "stripe:evt_1SubCreated0001", "type": "subscription_changed"}]
    # Stripe retries the same event (new timestamp, new signature): answered 200 again, applied once
    r = _stripe(client, created, at=int(time.time()) + 5)
    assert r.status_code == 200 and r.json()["produced"][0]["event_id"] == "stripe:evt_1SubCreated0001"
    upgraded = stripe_event(
        "customer.subscription.updated",
        stripe_subscription([stripe_item(stripe_price(2500), quantity=3)], metadata=meta),
        previous={"items": {"object": "list", "data": [stripe_item(stripe_price(2500), quantity=2)]}},
        event_id="evt_1SubUpdated0001", created=NOW - 1800,
    )  # fmt: skip
    r = _stripe(client, upgraded)
    assert r.status_code == 200 and r.json()["produced"][0]["type"] == "subscription_changed"
    invoice = stripe_invoice(amount_paid=7500, amount_due=7500, subscription_metadata=meta)
    for kind, eid in (("invoice.paid", "evt_1InvPaid00001"), ("invoice.payment_succeeded", "evt_1InvOk0000001")):
        r = _stripe(client, stripe_event(kind, invoice, event_id=eid, created=NOW - 600))
        assert r.status_code == 200, r.text
    r = _stripe(client, stripe_event("charge.succeeded", {"id": "ch_3MmlLrLkdIwHu7ix0snN0B15", "object": "charge"}))
    assert r.status_code == 200 and r.json()["produced"] == [] and "not mapped" in r.json()["ignored"]
    # 2 x created, 1 upgrade, 2 payments with one event id: 5 records, 3 distinct events
    snap = asyncio.run(_applied(s, _records(s), "STRIPE1"))
    assert snap is not None
    assert snap.mrr_cents == 7_500  # 3 seats x 25 EUR, not counted twice
    assert snap.payments_total == 1 and snap.upgrades_total == 1


def _records(s: Settings) -> int:
    return len(asyncio.run(drain_topic(s, s.kafka.events_topic, 0, timeout=2)))


def test_stripe_refusals(served: tuple[httpx.Client, Settings]) -> None:
    client, _ = served
    event = stripe_event("customer.subscription.created", stripe_subscription(), event_id="evt_1Refused000001")
    r = _stripe(client, event, secret="whsec_someone_elses_endpoint")
    assert r.status_code == 401 and "does not match" in r.json()["detail"]
    r = _stripe(client, event, at=int(time.time()) - 3600)
    assert r.status_code == 401 and "from now" in r.json()["detail"]
    body, headers = stripe_request(event)
    del headers["Stripe-Signature"]
    assert client.post("/v1/webhooks/stripe", content=body, headers=headers).status_code == 401
    gbp = stripe_subscription([stripe_item(stripe_price(1000, currency="gbp"))], currency="gbp")
    r = _stripe(client, stripe_event("customer.subscription.created", gbp, event_id="evt_1Gbp0000000001"))
    assert r.status_code == 422 and "GBP has no rate" in r.json()["detail"]
    broken = stripe_event("customer.subscription.updated", stripe_subscription(), previous={"items": 7})
    r = _stripe(client, broken)
    assert r.status_code == 400 and "previous_attributes" in r.json()["detail"]


def test_no_202_without_kafka(broker: str, redis_server: Any, tmp_path: Path) -> None:
    s = module_settings(broker, redis_server.url, "events")
    s = msgspec.structs.replace(s, kafka=msgspec.structs.replace(s.kafka, bootstrap=f"127.0.0.1:{free_port()}"))
    with live_server(s, tmp_path / "api.log") as client:
        client.timeout = httpx.Timeout(30)
        r = client.post("/v1/events", json={"events": _batch("HTTP5")}, headers=auth("events"))
        assert r.status_code == 503, r.text
        assert "Kafka" in r.json()["detail"]
        r = _stripe(
            client, stripe_event("customer.subscription.created", stripe_subscription(), event_id="evt_1NoKafka000001")
        )
        assert r.status_code == 503
