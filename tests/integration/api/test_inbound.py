"""Inbound integrations against a real uvicorn process: Standard Webhooks, Intercom, telephony callers.

One API process (its own topics, prefix and port, populated with a VIP and small customers)
serves the module; each test names what a vendor or phone system sends and what it must get.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonpath_ng
import jsonschema
import msgspec
import pytest

from router.settings import Settings
from tests.support.api_support import (
    INTERCOM_SECRET,
    KEYS,
    SMALL_PHONE,
    STANDARD_SECRET,
    VIP_ID,
    auth,
    generic_request,
    intercom_request,
    live_server,
    module_settings,
    populate,
    population,
    standard_request,
)
from tests.support.vendors import intercom_conversation, intercom_notification, intercom_ticket

ORIGIN = "https://cti.example.com"
VIP_US_PHONE = "+14155550100"


@pytest.fixture(scope="module")
def served(
    broker: str, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[httpx.Client, Path, Settings]]:
    s = module_settings(
        broker,
        redis_server.url,
        "inbound",
        redis={"timeout_ms": 1000},
        api={"cors_origins": f"{ORIGIN}, https://agents.example.com"},
    )
    events = population()
    # the VIP also has a US number (the raw-plus and tel: cases)
    profile = next(e for e in events if e.event_id == f"{VIP_ID}-p")
    events[events.index(profile)] = msgspec.structs.replace(profile, phones=[*profile.phones, VIP_US_PHONE])
    asyncio.run(populate(s, events))
    log = tmp_path_factory.mktemp("inbound") / "api.log"
    with live_server(s, log) as client:
        yield client, log, s


# -- Standard Webhooks on /v1/webhooks/generic ---------------------------------------------------

TICKET = {"customer": {"customer_id": VIP_ID}, "channel": "email", "category": "billing"}


def test_standard_webhooks_signed_request_is_routed_once(served: tuple[httpx.Client, Path, Settings]) -> None:
    client, _, _ = served
    body, headers = standard_request(TICKET)
    r = client.post("/v1/webhooks/generic", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["tier"] == "VIP" and r.json()["escalation"]["queue"] == "billing"
    assert "deprecation" not in r.headers
    # the same webhook-id again (a retry or a replay) within the window
    again_body, again = standard_request(TICKET, msg_id=headers["webhook-id"])
    r = client.post("/v1/webhooks/generic", content=again_body, headers=again)
    assert r.status_code == 409 and "already processed" in r.json()["detail"]


def test_standard_webhooks_rotation_and_refusals(served: tuple[httpx.Client, Path, Settings]) -> None:
    client, _, _ = served
    # a sender rotating its secret signs with the old and the new one
    body, headers = standard_request(TICKET)
    _, old = standard_request(
        TICKET, msg_id=headers["webhook-id"], secret="whsec_" + "b2xkLXNlY3JldC1vbGQtc2VjcmV0LW9sZA=="
    )
    headers["webhook-signature"] = f"{old['webhook-signature']} {headers['webhook-signature']}"
    assert client.post("/v1/webhooks/generic", content=body, headers=headers).status_code == 200

    cases = []
    b, h = standard_request(TICKET)
    cases.append(("tampered body", b.replace(b"billing", b"general"), h, 401, "does not match"))
    b, h = standard_request(TICKET, at=int(time.time()) - 600)
    cases.append(("stale", b, h, 401, "from now"))
    b, h = standard_request(TICKET, secret="whsec_" + "c29tZW9uZS1lbHNlcy1zZWNyZXQtMTIzNA==")
    cases.append(("other secret", b, h, 401, "does not match"))
    b, h = standard_request(TICKET)
    del h["webhook-id"]
    cases.append(("no id", b, h, 401, "missing"))
    b, h = standard_request(TICKET)
    h["webhook-timestamp"] = "yesterday"
    cases.append(("bad timestamp", b, h, 401, "Unix seconds"))
    b, h = standard_request({"customer": {"customer_id": VIP_ID}, "channel": "fax"})
    cases.append(("signed but not a classify request", b, h, 400, "channel"))
    b, h = standard_request({"customer": {}})
    cases.append(("blank customer", b, h, 400, "exactly one"))
    for name, body, headers, status, detail in cases:
        r = client.post("/v1/webhooks/generic", content=body, headers=headers)
        assert r.status_code == status, (name, r.text)
        assert detail in r.json()["detail"], (name, r.text)
        assert STANDARD_SECRET not in r.text


def test_legacy_router_signature_still_works_with_a_deprecation_header(
    served: tuple[httpx.Client, Path, Settings],
) -> None:
    client, _, _ = served
    body, headers = generic_request(TICKET)
    r = client.post("/v1/webhooks/generic", content=body, headers=headers)
    assert r.status_code == 200 and r.headers["deprecation"] == "true"
    metrics = client.get("/metrics").text
    assert any(line.startswith("router_webhook_legacy_signatures_total") and float(line.split()[-1]) >= 1
               for line in metrics.splitlines())  # fmt: skip


# -- Intercom ------------------------------------------------------------------------------------


def _intercom(client: httpx.Client, payload: dict[str, Any], **kw: Any) -> httpx.Response:
    body, headers = intercom_request(payload, **kw)
    return client.post("/v1/webhooks/intercom", content=body, headers=headers)


def _notif(topic: str, item: dict[str, Any] | None, **kw: Any) -> dict[str, Any]:
    return intercom_notification(topic, item, notification_id=f"notif_{uuid.uuid4()}", **kw)


def test_intercom_new_conversation_of_a_vip_is_routed(served: tuple[httpx.Client, Path, Settings]) -> None:
    client, _, _ = served
    payload = _notif("conversation.user.created", intercom_conversation(priority="priority", tags=["Technical"]))
    r = _intercom(client, payload)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["routed"] is True and out["topic"] == "conversation.user.created"
    routing = out["routing"]
    assert routing["priority"] == "high" and "router_tier_vip" in routing["tags"]
    assert routing["group"] == "tech_senior"  # the "Technical" tag made it a technical contact
    # Intercom delivering the same notification again
    body, headers = intercom_request(payload)
    r = client.post("/v1/webhooks/intercom", content=body, headers=headers)
    assert r.status_code == 409


def test_intercom_ticket_and_odd_values(served: tuple[httpx.Client, Path, Settings]) -> None:
    client, _, _ = served
    r = _intercom(client, _notif("ticket.created", intercom_ticket(ticket_type="Billing")))
    assert r.status_code == 200 and r.json()["routing"]["group"] == "billing", r.text
    # a lead without external id: found by the author's e-mail (the VIP's, in another case)
    by_email = intercom_conversation(external_id=None, email="BOSS@example.com", author_type="lead")
    r = _intercom(client, _notif("conversation.user.created", by_email))
    assert r.status_code == 200 and "router_tier_vip" in r.json()["routing"]["tags"], r.text
    # an anonymous visitor: blank id, blank e-mail, odd priority and channel -> default routing, not an error
    anonymous = intercom_conversation(
        external_id="", email="", author_type="lead", priority="", source_type="carrier_pigeon"
    )
    anonymous["custom_attributes"] = {"category": None}
    anonymous["tags"] = None
    r = _intercom(client, _notif("conversation.user.created", anonymous))
    assert r.status_code == 200, r.text
    assert r.json()["routed"] is True and "router_tier_vip" not in r.json()["routing"]["tags"]
    # a topic that opens nothing, and Intercom's ping when the webhook is saved
    for topic in ("conversation.admin.closed", "ping"):
        r = _intercom(client, _notif(topic, {"type": "ping", "message": "something"}))
        assert r.status_code == 200 and r.json()["routed"] is False, r.text


def test_intercom_refusals(served: tuple[httpx.Client, Path, Settings]) -> None:
    client, _, _ = served
    payload = _notif("conversation.user.created", intercom_conversation())
    r = _intercom(client, payload, secret="some-other-app-secret")
    assert r.status_code == 401 and "does not match" in r.json()["detail"]
    body, headers = intercom_request(payload)
    del headers["X-Hub-Signature"]
    assert client.post("/v1/webhooks/intercom", content=body, headers=headers).status_code == 401
    old = _notif("conversation.user.created", intercom_conversation(), created_at=int(time.time()) - 3 * 86_400)
    r = _intercom(client, old)
    assert r.status_code == 401 and "created more than" in r.json()["detail"]
    no_time = _notif("conversation.user.created", intercom_conversation())
    no_time["created_at"] = None
    r = _intercom(client, no_time)
    assert r.status_code == 400 and "created_at" in r.json()["detail"]
    wrong = _notif("conversation.user.created", intercom_conversation())
    wrong["data"]["item"]["contacts"] = "everyone"
    r = _intercom(client, wrong)
    assert r.status_code == 400 and "contacts" in r.json()["detail"]
    assert INTERCOM_SECRET not in r.text


# -- telephony -------------------------------------------------------------------------------------


def test_screenpop_raw_plus_tel_uri_and_post(served: tuple[httpx.Client, Path, Settings]) -> None:
    client, log, _ = served
    key = auth("telephony")
    # A CTI templating the URL by hand: the + is sent raw and decodes as a space.
    r = client.get(f"/v1/screenpop?phone={VIP_US_PHONE}", headers=key)
    assert r.status_code == 200 and r.json()["caller"] == "known" and r.json()["tier"] == "VIP", r.text
    # The same number as a space-led national-looking string is never read with the default region (DE).
    r = client.get("/v1/screenpop?phone=+030901820", headers=key)
    assert r.status_code == 200 and r.json()["caller"] != "known"
    for tel in ("tel:+1-415-555-0100;ext=12", "tel:555-0100;phone-context=+1-415", "tel:+1-415-555-0100"):
        r = client.get("/v1/screenpop", params={"phone": tel}, headers=key)
        assert r.status_code == 200 and r.json()["caller"] == "known", (tel, r.text)
    r = client.get("/v1/screenpop", params={"phone": "tel:7042;phone-context=example.com"}, headers=key)
    assert r.status_code == 200 and r.json()["caller"] == "withheld"
    # the card takes the raw + too
    r = client.get(f"/v1/screenpop/card?phone={VIP_US_PHONE}&key={KEYS['telephony']}")
    assert r.status_code == 200 and "Known customer" in r.text
    # POST: the number in the body
    r = client.post("/v1/screenpop", json={"phone": "tel:+1-415-555-0100"}, headers=key)
    assert r.status_code == 200 and r.json()["tier"] == "VIP", r.text
    r = client.post("/v1/screenpop", json={"phone": SMALL_PHONE}, headers=key)
    assert r.status_code == 200 and r.json()["caller"] == "known"
    r = client.post("/v1/screenpop", json={}, headers=key)
    assert r.status_code == 200 and r.json()["caller"] == "withheld"
    r = client.post("/v1/screenpop", json={"phone": 4930901820}, headers=key)
    assert r.status_code == 400 and "phone" in r.json()["detail"]
    r = client.post("/v1/screenpop", json={"number": "+4930901820"}, headers=key)
    assert r.status_code == 400 and "number" in r.json()["detail"]
    assert client.post("/v1/screenpop", json={"phone": SMALL_PHONE}, headers=auth("helpdesk")).status_code == 403
    text = log.read_text()
    for fragment in ("555-0100", "5550100", "901820", "555123"):
        assert fragment not in text, fragment


def test_basic_auth_with_the_key_as_password(served: tuple[httpx.Client, Path, Settings]) -> None:
    client, _, s = served
    # Twilio Studio's HTTP widget: credentials in the URL, no headers of its own
    url = f"http://twilio:{KEYS['telephony']}@{s.api.host}:{s.api.port}/v1/screenpop?phone={VIP_US_PHONE}"
    r = httpx.get(url, timeout=5)
    assert r.status_code == 200 and r.json()["tier"] == "VIP", r.text
    r = httpx.post(f"http://{s.api.host}:{s.api.port}/v1/screenpop", json={"phone": VIP_US_PHONE},
                   auth=("any-name", KEYS["telephony"]), timeout=5)  # fmt: skip
    assert r.status_code == 200 and r.json()["caller"] == "known"
    r = httpx.get(url.replace(KEYS["telephony"], "not-a-key-at-all-1234"), timeout=5)
    assert r.status_code == 401
    r = httpx.get(url.replace(KEYS["telephony"], KEYS["chatbot"]), timeout=5)
    assert r.status_code == 403
    for broken in ("Basic !!!", "Basic " + "bm8tY29sb24=", "Basic"):  # not base64; "no-colon"; empty
        r = client.get("/v1/screenpop", params={"phone": SMALL_PHONE}, headers={"Authorization": broken})
        assert r.status_code == 401, broken


def test_cors_preflight_for_configured_origins_only(served: tuple[httpx.Client, Path, Settings]) -> None:
    client, _, _ = served
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-api-key, content-type",
    }
    r = client.options("/v1/screenpop", headers=preflight)
    assert r.status_code in (200, 204), r.text
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "x-api-key" in r.headers["access-control-allow-headers"].lower()
    r = client.post("/v1/screenpop", json={"phone": SMALL_PHONE}, headers={**auth("telephony"), "Origin": ORIGIN})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    r = client.options("/v1/screenpop", headers={**preflight, "Origin": "https://evil.example.net"})
    assert r.headers.get("access-control-allow-origin") != "https://evil.example.net"
    r = client.get("/v1/screenpop", params={"phone": SMALL_PHONE},
                   headers={**auth("telephony"), "Origin": "https://evil.example.net"})  # fmt: skip
    assert "access-control-allow-origin" not in r.headers


# -- Genesys Cloud data action -------------------------------------------------------------------

GENESYS = Path(__file__).resolve().parents[3] / "deploy" / "integrations" / "genesys-cloud-screenpop.json"


def _genesys_call(s: Settings, action: dict[str, Any], phone: str) -> dict[str, Any]:
    """What Genesys sends for the action (Basic Auth credential: any user, the key as password)."""
    request = action["config"]["request"]
    # the one Velocity construct the template uses: $esc.jsonString(${input.phone})
    body = request["requestTemplate"].replace("$esc.jsonString(${input.phone})", json.dumps(phone)[1:-1])
    path = httpx.URL(request["requestUrlTemplate"]).path
    r = httpx.request(request["requestType"], f"http://{s.api.host}:{s.api.port}{path}", content=body.encode(),
                      headers=request["headers"], auth=("genesys", KEYS["telephony"]), timeout=5)  # fmt: skip
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def _translate(action: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """Genesys's response step: JSONPath per output, its default when the path finds nothing, the success template."""
    response = action["config"]["response"]
    values: dict[str, str] = {}
    for name, path in response["translationMap"].items():
        found = jsonpath_ng.parse(path).find(answer)
        if found:
            values[name] = json.dumps(found[0].value)
        else:
            assert name in response["translationMapDefaults"], f"{path} found nothing and {name} has no default"
            values[name] = response["translationMapDefaults"][name]
    template = response["successTemplate"]
    for name, value in values.items():
        template = template.replace("${" + name + "}", value)
    out: dict[str, Any] = json.loads(template)
    return out


def test_genesys_export_maps_the_real_screenpop_answer(served: tuple[httpx.Client, Path, Settings]) -> None:
    _, _, s = served
    action = json.loads(GENESYS.read_text())
    schema = action["contract"]["output"]["successSchema"]
    outputs = set(schema["properties"])
    assert set(action["config"]["response"]["translationMap"]) == outputs
    # Call.Ani as Genesys hands it to a flow: a tel: URI
    answer = _genesys_call(s, action, "tel:+14155550100")
    for name, path in action["config"]["response"]["translationMap"].items():
        found = jsonpath_ng.parse(path).find(answer)
        assert len(found) == 1 and found[0].value is not None, f"{name}: {path} does not resolve"
    out = _translate(action, answer)
    assert set(out) == outputs
    jsonschema.validate(out, schema)
    assert out["caller"] == "known" and out["tier"] == "VIP" and out["queue"] == answer["escalation"]["queue"]
    # an unknown caller: every output is there, scores null
    unknown = _translate(action, _genesys_call(s, action, "tel:+44-20-7946-0000"))
    assert set(unknown) == outputs and unknown["caller"] == "unknown" and unknown["clvScore"] is None
    # a withheld number (Genesys sends an empty ANI)
    assert _translate(action, _genesys_call(s, action, ""))["caller"] == "withheld"
