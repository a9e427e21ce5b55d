"""Shared pieces of the API tests: keys, a realistic small population, a live uvicorn server."""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec

from router.devstack.infra import free_port
from router.ops.kafka import ensure_topics
from router.serving.signatures import parse_standard_secret, sign_intercom, sign_standard, sign_stripe
from router.serving.webhooks import sign_generic, sign_zendesk
from router.settings import Settings, to_env
from schemas.events import (
    CustomerEvent,
    CustomerProfile,
    NpsResponse,
    OrderPlaced,
    SubscriptionChanged,
    TicketResolved,
    Usage,
)
from tests.conftest import TEST_IDENTITY, SettingsFactory, run_sync
from tests.support.helpers import produce, running_consumer, wait_until_caught_up

NOW = datetime.now(UTC).replace(microsecond=0)

KEYS = {
    "helpdesk": "helpdesk-secret-0123456789",
    "telephony": "telephony-secret-0123456789",
    "chatbot": "chatbot-secret-0123456789",
    "events": "events-secret-0123456789abc",
    "ops": "ops-secret-0123456789abcdef",
    "admin": "admin-secret-0123456789abcdef",
}
KEY_SPEC = ",".join(f"{name}-app:{name}:{secret}" for name, secret in KEYS.items())
ZENDESK_SECRET = "zendesk-signing-secret-for-tests"
GENERIC_SECRET = "generic-signing-secret-for-tests"
STANDARD_SECRET = "whsec_" + base64.b64encode(b"standard-webhooks-key-for-tests!").decode()
INTERCOM_SECRET = "intercom-client-secret-for-tests"
STRIPE_SECRET = "whsec_stripe_endpoint_secret_for_tests"

VIP_ID = "BIG1"
VIP_PHONE = "+49 30 901820"
VIP_EMAIL = "Boss@Example.COM"
SMALL_PHONE = "+49 40 555123"


def auth(scope: str) -> dict[str, str]:
    return {"X-API-Key": KEYS[scope]}


def api_settings(make: SettingsFactory, **sections: Mapping[str, Any]) -> Settings:
    """Settings from the conftest factory with keys, webhook secrets and a quick circuit breaker."""
    base: dict[str, dict[str, Any]] = {
        "auth": {"keys": KEY_SPEC},
        "webhooks": {
            "zendesk_secret": ZENDESK_SECRET,
            "generic_secret": GENERIC_SECRET,
            "standard_secret": STANDARD_SECRET,
            "intercom_secret": INTERCOM_SECRET,
            "stripe_secret": STRIPE_SECRET,
            "stripe_rates": "USD=0.9",
        },
        "redis": {"breaker_reset_ms": 200},
    }
    for name, value in sections.items():
        base[name] = {**base.get(name, {}), **value}
    return make(**base)


def zendesk_request(
    payload: object, *, secret: str = ZENDESK_SECRET, at: datetime | None = None
) -> tuple[bytes, dict[str, str]]:
    """Body and headers exactly as Zendesk sends a signed webhook."""
    body = msgspec.json.encode(payload)
    timestamp = (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    headers = {
        "content-type": "application/json",
        "X-Zendesk-Webhook-Signature": sign_zendesk(secret, timestamp, body),
        "X-Zendesk-Webhook-Signature-Timestamp": timestamp,
    }
    return body, headers


def generic_request(payload: object, *, secret: str = GENERIC_SECRET) -> tuple[bytes, dict[str, str]]:
    """Body and headers of the generic signed webhook."""
    body = msgspec.json.encode(payload)
    timestamp = str(int(time.time()))
    headers = {
        "content-type": "application/json",
        "X-Router-Signature": sign_generic(secret, timestamp, body),
        "X-Router-Timestamp": timestamp,
    }
    return body, headers


def standard_request(
    payload: object, *, msg_id: str | None = None, at: int | None = None, secret: str = STANDARD_SECRET
) -> tuple[bytes, dict[str, str]]:
    """Body and headers as a Standard Webhooks sender (e.g. the reference libraries) sends them."""
    body = msgspec.json.encode(payload)
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    ts = int(time.time()) if at is None else at
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign_standard(parse_standard_secret(secret), msg_id, ts, body),
    }
    return body, headers


def intercom_request(payload: object, *, secret: str = INTERCOM_SECRET) -> tuple[bytes, dict[str, str]]:
    """Body and headers as Intercom sends a notification."""
    body = msgspec.json.encode(payload)
    return body, {"content-type": "application/json", "X-Hub-Signature": sign_intercom(secret, body)}


def stripe_request(
    payload: object, *, at: int | None = None, secret: str = STRIPE_SECRET
) -> tuple[bytes, dict[str, str]]:
    """Body and headers as Stripe sends an event (a retry signs it again with a new timestamp)."""
    body = msgspec.json.encode(payload)
    ts = int(time.time()) if at is None else at
    return body, {"content-type": "application/json; charset=utf-8", "Stripe-Signature": sign_stripe(secret, ts, body)}


def big_spender(cid: str = VIP_ID) -> list[CustomerEvent]:
    start = NOW - timedelta(days=400)
    events: list[CustomerEvent] = [
        CustomerProfile(event_id=f"{cid}-p", customer_id=cid, occurred_at=start, segment="enterprise",
                        plan="enterprise", phones=[VIP_PHONE], emails=[VIP_EMAIL], acquisition_cost=2000.0,
                        company_size=5000),
        SubscriptionChanged(event_id=f"{cid}-s", customer_id=cid, occurred_at=start, change="new",
                            plan="enterprise", mrr_delta=9000.0),
    ]  # fmt: skip
    for i in range(40):
        events.append(
            OrderPlaced(event_id=f"{cid}-o{i}", customer_id=cid, occurred_at=start + timedelta(days=10 * i),
                        order_id=f"o{i}", amount=25_000.0)
        )  # fmt: skip
    for d in range(60, 3, -1):
        events.append(Usage(event_id=f"{cid}-u{d}", customer_id=cid, occurred_at=NOW - timedelta(days=d), logins=40,
                            features_used=30))  # fmt: skip
    # in event-time order: the consumer drops events older than a day before the newest one
    events += [
        NpsResponse(event_id=f"{cid}-n", customer_id=cid, occurred_at=NOW - timedelta(days=5), score=9),
        TicketResolved(event_id=f"{cid}-t", customer_id=cid, occurred_at=NOW - timedelta(days=3), ticket_id="t1",
                       sentiment=0.6, csat=5),
    ]  # fmt: skip
    events.sort(key=lambda e: e.occurred_at)
    return events


def small(cid: str, i: int, phone: str | None = None) -> list[CustomerEvent]:
    t = NOW - timedelta(days=100 + i % 50)
    return [
        CustomerProfile(event_id=f"{cid}-p", customer_id=cid, occurred_at=t, segment="consumer", plan="basic",
                        phones=[phone] if phone else [], acquisition_cost=50.0),
        SubscriptionChanged(event_id=f"{cid}-s", customer_id=cid, occurred_at=t, change="new", plan="basic",
                            mrr_delta=float(5 + i % 20)),
        OrderPlaced(event_id=f"{cid}-o", customer_id=cid, occurred_at=t + timedelta(days=3), order_id="o",
                    amount=float(10 + i)),
    ]  # fmt: skip


def population(n: int = 40) -> list[CustomerEvent]:
    """``n`` small customers (S000 has ``SMALL_PHONE``) and one big spender who is VIP among them."""
    events: list[CustomerEvent] = []
    for i in range(n):
        events += small(f"S{i:03d}", i, SMALL_PHONE if i == 0 else None)
    return events + big_spender()


async def populate(settings: Settings, events: list[CustomerEvent]) -> None:
    """Produce ``events`` and run a consumer until Redis holds all of them."""
    await produce(settings, events)
    async with running_consumer(settings) as worker:
        await wait_until_caught_up(worker, settings, len(events))


def module_settings(broker: str, redis_url: str, name: str = "module", **sections: Mapping[str, Any]) -> Settings:
    """Settings of a module-scoped server (the ``settings`` factory is per test): own topics, key prefix,
    port, the test keys and every webhook secret; ``sections`` override fields (``api={"workers": 2}``)."""
    token = f"{name}-{uuid.uuid4().hex[:8]}"
    base = Settings()
    r = msgspec.structs.replace
    s = r(
        base,
        kafka=r(base.kafka, bootstrap=broker, events_topic=f"{token}.events", dead_letter_topic=f"{token}.dlq",
                alerts_topic=f"{token}.alerts", group_id=f"{token}.group", session_timeout_ms=3000),
        redis=r(base.redis, url=redis_url, prefix=f"test:{token}", breaker_reset_ms=200),
        api=r(base.api, port=free_port()),
        stream=r(base.stream, health_port=0),
        identity=TEST_IDENTITY,
        model=r(base.model, nba_control_share=0.0),  # no control group: tests expect the policy's actions
        auth=r(base.auth, keys=KEY_SPEC),
        webhooks=r(base.webhooks, zendesk_secret=ZENDESK_SECRET, generic_secret=GENERIC_SECRET,
                   standard_secret=STANDARD_SECRET, intercom_secret=INTERCOM_SECRET, stripe_secret=STRIPE_SECRET,
                   stripe_rates="USD=0.9"),
    )  # fmt: skip
    for section, values in sections.items():
        s = r(s, **{section: r(getattr(s, section), **values)})
    run_sync(ensure_topics(s.kafka))
    return s


@contextlib.contextmanager
def live_server(settings: Settings, log: Path, extra_env: dict[str, str] | None = None) -> Iterator[httpx.Client]:
    """``router serve`` as a real uvicorn subprocess; yields a client once it is ready."""
    env = {**os.environ, **to_env(settings), **(extra_env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "router", "serve"],
        env=env,
        stdout=open(log, "wb"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    client = httpx.Client(base_url=f"http://{settings.api.host}:{settings.api.port}", timeout=5)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.get("/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("API did not become ready: " + log.read_text()[-3000:])
            time.sleep(0.1)
        yield client
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
