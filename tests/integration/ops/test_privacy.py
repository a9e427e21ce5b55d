"""No personal data anywhere but where it must be: a whole run is captured and searched.

A consumer process and an API process (real subprocesses, at their default log level) see
customers with known phone numbers and e-mail addresses: through events (valid and
poisoned), and through every HTTP route that takes an identifier (classify, screen-pop
JSON and HTML, handoff, signed webhooks, customer view, override, outcome, erasure), with
valid and invalid input. Then everything the run left behind is collected:

* both processes' complete log output,
* ``/metrics`` of the API and of the consumer,
* every Redis key and value under the run's prefix (audit streams included),
* the dead-letter headers (reasons and error messages; the values are the events
  themselves, kept on purpose for replay),
* every HTTP response body except the successful ones the caller is entitled to,

and searched for each identifier in clear, normalised (E.164, lower-cased e-mail), as
digits only, and as the e-mail's local part.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import msgspec
import redis

from router.devstack.infra import ManagedProcess, free_port
from router.settings import Settings, to_env
from schemas.events import CustomerEvent, CustomerProfile, OrderPlaced, SubscriptionChanged, TicketResolved
from tests.conftest import SettingsFactory
from tests.integration.ingest.test_faults_consumer import stored_offsets
from tests.support.api_support import KEYS, api_settings, auth, generic_request, live_server, zendesk_request
from tests.support.helpers import drain_topic, produce

NOW = datetime.now(UTC).replace(microsecond=0)

PEOPLE = {
    # customer id -> (phone as the business writes it, E.164, e-mail as written)
    "PRIV1": ("0151 2345 6789", "+4915123456789", "Jane.Private@Example.ORG"),
    "PRIV2": ("+1 (212) 555-0199", "+12125550199", "Otto.Geheim@Mail.Example.COM"),
}
WRONG_PHONE = "+49 151 999 888 77 66 55 44"  # unparseable: must not be echoed either


def _needles() -> dict[str, str]:
    """Every form in which one of the identifiers could leak, lower-cased."""
    out: dict[str, str] = {}
    for cid, (written, e164, email) in PEOPLE.items():
        out[f"{cid} phone as written"] = written.lower()
        out[f"{cid} phone E.164"] = e164.lower()
        out[f"{cid} phone digits"] = e164.lstrip("+")
        out[f"{cid} phone national digits"] = "".join(ch for ch in written if ch.isdigit()).lstrip("0")
        out[f"{cid} e-mail as written"] = email.lower()
        out[f"{cid} e-mail local part"] = email.split("@")[0].lower()
    out["invalid phone digits"] = "".join(ch for ch in WRONG_PHONE if ch.isdigit())
    return out


def _events() -> list[CustomerEvent]:
    t = NOW - timedelta(days=120)
    events: list[CustomerEvent] = []
    for cid, (written, _, email) in PEOPLE.items():
        events += [
            CustomerProfile(event_id=f"{cid}-p", customer_id=cid, occurred_at=t, segment="enterprise",
                            phones=[written], emails=[email], acquisition_cost=100.0),
            SubscriptionChanged(event_id=f"{cid}-s", customer_id=cid, occurred_at=t, change="new", mrr_delta=900.0),
            OrderPlaced(event_id=f"{cid}-o", customer_id=cid, occurred_at=t + timedelta(days=1), order_id="o",
                        amount=5000.0),
            TicketResolved(event_id=f"{cid}-t", customer_id=cid, occurred_at=t + timedelta(days=2), ticket_id="t",
                           sentiment=-0.5, csat=2),
        ]  # fmt: skip
    return events


def _poison() -> list[tuple[bytes | None, bytes | None]]:
    written, _, email = PEOPLE["PRIV1"]
    t = NOW.isoformat()
    base = {"type": "customer_profile", "event_id": "bad", "customer_id": "PRIV1", "occurred_at": t}
    return [
        (b"PRIV1", msgspec.json.encode({**base, "phones": [written * 4]})),  # too long
        (b"PRIV1", msgspec.json.encode({**base, "emails": [email] * 20})),  # too many
        (b"PRIV1", msgspec.json.encode({**base, "customer_id": email})),  # an e-mail where an id belongs
        (b"PRIV1", msgspec.json.encode({**base, "phones": written})),  # a string where a list belongs
        (b"PRIV1", f"phone={written};email={email}".encode()),  # not JSON at all
        (b"PRIV1", msgspec.json.encode({**base, "type": email})),  # unknown type tag
    ]


def _exercise_api(s: Settings, client: httpx.Client) -> list[str]:
    """Every route that takes an identifier, valid and invalid; returns the bodies to search."""
    bodies: list[str] = []
    written, e164, email = PEOPLE["PRIV1"]

    def keep(r: httpx.Response, *, error_only: bool = False) -> None:
        if not error_only or r.status_code >= 400:
            # the request line itself is ours, not the service's: only the answer is searched
            bodies.append(f"{r.request.method} -> {r.status_code}: {r.text}")

    decision_of_priv1 = ""
    for ref in ({"phone": written}, {"phone": e164}, {"phone": "+49-151-23456789"}, {"email": email},
                {"email": email.upper()}, {"customer_id": "PRIV2"}):  # fmt: skip
        r = client.post("/v1/classify", json={"customer": ref}, headers=auth("helpdesk"))
        assert r.status_code == 200 and r.json()["customer_known"] is True, r.text
        keep(r)  # a decision: scores and reasons, no identifiers
        decision_of_priv1 = decision_of_priv1 or r.json()["decision_id"]  # PRIV1, found by phone
    for bad in ({"phone": WRONG_PHONE}, {"email": "jane.private@"}, {"phone": written, "email": email},
                {"email": email + " " + written}):  # fmt: skip
        keep(client.post("/v1/classify", json={"customer": bad}, headers=auth("helpdesk")))
    keep(client.post("/v1/classify", json={"customer": {"phone": written}}, headers={"X-API-Key": written}))
    keep(client.post("/v1/classify", json={"customer": {"phone": written}}, headers=auth("ops")))
    keep(client.get("/v1/screenpop", params={"phone": written}, headers=auth("telephony")))
    keep(client.get("/v1/screenpop", params={"phone": WRONG_PHONE}, headers=auth("telephony")))
    keep(client.get("/v1/screenpop/card", params={"phone": written, "key": KEYS["telephony"]}))
    keep(client.post("/v1/handoff", json={"customer": {"email": email}, "conversation": {"asked_for_human": True}},
                     headers=auth("chatbot")))  # fmt: skip
    body, headers = zendesk_request({"ticket": {"id": 5, "requester": {"email": email, "phone": written}}})
    keep(client.post("/v1/webhooks/zendesk", content=body, headers=headers))
    keep(client.post("/v1/webhooks/zendesk", content=body, headers=headers))  # replay: 409
    body, headers = zendesk_request({"ticket": {"id": 6, "requester": {"phone": WRONG_PHONE}}})
    keep(client.post("/v1/webhooks/zendesk", content=body, headers=headers))
    body, headers = generic_request({"customer": {"phone": written}, "channel": "phone"})
    keep(client.post("/v1/webhooks/generic", content=body, headers=headers))
    keep(client.post("/v1/webhooks/generic", content=body.replace(b"0151", b"0152"), headers=headers))
    keep(client.get("/v1/customers/PRIV1", headers=auth("ops")))
    keep(client.get(f"/v1/customers/{email}", headers=auth("ops")))  # an e-mail is not an id
    keep(client.put("/v1/customers/PRIV1/override", json={"tier": "VIP", "reason": "called about a refund"},
                    headers=auth("admin")))  # fmt: skip
    time.sleep(0.5)  # the decision reaches the customer's audit trail, which the outcome is checked against
    r = client.post(f"/v1/decisions/{decision_of_priv1}/outcome", json={"customer_id": "PRIV1", "outcome": "renewed"},
                    headers=auth("helpdesk"))  # fmt: skip
    assert r.status_code == 202, r.text
    keep(r)
    keep(client.post("/v1/decisions/d-2/outcome", json={"customer_id": email, "outcome": "renewed"},
                     headers=auth("helpdesk")))  # fmt: skip
    keep(client.post("/v1/customers/PRIV2/erasure", headers=auth("admin")))
    return bodies


def _redis_dump(s: Settings) -> str:
    """Every key and value under the run's prefix, as text (streams, hashes, strings, sets)."""
    client = redis.Redis.from_url(s.redis.url)
    parts: list[str] = []
    try:
        for key in client.scan_iter(match=f"{s.redis.prefix}:*", count=1000):
            kind = client.type(key).decode()
            value: object
            if kind == "stream":
                value = client.xrange(key)
            elif kind == "hash":
                value = client.hgetall(key)
            elif kind == "string":
                value = client.get(key)
            elif kind == "set":
                value = client.smembers(key)
            elif kind == "zset":
                value = client.zrange(key, 0, -1, withscores=True)
            elif kind == "list":
                value = client.lrange(key, 0, -1)
            else:
                value = kind
            parts.append(f"{key!r} {kind} {value!r}")
    finally:
        client.close()
    return "\n".join(parts)


def test_no_personal_data_in_logs_metrics_audit_or_errors(settings: SettingsFactory, tmp_path: Path) -> None:
    s = api_settings(settings, kafka={"partitions": 2})
    health = free_port()
    env = {**os.environ, **to_env(s), "ROUTER_STREAM_HEALTH_PORT": str(health)}
    consumer = ManagedProcess(
        "consumer", [sys.executable, "-m", "router", "consume"], log_path=tmp_path / "consumer.log", env=env
    )
    try:
        events = _events()
        poison = _poison()
        asyncio.run(produce(s, [*events, *poison]))
        deadline = time.monotonic() + 40
        while sum(asyncio.run(stored_offsets(s)).values()) < len(events) + len(poison):
            assert consumer.running and time.monotonic() < deadline, consumer.tail(40)
            time.sleep(0.2)
        with live_server(s, tmp_path / "api.log") as client:
            bodies = _exercise_api(s, client)
            api_metrics = client.get("/metrics").text
            time.sleep(1.5)  # the audit writer drains its queue in the background
        # the erasure and outcome events reach the consumer too
        deadline = time.monotonic() + 20
        while sum(asyncio.run(stored_offsets(s)).values()) < len(events) + len(poison) + 2:
            assert consumer.running and time.monotonic() < deadline, consumer.tail(40)
            time.sleep(0.2)
        consumer_metrics = httpx.get(f"http://127.0.0.1:{health}/metrics", timeout=5).text
    finally:
        consumer.stop(10)

    dead = asyncio.run(drain_topic(s, s.kafka.dead_letter_topic, expected=len(poison), timeout=15))
    assert len(dead) == len(poison)
    dlq_headers = "\n".join(repr(r.headers) for r in dead)  # type: ignore[attr-defined]
    redis_text = _redis_dump(s)
    assert "audit" in redis_text, "no audit stream was written: the search would prove nothing"

    haystacks = {
        "API log": (tmp_path / "api.log").read_text(errors="replace"),
        "consumer log": (tmp_path / "consumer.log").read_text(errors="replace"),
        "API /metrics": api_metrics,
        "consumer /metrics": consumer_metrics,
        "Redis (snapshots, indexes, audit streams)": redis_text,
        "dead-letter headers": dlq_headers,
        "HTTP responses": "\n".join(bodies),
    }
    assert len(haystacks["API log"]) > 0 and len(haystacks["consumer log"]) > 0
    leaks = [
        f"{form} in {where}: ...{text[max(0, at - 120) : at + len(needle) + 40]!r}..."
        for where, text in haystacks.items()
        for form, needle in _needles().items()
        if (at := text.lower().find(needle)) >= 0
    ]
    sizes = {where: len(text) for where, text in haystacks.items()}
    print(
        f"\n[privacy] searched {sum(sizes.values())} characters {sizes} for {len(_needles())} forms: {len(leaks)} leaks"
    )
    assert leaks == [], "personal data found:\n" + "\n".join(leaks)
