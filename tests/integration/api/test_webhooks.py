"""Signed helpdesk webhooks and the telephony screen-pop against a real uvicorn process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from litestar.testing import AsyncTestClient

from router.api.app import create_app
from router.serving.webhooks import sign_generic
from router.settings import Settings
from tests.conftest import SettingsFactory
from tests.support.api_support import (
    GENERIC_SECRET,
    SMALL_PHONE,
    VIP_ID,
    api_settings,
    auth,
    generic_request,
    live_server,
    populate,
    population,
    zendesk_request,
)

TICKET = {"ticket": {"id": 4711, "priority": "normal", "channel": "voice", "category": "technical",
                     "requester": {"external_id": VIP_ID}, "subject": "ignored by the contract"}}  # fmt: skip


@pytest.fixture
def server(settings: SettingsFactory, tmp_path: Path) -> Iterator[tuple[Settings, httpx.Client, Path]]:
    s = api_settings(settings)
    asyncio.run(populate(s, population()))
    log = tmp_path / "api.log"
    with live_server(s, log) as client:
        yield s, client, log


def test_zendesk_webhook_signature_cases(server: tuple[Settings, httpx.Client, Path]) -> None:
    _, client, _ = server
    body, headers = zendesk_request(TICKET)
    r = client.post("/v1/webhooks/zendesk", content=body, headers=headers)
    assert r.status_code == 200, r.text
    routing = r.json()
    assert routing["group"] == "tech_senior" and routing["priority"] == "high"  # a VIP is at least high
    assert {"router_tier_vip", "router_role_senior_technician"} <= set(routing["tags"])
    assert routing["due_at"] and routing["decision_id"] and routing["degraded"] is False

    # replayed: the very same signed request again
    r = client.post("/v1/webhooks/zendesk", content=body, headers=headers)
    assert r.status_code == 409 and "replay" in r.json()["detail"]
    # body changed after signing
    r = client.post("/v1/webhooks/zendesk", content=body.replace(b"4711", b"4712"), headers=headers)
    assert r.status_code == 401 and "does not match" in r.json()["detail"]
    # signed with another secret
    other_body, other = zendesk_request(TICKET, secret="someone-elses-secret")
    r = client.post("/v1/webhooks/zendesk", content=other_body, headers=other)
    assert r.status_code == 401 and "someone" not in r.text
    # stale: correctly signed, but from 10 minutes ago (the window is 5)
    stale_body, stale = zendesk_request(TICKET, at=datetime.now(UTC) - timedelta(minutes=10))
    r = client.post("/v1/webhooks/zendesk", content=stale_body, headers=stale)
    assert r.status_code == 401 and "older than" in r.json()["detail"]
    # missing headers
    for drop in ("X-Zendesk-Webhook-Signature", "X-Zendesk-Webhook-Signature-Timestamp"):
        fresh_body, fresh = zendesk_request(TICKET)
        del fresh[drop]
        r = client.post("/v1/webhooks/zendesk", content=fresh_body, headers=fresh)
        assert r.status_code == 401 and "missing" in r.json()["detail"]
    # signed, but not our contract: a clear 400 naming the field
    bad_body, bad = zendesk_request({"ticket": {"id": 1, "requester": {"email": 5}}})
    r = client.post("/v1/webhooks/zendesk", content=bad_body, headers=bad)
    assert r.status_code == 400 and "requester.email" in r.json()["detail"]
    # no usable requester (blank placeholders): the default routing, not a 400 that trips Zendesk's breaker
    nobody_body, nobody = zendesk_request({"ticket": {"id": 2, "requester": {"external_id": "", "email": ""}}})
    r = client.post("/v1/webhooks/zendesk", content=nobody_body, headers=nobody)
    assert r.status_code == 200 and r.json()["group"] == "support" and "router_tier_standard" in r.json()["tags"]
    # too large
    big_body, big = zendesk_request({"ticket": {**TICKET["ticket"], "subject": "x" * 100_000}})
    assert client.post("/v1/webhooks/zendesk", content=big_body, headers=big).status_code == 413

    # the failures are counted by reason
    metrics = client.get("/metrics").text
    for reason in ("mismatch", "stale", "missing", "replayed"):
        line = next(
            x
            for x in metrics.splitlines()
            if x.startswith(f'router_webhook_signature_failures_total{{reason="{reason}"}}')
        )
        assert float(line.split()[-1]) >= 1, line


def test_generic_signed_webhook(server: tuple[Settings, httpx.Client, Path]) -> None:
    _, client, _ = server
    payload = {"customer": {"customer_id": VIP_ID}, "channel": "email", "category": "billing"}
    body, headers = generic_request(payload)
    r = client.post("/v1/webhooks/generic", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["tier"] == "VIP" and r.json()["escalation"]["queue"] == "billing"
    assert client.post("/v1/webhooks/generic", content=body, headers=headers).status_code == 409
    headers["X-Router-Signature"] = headers["X-Router-Signature"][:-4] + "0000"
    body2, _ = generic_request({**payload, "priority": "high"})
    r = client.post("/v1/webhooks/generic", content=body2, headers=headers)
    assert r.status_code == 401


def test_screenpop_over_http_never_logs_the_number(server: tuple[Settings, httpx.Client, Path]) -> None:
    _, client, log = server
    r = client.get("/v1/screenpop", params={"phone": "+49 30 901820"}, headers=auth("telephony"))
    assert r.status_code == 200 and r.json()["caller"] == "known" and r.json()["tier"] == "VIP"
    r = client.get("/v1/screenpop", params={"phone": "+44 20 7946 0000"}, headers=auth("telephony"))
    assert r.status_code == 200 and r.json()["caller"] == "unknown"
    r = client.get("/v1/screenpop/card", params={"phone": SMALL_PHONE, "key": auth("telephony")["X-API-Key"]})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "Known customer" in r.text and "555123" not in r.text
    # the query-string key is accepted only where a CTI needs it
    r = client.get("/v1/screenpop", params={"phone": SMALL_PHONE, "key": auth("telephony")["X-API-Key"]})
    assert r.status_code == 401
    r = client.get("/v1/screenpop", params={"phone": SMALL_PHONE}, headers=auth("helpdesk"))
    assert r.status_code == 403
    text = log.read_text()
    for fragment in ("901820", "7946", "555123", auth("telephony")["X-API-Key"]):
        assert fragment not in text, fragment


def test_cors_is_off_by_default(server: tuple[Settings, httpx.Client, Path]) -> None:
    _, client, _ = server
    preflight = {"Origin": "https://cti.example.com", "Access-Control-Request-Method": "POST"}
    r = client.options("/v1/screenpop", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    r = client.get("/v1/screenpop", params={"phone": SMALL_PHONE}, headers={**auth("telephony"), **preflight})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


async def test_a_replay_is_refused_for_as_long_as_its_timestamp_is_accepted(settings: SettingsFactory) -> None:
    """A timestamp ahead of our clock is accepted (clocks drift), so the request stays acceptable until
    timestamp + max_age: the replay cache must remember it that long, not max_age from receipt."""
    s = api_settings(settings, webhooks={"max_age_s": 3})
    body = b'{"customer": {"customer_id": "W1"}, "channel": "email"}'
    async with AsyncTestClient(app=create_app(s)) as client:
        # Signed once the app is up and at the start of a second, so the timestamp is two whole
        # seconds ahead (int() of a late fraction would leave barely one) and a slow start-up on a
        # loaded machine does not eat the window the test needs.
        await asyncio.sleep(1 - time.time() % 1)
        timestamp = str(int(time.time()) + 2)  # two seconds ahead: within the window
        headers = {
            "content-type": "application/json",
            "X-Router-Signature": sign_generic(GENERIC_SECRET, timestamp, body),
            "X-Router-Timestamp": timestamp,
        }
        r = await client.post("/v1/webhooks/generic", content=body, headers=headers)
        assert r.status_code == 200, r.text
        await asyncio.sleep(3.5)  # past max_age after receipt, still within max_age of the timestamp
        assert abs(time.time() - int(timestamp)) <= 3, "the test itself was too slow"
        r = await client.post("/v1/webhooks/generic", content=body, headers=headers)
        assert r.status_code == 409, f"a signed request was accepted twice ({r.status_code})"
