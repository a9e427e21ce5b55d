"""The published OpenAPI document is the real contract: real input validates against it, it
declares what the service does (Retry-After, the Bearer alternative) and its examples conform."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from router.api.app import create_app
from router.settings import AuthSettings, KafkaSettings, RedisSettings, Settings

_NOWHERE = Settings(
    auth=AuthSettings(dev_mode=True),
    kafka=KafkaSettings(bootstrap="127.0.0.1:1"),
    redis=RedisSettings(url="redis://127.0.0.1:1/0"),
)
DOC: dict[str, Any] = create_app(_NOWHERE).openapi_schema.to_schema()


def _errors(instance: object, ref: str) -> list[str]:
    """Validation errors of ``instance`` against a component (JSON Schema 2020-12, as OpenAPI 3.1 is)."""
    schema = {**DOC, "$ref": ref}
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    return [e.message for e in validator.iter_errors(instance)]


# What real callers send, all of which the service accepts (tests/integration/api/test_decisions.py
# classifies by such numbers and addresses).
REAL_REQUESTS = [
    {"customer": {"phone": "+1 (415) 555-0132"}},
    {"customer": {"phone": "030 901820"}},
    {"customer": {"phone": "0049 30 901820"}},
    {"customer": {"phone": "+44 7911 123456"}},
    {"customer": {"phone": "+49 151 23456789"}},
    {"customer": {"email": "Anna.Schmidt@Mail.Example.co.uk"}},
    {"customer": {"email": "first.last+support@sub.example.museum"}},
    {"customer": {"customer_id": "C1"}, "received_at": "2019-05-31T23:59:59+02:00"},
    {"customer": {"customer_id": "C1"}, "received_at": "2026-01-31T08:15:00.250-05:00"},
    {"customer": {"customer_id": "C1"}, "received_at": "2000-01-05T00:00:00Z"},
]


@pytest.mark.parametrize("body", REAL_REQUESTS, ids=lambda b: str(next(iter(b["customer"].values()))))
def test_real_requests_validate_against_the_published_contract(body: dict[str, Any]) -> None:
    assert _errors(body, "#/components/schemas/ClassifyRequest") == []


def test_the_contract_still_refuses_what_the_service_refuses() -> None:
    assert _errors(
        {"customer": {"customer_id": "C1", "email": "a@example.com"}}, "#/components/schemas/ClassifyRequest"
    )
    assert _errors({"customer": {"customer_id": "C1"}, "priorty": "high"}, "#/components/schemas/ClassifyRequest")
    assert _errors({"customer": {"phone": "+49" + "0" * 40}}, "#/components/schemas/ClassifyRequest")
    assert _errors({"customer": {"customer_id": "C1"}, "received_at": 20260101}, "#/components/schemas/ClassifyRequest")


def test_the_reload_path_is_documented_as_a_path() -> None:
    assert _errors({"path": "/etc/router/policy.toml"}, "#/components/schemas/ReloadRequest") == []


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (m, path, op)
        for path, item in DOC["paths"].items()
        for m, op in item.items()
        if m in ("get", "put", "post", "delete")
    ]


def test_every_429_declares_retry_after_and_every_keyed_operation_accepts_a_bearer_key() -> None:
    schemes = DOC["components"]["securitySchemes"]
    assert schemes["Bearer"] == {**schemes["Bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["Basic"] == {**schemes["Basic"], "type": "http", "scheme": "basic"}
    keyed = [(m, p, op) for m, p, op in _operations() if op.get("security")]
    assert len(keyed) >= 10
    for method, path, op in keyed:
        assert {"ApiKey": []} in op["security"] and {"Bearer": []} in op["security"], (method, path)
        assert {"Basic": []} in op["security"], (method, path)
        retry_after = op["responses"]["429"]["headers"]["Retry-After"]
        assert retry_after["required"] is True and retry_after["schema"]["type"] == "integer", (method, path)


def test_examples_exist_and_conform_to_their_schemas() -> None:
    seen = 0
    for method, path, op in _operations():
        bodies = [op.get("requestBody", {}), *op["responses"].values()]
        for body in bodies:
            media = body.get("content", {}).get("application/json", {})
            for name, example in media.get("examples", {}).items():
                seen += 1
                assert _errors(example["value"], media["schema"]["$ref"]) == [], (method, path, name)
    assert seen >= 10
    classify = DOC["paths"]["/v1/classify"]["post"]
    assert len(classify["requestBody"]["content"]["application/json"]["examples"]) == 3
    assert classify["responses"]["200"]["content"]["application/json"]["examples"]


def test_a_real_event_time_validates_against_the_event_ingest_contract() -> None:
    usage = {"type": "usage", "event_id": "e-1", "customer_id": "C1", "logins": 3}
    for when in ("2026-01-31T08:15:00.250-05:00", "2019-05-31T23:59:59+02:00", "1999-12-31T23:00:00Z"):
        assert _errors({"events": [{**usage, "occurred_at": when}]}, "#/components/schemas/EventBatch") == [], when
