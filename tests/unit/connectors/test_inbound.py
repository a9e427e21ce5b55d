"""What helpdesks really send: blank placeholders, display text, odd values. Pure, no I/O."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import msgspec
import pytest

from router.connectors import freshdesk, zendesk
from router.connectors.base import (
    category_of,
    channel_of,
    effective_priority,
    severity_of,
    text_or_none,
    ticket_number,
)
from router.errors import BadInput, Forbidden, Unauthorized
from schemas.api import CustomerRef

INTEGRATIONS = Path(__file__).resolve().parents[3] / "deploy" / "integrations"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("", None), ("   ", None), ("-", None), (None, None), (True, None), (42, "42"), (4.0, "4"), (" a@b.c ", "a@b.c"),
     ("x" * 300, None)],
)  # fmt: skip
def test_blank_is_absent(value: object, expected: str | None) -> None:
    assert text_or_none(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(4711, "4711"), ("4711", "4711"), ("#0042", "42"), ("0", "0"), ("{{ticket.id}}", None), ("", None),
     ("12a", None), ("1" * 19, None), (None, None)],
)  # fmt: skip
def test_ticket_numbers(value: object, expected: str | None) -> None:
    assert ticket_number(value) == expected


def test_enums_in_any_case_and_display_text() -> None:
    assert [severity_of(v) for v in ("Normal", "URGENT", "Medium", " high ", 1, "4", "", "soon", None)] == [
        "normal", "urgent", "normal", "high", "low", "urgent", None, None, None,
    ]  # fmt: skip
    assert [channel_of(v) for v in ("Web Form", "Phone call (incoming)", "Mail", "chat", 2, "Portal", "api", "")] == [
        "web", "phone", "email", "chat", "web", "web", "ticket", "ticket",
    ]  # fmt: skip
    assert [category_of(v) for v in ("Billing", "invoice", "TECHNICAL", "", "refrigerators")] == [
        "billing", "billing", "technical", "general", "general",
    ]  # fmt: skip


def test_priority_is_raised_to_the_tier_floor_never_lowered() -> None:
    floors = {"VIP": "high", "Premium": "normal"}
    assert effective_priority(None, "VIP", floors) == "high"
    assert effective_priority("urgent", "VIP", floors) == "urgent"
    assert effective_priority("low", "Premium", floors) == "normal"
    assert effective_priority("low", "Basic", floors) == "low"
    assert effective_priority(None, "Standard", floors) == "normal"


def test_zendesk_template_with_blanks_and_display_text() -> None:
    body = msgspec.json.encode({"ticket": {
        "id": "4711", "priority": "Normal", "channel": "Web Form", "category": "",
        "subject": "ignored", "requester": {"external_id": "", "email": "Boss@Example.COM", "phone": ""}}})  # fmt: skip
    inbound = zendesk.decode_webhook(body)
    assert inbound.ticket == "4711" and inbound.priority == "normal" and inbound.channel == "web"
    assert inbound.category == "general" and inbound.customers == (CustomerRef(email="Boss@Example.COM"),)
    everything_blank = zendesk.decode_webhook(b'{"ticket": {"id": 1, "priority": "", "channel": "", "requester": {}}}')
    assert everything_blank.customers == () and everything_blank.priority is None
    assert everything_blank.channel == "email"  # Zendesk's usual channel when the template leaves it out
    all_refs = zendesk.decode_webhook(
        b'{"ticket": {"id": 2, "requester": {"external_id": "C1", "email": "a@b.co", "phone": "+4930901820"}}}'
    )
    assert [r.customer_id or r.email or r.phone for r in all_refs.customers] == ["C1", "a@b.co", "+4930901820"]
    assert zendesk.decode_webhook(b'{"ticket": {"id": "{{ticket.id}}"}}').ticket == ""  # routed, nothing to write


@pytest.mark.parametrize(
    ("body", "names"),
    [(b'{"ticket": {"id": 1, "requester": {"email": 5}}}', "requester.email"), (b"{}", "ticket"),
     (b"not json", "zendesk webhook body"), (b'{"ticket": {"id": [1]}}', "ticket.id")],
)  # fmt: skip
def test_zendesk_body_that_is_not_the_template_is_a_400_naming_the_field(body: bytes, names: str) -> None:
    with pytest.raises(BadInput) as err:
        zendesk.decode_webhook(body)
    assert names in err.value.message


def test_freshdesk_numbers_and_display_text() -> None:
    inbound = freshdesk.decode_webhook(
        b'{"ticket": {"id": 501, "priority": 4, "source": 3, "requester": {"email": "", "phone": "+49 30 901820"}}}'
    )
    assert (inbound.ticket, inbound.priority, inbound.channel) == ("501", "urgent", "phone")
    assert inbound.customers == (CustomerRef(phone="+49 30 901820"),)
    inbound = freshdesk.decode_webhook(b'{"ticket": {"id": "7", "priority": "Medium", "source": "Portal"}}')
    assert (inbound.priority, inbound.channel, inbound.customers) == ("normal", "web", ())


def test_freshdesk_token_from_header_or_basic_password() -> None:
    token = "inbound-token-0123456789"
    freshdesk.verify_token(token, token, None)
    basic = "Basic " + base64.b64encode(f"any-user:{token}".encode()).decode()
    freshdesk.verify_token(token, None, basic)
    with pytest.raises(Forbidden):
        freshdesk.verify_token("", token, None)
    for header, authorization in ((None, None), ("wrong", None), (None, "Basic !!!"), (None, "Bearer " + token)):
        with pytest.raises(Unauthorized) as err:
            freshdesk.verify_token(token, header, authorization)
        assert token not in err.value.message


def _render(template: str, values: dict[str, str]) -> bytes:
    for placeholder, value in values.items():
        template = template.replace("{{" + placeholder + "}}", value)
    assert "{{" not in template, template
    return template.encode()


def test_the_documented_templates_read_as_the_helpdesks_render_them() -> None:
    trigger = json.loads((INTEGRATIONS / "zendesk-trigger.json").read_text())["trigger"]
    (action,) = trigger["actions"]
    assert action["field"] == "notification_webhook" and trigger["conditions"]["all"][0]["value"] == "Create"
    body = _render(action["value"][1], {"ticket.id": "4711", "ticket.priority": "Normal", "ticket.via": "Web Form",
                                        "ticket.requester.external_id": "", "ticket.requester.email": "a@b.example",
                                        "ticket.requester.phone": ""})  # fmt: skip
    inbound = zendesk.decode_webhook(body)
    assert (inbound.ticket, inbound.priority, inbound.channel) == ("4711", "normal", "web")
    assert inbound.customers == (CustomerRef(email="a@b.example"),)
    body = _render((INTEGRATIONS / "freshdesk-webhook.json").read_text(),
                   {"ticket.id": "77", "ticket.priority": "Urgent", "ticket.source": "Phone",
                    "ticket.requester.email": "", "ticket.requester.phone": "+49 30 901820"})  # fmt: skip
    inbound = freshdesk.decode_webhook(body)
    assert (inbound.ticket, inbound.priority, inbound.channel) == ("77", "urgent", "phone")
    assert inbound.customers == (CustomerRef(phone="+49 30 901820"),)
