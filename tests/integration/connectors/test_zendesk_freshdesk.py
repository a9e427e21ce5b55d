"""Zendesk and Freshdesk: webhook in through the real API process, write-back out through ``router connect``.

The helpdesks' APIs are local stand-ins (``tests/support/helpdesks.py``) that refuse and record
any request not shaped as the vendors document it. Inbound bodies are shaped like the vendors'
templates render them: blank placeholders as ``""``, display text ("Normal", "Web Form",
"Medium", "Portal"), values router cannot use.
"""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.settings import Settings, to_env
from tests.conftest import SettingsFactory
from tests.support.api_support import (
    VIP_EMAIL,
    VIP_ID,
    VIP_PHONE,
    api_settings,
    auth,
    live_server,
    populate,
    population,
    zendesk_request,
)
from tests.support.connectors import ConnectProcess, connect_process, outbox_status, wait_for
from tests.support.helpdesks import FakeFreshdesk, FakeZendesk

ZD_EMAIL, ZD_TOKEN, FD_KEY, FD_TOKEN = (
    "agent@example.com",
    "zendesk-api-token",
    "freshdesk-api-key",
    "fd-inbound-0123456789",
)
CONFIG = """
[zendesk]
url = "{zendesk}"
default_group = 100
tier_field_id = 9001
action_field_id = 9002

[zendesk.groups]
vip = 1
tech_senior = 2
billing = 4

[freshdesk]
url = "{freshdesk}"
default_group = 200
tier_field = "cf_router_tier"
action_field = "cf_router_action"

[freshdesk.groups]
vip = 10
tech_senior = 20
"""

Stack = tuple[Settings, httpx.Client, FakeZendesk, FakeFreshdesk, ConnectProcess]


@pytest.fixture
def stack(settings: SettingsFactory, tmp_path: Path) -> Iterator[Stack]:
    zd = FakeZendesk(ZD_EMAIL, ZD_TOKEN).start()
    fd = FakeFreshdesk(FD_KEY).start()
    config = tmp_path / "connectors.toml"
    config.write_text(CONFIG.format(zendesk=zd.url, freshdesk=fd.url))
    s = api_settings(
        settings,
        connectors={"config_path": str(config), "zendesk_email": ZD_EMAIL, "zendesk_token": ZD_TOKEN,
                    "freshdesk_api_key": FD_KEY, "freshdesk_inbound_token": FD_TOKEN,
                    "backoff_base_s": 0.2, "backoff_max_s": 2.0, "health_port": 0},
    )  # fmt: skip
    asyncio.run(populate(s, population()))
    try:
        with live_server(s, tmp_path / "api.log") as client, connect_process(s, tmp_path / "connect.log") as proc:
            yield s, client, zd, fd, proc
    finally:
        zd.close()
        fd.close()


def _zendesk(client: httpx.Client, ticket: dict[str, Any]) -> httpx.Response:
    body, headers = zendesk_request({"ticket": ticket})
    return client.post("/v1/webhooks/zendesk", content=body, headers=headers)


def _notes(fake: FakeZendesk | FakeFreshdesk, number: int, n: int = 1, timeout: float = 15) -> list[dict[str, Any]]:
    wait_for(f"{n} note(s) on ticket {number}", lambda: len(fake.notes[number]) >= n, timeout)
    return fake.notes[number]


def _last_put(fake: FakeZendesk | FakeFreshdesk, number: int) -> dict[str, Any]:
    put = [s for s in fake.requests("PUT", f"/tickets/{number}") if s.status == 200][-1].body
    return put["ticket"] if fake.vendor == "zendesk" else put  # type: ignore[no-any-return]


def test_zendesk_template_values_are_routed_and_written_back_once(stack: Stack) -> None:
    _, client, zd, _, _ = stack
    for number in (4711, 4712, 4713, 4714, 4715):
        zd.add_ticket(number, tags=["from_crm"])

    # The trigger's template as Zendesk renders it: display text, blank placeholders. 2xx at once.
    t0 = time.monotonic()
    r = _zendesk(client, {"id": "4711", "priority": "Normal", "channel": "Web Form", "category": "",
                          "requester": {"external_id": VIP_ID, "email": "", "phone": ""}})  # fmt: skip
    assert r.status_code == 200, r.text
    assert time.monotonic() - t0 < 1.0  # Zendesk gives up after 10 s; the write-back is not waited for
    routing = r.json()
    assert routing["group"] == "vip" and routing["priority"] == "high" and "router_tier_vip" in routing["tags"]
    (note,) = _notes(zd, 4711)
    put = _last_put(zd, 4711)
    assert put["group_id"] == 1 and put["priority"] == "high"
    assert put["tags"][0] == "from_crm" and {"router_tier_vip", "router_role_senior_advisor"} <= set(put["tags"])
    assert {"id": 9001, "value": "vip"} in put["custom_fields"] and put["safe_update"] is True
    assert note["public"] is False  # an internal note, never shown to the customer
    assert (
        routing["decision_id"] in note["body"]
        and "tier VIP (known customer)" in note["body"]
        and "Why:" in note["body"]
    )

    # Every placeholder blank: the default routing (a 400 here would trip Zendesk's circuit breaker).
    r = _zendesk(client, {"id": 4712, "priority": "", "channel": "", "category": "",
                          "requester": {"external_id": "", "email": "", "phone": ""}})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["group"] == "support" and r.json()["priority"] == "normal"
    _notes(zd, 4712)
    assert _last_put(zd, 4712)["group_id"] == 100  # policy queue "support" is not mapped: default_group
    assert "default routing" in zd.notes[4712][0]["body"]

    # Odd values: an e-mail router cannot read is skipped for the next reference; enums in any case.
    r = _zendesk(client, {"id": "#4713", "priority": "URGENT", "channel": "Phone call (incoming)", "category": "Billing",
                          "requester": {"email": "not an e-mail", "phone": VIP_PHONE}})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["priority"] == "urgent" and "router_tier_vip" in r.json()["tags"]
    _notes(zd, 4713)
    assert _last_put(zd, 4713)["group_id"] == 4  # billing

    # Rate limited: 429 with Retry-After: 1, twice. The connector waits as told and writes once.
    zd.fault(429, times=2, retry_after="1")
    assert _zendesk(client, {"id": 4714, "requester": {"email": "someone@else.example"}}).status_code == 200
    _notes(zd, 4714)
    seen = zd.requests(contains="/tickets/4714")
    limited = [i for i, x in enumerate(seen) if x.status == 429]
    assert len(limited) == 2
    for i in limited:
        assert seen[i + 1].at - seen[i].at >= 0.95, "Retry-After not honoured"

    # A collision (another update in between: 409 to the safe update) is retried, not lost or doubled.
    zd.fault(409, times=1, only="PUT /api/v2/tickets/4715")
    assert _zendesk(client, {"id": 4715, "requester": {"external_id": VIP_ID}}).status_code == 200
    assert len(_notes(zd, 4715)) == 1

    # Zendesk delivers the same ticket again (or a trigger fires on router's own update): one note.
    r = _zendesk(client, {"id": "4711", "priority": "Normal", "requester": {"external_id": VIP_ID}})
    assert r.status_code == 200
    time.sleep(1.5)
    assert len(zd.notes[4711]) == 1

    # Still a clear 400 for a body that is not the template at all, naming the field.
    r = _zendesk(client, {"id": 4716, "requester": {"email": 5}})
    assert r.status_code == 400 and "requester.email" in r.json()["detail"]
    # A template without the ticket number: routed (no 400), but there is no ticket to write back to.
    r = _zendesk(client, {"id": "{{ticket.id}}"})
    assert r.status_code == 200 and r.json()["group"] == "support"
    assert zd.problems == []


def test_freshdesk_token_lenient_body_write_back_dead_letter_and_health(stack: Stack, tmp_path: Path) -> None:
    s, client, _, fd, _ = stack
    soon = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    fd.add_ticket(501, tags=["portal"], due_by=soon)  # resolution due before a VIP's 2 h first response
    fd.add_ticket(502)
    fd.add_ticket(503)
    url = "/v1/webhooks/freshdesk"
    body = {"ticket": {"id": "501", "priority": "Medium", "source": "Portal", "category": "",
                       "requester": {"email": VIP_EMAIL.upper(), "phone": "", "external_id": ""}}}  # fmt: skip

    # Freshdesk does not sign: the shared token, as a custom header or the Basic password.
    assert client.post(url, json=body).status_code == 401
    r = client.post(url, json=body, headers={"X-Router-Token": "wrong-token-0123456789"})
    assert r.status_code == 401 and "does not match" in r.json()["detail"] and FD_TOKEN not in r.text
    r = client.post(url, json=body, headers={"X-Router-Token": FD_TOKEN})
    assert r.status_code == 200, r.text
    routing = r.json()
    assert routing["group"] == "vip" and routing["priority"] == "high"
    (note,) = _notes(fd, 501)
    put = _last_put(fd, 501)
    assert put["priority"] == 3 and put["group_id"] == 10  # Freshdesk's 3 = high
    due = datetime.fromisoformat(routing["due_at"].replace("Z", "+00:00")).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert put["fr_due_by"] == due and put["due_by"] == due  # resolution moved so the first response fits
    assert put["tags"][0] == "portal" and "router_tier_vip" in put["tags"]
    assert put["custom_fields"]["cf_router_tier"] == "VIP"
    assert note["private"] is True and routing["decision_id"] in note["body_text"]

    basic = "Basic " + base64.b64encode(f"freshdesk:{FD_TOKEN}".encode()).decode()
    r = client.post(url, json={"ticket": {"id": 502, "priority": 1, "source": 3, "requester": {}}},
                    headers={"Authorization": basic})  # fmt: skip
    assert r.status_code == 200 and r.json()["group"] == "support"
    _notes(fd, 502)
    assert _last_put(fd, 502)["group_id"] == 200 and _last_put(fd, 502)["priority"] == 1

    # The note is refused once with 429: the update is repeated (same values), the note written once.
    fd.fault(429, times=1, retry_after="1", only="POST /api/v2/tickets/503/notes")
    assert client.post(url, json={"ticket": {"id": 503}}, headers={"X-Router-Token": FD_TOKEN}).status_code == 200
    assert len(_notes(fd, 503)) == 1
    time.sleep(0.5)
    assert len(fd.notes[503]) == 1

    # A ticket Freshdesk does not know: dead-lettered at once with the cause, shown to operations.
    assert client.post(url, json={"ticket": {"id": 999}}, headers={"X-Router-Token": FD_TOKEN}).status_code == 200
    wait_for("a dead letter", lambda: outbox_status(s, "freshdesk").dead_letters == 1, 15)
    assert client.get("/v1/connectors", headers=auth("helpdesk")).status_code == 403
    r = client.get("/v1/connectors", headers=auth("ops"))
    assert r.status_code == 200, r.text
    status = {c["name"]: c for c in r.json()}
    assert set(status) == {"zendesk", "freshdesk"}
    f = status["freshdesk"]
    assert f["dead_letters"] == 1 and f["state"] == "failing" and f["queued"] == 0
    assert f["last_failure"] == "GET /tickets/{id}: HTTP 404", f
    assert f["last_landed_at"] and FD_KEY not in r.text and FD_TOKEN not in r.text

    # The ticket exists after all: the operator puts the dead letter back.
    fd.add_ticket(999)
    out = subprocess.run([sys.executable, "-m", "router", "connect", "--requeue-dead"], env={**os.environ, **to_env(s)},
                         capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    assert "freshdesk: 1 dead letters back in the outbox" in out.stdout
    _notes(fd, 999)
    assert outbox_status(s, "freshdesk").dead_letters == 0
    assert fd.problems == []
    logs = (tmp_path / "api.log").read_text() + (tmp_path / "connect.log").read_text()
    for secret in (FD_KEY, FD_TOKEN, ZD_TOKEN, VIP_EMAIL.lower()):
        assert secret not in logs.lower(), secret
