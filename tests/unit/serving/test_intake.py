"""POST /v1/events validation: every invalid item named, nothing half-accepted (no broker needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from router.serving.intake import BatchRejected, EventIntake
from router.serving.publisher import EventPublisher
from router.settings import ApiSettings, KafkaSettings, StreamSettings
from schemas.events import Usage

INTAKE = EventIntake(EventPublisher(KafkaSettings()), ApiSettings(events_batch_max=3), StreamSettings())
AT = (datetime.now(UTC) - timedelta(hours=1)).isoformat()


def usage(i: int, **extra: object) -> dict[str, object]:
    return {"type": "usage", "event_id": f"u{i}", "customer_id": "C1", "occurred_at": AT, **extra}


def body(*events: dict[str, object]) -> bytes:
    return msgspec.json.encode({"events": list(events)})


def test_numbers_in_any_json_form_json_schema_allows_become_the_canonical_event() -> None:
    (a, b) = INTAKE.validate(body(usage(1, logins=30002.0), usage(2, logins="7")))
    assert isinstance(a, Usage) and a.logins == 30002 and isinstance(b, Usage) and b.logins == 7
    assert b'"logins":30002' in msgspec.json.encode(a)


def test_every_invalid_item_is_named_with_its_index() -> None:
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    with pytest.raises(BatchRejected) as err:
        INTAKE.validate(
            body(
                usage(0, logins=2.5),
                {"type": "erasure_requested", "event_id": "e", "customer_id": "C1", "occurred_at": AT},
                usage(2, occurred_at=future),
            )
        )
    problems = err.value.body().items
    assert [p.index for p in problems] == [0, 1, 2]
    assert "logins" in problems[0].problem and "admin action" in problems[1].problem
    assert "future" in problems[2].problem
    assert err.value.status_code == 400 and "3 invalid event(s)" in err.value.message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (body(usage(0), usage(1), usage(2), usage(3)), "at most 3 events"),
        (b'{"events": []}', "at least one"),
        (b'{"events": [], "extra": 1}', "extra"),
        (b"\xff", "not valid JSON"),
        (b'{"events": [{"type": "usage"', "not valid JSON"),
    ],
)
def test_malformed_batches(raw: bytes, message: str) -> None:
    with pytest.raises(BatchRejected, match=message):
        INTAKE.validate(raw)
