"""Contracts: committed JSON Schemas match the Structs; bad events are rejected precisely."""

from __future__ import annotations

import msgspec
import pytest

from schemas.events import Payment, SubscriptionChanged, event_decoder
from schemas.export import OUT, SCHEMAS, render


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_committed_json_schema_matches_structs(name: str) -> None:
    path = OUT / f"{name}.schema.json"
    assert path.exists(), f"{path.name} missing: run `router export-schemas`"
    assert path.read_text() == render(SCHEMAS[name]), f"{path.name} drifted: run `router export-schemas`"


def test_every_event_type_is_in_the_union_schema() -> None:
    schema = msgspec.json.decode(render(SCHEMAS["customer-event"]))
    tags = {d["properties"]["type"]["enum"][0] for d in schema["$defs"].values() if "type" in d.get("properties", {})}
    assert tags == {
        "customer_profile", "order_placed", "payment", "subscription_changed", "ticket_opened",
        "ticket_resolved", "usage", "nps_response", "outcome", "erasure_requested",
    }  # fmt: skip


def test_occurred_at_must_carry_a_timezone_and_is_normalised_to_utc() -> None:
    base = b'{"type":"usage","event_id":"e","customer_id":"c","logins":1,"occurred_at":'
    with pytest.raises(msgspec.ValidationError, match="timezone"):
        event_decoder.decode(base + b'"2026-01-01T10:00:00"}')
    e = event_decoder.decode(base + b'"2026-01-01T10:00:00+02:00"}')
    assert e.occurred_at.isoformat() == "2026-01-01T08:00:00+00:00"


def test_cross_field_rules() -> None:
    with pytest.raises(ValueError, match="days_late"):
        msgspec.convert(
            {"event_id": "e", "customer_id": "c", "occurred_at": "2026-01-01T00:00:00Z", "invoice_id": "i",
             "amount": 1, "status": "paid", "days_late": 3},
            Payment,
        )  # fmt: skip
    with pytest.raises(ValueError, match="mrr_delta must be <= 0"):
        msgspec.convert(
            {"event_id": "e", "customer_id": "c", "occurred_at": "2026-01-01T00:00:00Z", "change": "cancel",
             "mrr_delta": 5},
            SubscriptionChanged,
        )  # fmt: skip


def test_unknown_event_type_and_unknown_fields_are_rejected() -> None:
    with pytest.raises(msgspec.ValidationError, match="Invalid value 'refund'"):
        event_decoder.decode(b'{"type":"refund","event_id":"e","customer_id":"c","occurred_at":"2026-01-01T00:00:00Z"}')
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        event_decoder.decode(
            b'{"type":"usage","event_id":"e","customer_id":"c","occurred_at":"2026-01-01T00:00:00Z","x":1}'
        )
