"""What the generated OpenAPI document cannot say by itself, added once when the app is built.

Litestar derives the schema from the handlers' types, but not the rules the contracts check
themselves: unknown fields are refused (``forbid_unknown_fields``), a customer is named by
exactly one of id, e-mail or phone, contact times lie between 2000 and one day from now, and
the signed webhooks read their body as raw bytes (to verify the signature) yet expect JSON of a
known shape. It cannot declare the ``Retry-After`` header of a 429 or the Bearer and Basic
alternatives to ``X-API-Key`` either, and has no examples.

The document describes what the service accepts, no narrower: a phone number in any notation,
any e-mail address, any time in the accepted window. Where a rule cannot be written as a schema
(a number that cannot be parsed, a time out of the window) the description says so and the
service answers 400 naming the field. Test tools that need narrower data narrow what they
generate, never this document (``tests/integration/api/test_schemathesis.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar.openapi.spec import (
    Example,
    OpenAPI,
    OpenAPIFormat,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    RequestBody,
    Schema,
)

import schemas.api
from schemas.api import (
    Action,
    ClassifyRequest,
    Conversation,
    CustomerRef,
    Decision,
    ErrorBody,
    Escalation,
    FreshdeskWebhook,
    HandoffDecision,
    HandoffRequest,
    OverrideRequest,
    ScoreCard,
    ScreenPop,
    SlaDeadline,
    ZendeskWebhook,
)

__all__ = ["refine"]

PHONE_FORMAT = "phone"
"""``format`` of phone number fields: any common notation (a name for tools; validators ignore it)."""

_EMAIL = Schema(
    type=OpenAPIType.STRING,
    format=OpenAPIFormat.EMAIL,
    min_length=3,
    max_length=254,
    description="Any e-mail address; compared lower-cased. One with a space or without a dot in its domain gets 400.",
)
_PHONE = Schema(
    type=OpenAPIType.STRING,
    format=PHONE_FORMAT,  # type: ignore[arg-type]
    min_length=3,
    max_length=32,
    description="A phone number in any common notation (`+49 30 901820`, `0049 30 901820`, `030 901820`, "
    "`(030) 901-820`, `+1 (415) 555-0132`); without a country code it is read in the configured default region. "
    "Normalised to E.164 and looked up by keyed hash; one that cannot be parsed gets 400.",
)
_WHEN = "RFC 3339 date-time with an offset, between 2000-01-01 and one day from now (else 400)"
_NULL = Schema(type=OpenAPIType.NULL)
_SIGNED_BODIES = {
    "/v1/webhooks/zendesk": "ZendeskWebhook",
    "/v1/webhooks/generic": "ClassifyRequest",
    "/v1/webhooks/freshdesk": "FreshdeskWebhook",
}
_RETRY_AFTER = OpenAPIHeader(
    schema=Schema(type=OpenAPIType.INTEGER, minimum=1),
    required=True,
    description="Seconds until the key's rate limit admits a request again.",
)


def refine(openapi: OpenAPI) -> None:
    """Add the contracts' own rules, headers, alternatives and examples (in place, before it is served)."""
    assert openapi.components is not None
    components = openapi.components.schemas
    components.update(_from_msgspec(ZendeskWebhook))
    components.update(_from_msgspec(FreshdeskWebhook))
    for name, schema in components.items():
        struct = getattr(schemas.api, name, None)
        if (
            isinstance(struct, type)
            and issubclass(struct, msgspec.Struct)
            and struct.__struct_config__.forbid_unknown_fields
        ):
            schema.additional_properties = False
    _exactly_one(components["CustomerRef"], "customer_id", "email", "phone")
    _exactly_one(components["ZendeskRequester"], "external_id", "email", "phone", at_least=True)
    _timestamp(components["ClassifyRequest"], "received_at")
    _timestamp(components["OutcomeRequest"], "occurred_at")
    reload = components["ReloadRequest"]
    assert isinstance(reload, Schema) and reload.properties is not None
    reload.properties["path"] = Schema(
        one_of=[Schema(type=OpenAPIType.STRING, min_length=1, max_length=4096), _NULL],
        description="Absent or null: the configured file. Otherwise a file on the server; one that cannot be "
        "read or loaded answers 422 and the old version stays.",
    )
    for path, name in _SIGNED_BODIES.items():
        item = (openapi.paths or {})[path]
        assert item.post is not None
        item.post.request_body = RequestBody(
            content={"application/json": OpenAPIMediaType(schema=Reference(ref=f"#/components/schemas/{name}"))},
            required=True,
            description="The exact bytes that were signed",
        )
    for operation in _operations(openapi):
        _bearer_too(operation)
        _retry_after(operation)
    _examples(openapi)


def _operations(openapi: OpenAPI) -> list[Operation]:
    methods = ("get", "put", "post", "delete", "patch")
    return [op for item in (openapi.paths or {}).values() for m in methods if (op := getattr(item, m)) is not None]


def _bearer_too(operation: Operation) -> None:
    """An API key is accepted as ``Authorization: Bearer <key>`` and as the password of HTTP Basic as
    well (``router.api.auth.require_key``)."""
    if operation.security and {"ApiKey": []} in operation.security:
        schemes: tuple[dict[str, list[str]], ...] = ({"Bearer": []}, {"Basic": []})
        alternatives = [s for s in schemes if s not in operation.security]
        operation.security = [*operation.security, *alternatives]


def _retry_after(operation: Operation) -> None:
    """Every 429 carries ``Retry-After`` (``router.errors.RateLimited``)."""
    response = (operation.responses or {}).get("429")
    if isinstance(response, OpenAPIResponse):
        response.headers = {**(response.headers or {}), "Retry-After": _RETRY_AFTER}


def _exactly_one(schema: Schema | Reference, *fields: str, at_least: bool = False) -> None:
    """Name the customer by exactly one of ``fields`` (``at_least``: one or more, first wins)."""
    assert isinstance(schema, Schema) and schema.properties is not None
    props = schema.properties
    for name in fields:
        old = props[name]
        one = _EMAIL if name == "email" else _PHONE if name == "phone" else _string_of(old)
        props[name] = Schema(one_of=[one, _NULL])
    branches: list[Schema | Reference] = [
        Schema(required=[name], properties={name: Schema(type=OpenAPIType.STRING)}) for name in fields
    ]
    if at_least:
        schema.any_of = branches
    else:
        schema.one_of = branches


def _string_of(schema: Schema | Reference) -> Schema:
    """The string alternative of a generated ``string | null`` field, with its length limits."""
    assert isinstance(schema, Schema)
    for alt in schema.one_of or schema.any_of or []:
        if isinstance(alt, Schema) and alt.type == OpenAPIType.STRING:
            return Schema(
                type=OpenAPIType.STRING,
                min_length=alt.min_length or schema.min_length,
                max_length=alt.max_length or schema.max_length,
            )
    return Schema(type=OpenAPIType.STRING, min_length=schema.min_length, max_length=schema.max_length)


def _timestamp(schema: Schema | Reference, field: str) -> None:
    assert isinstance(schema, Schema) and schema.properties is not None
    when = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.DATE_TIME, description=_WHEN)
    schema.properties[field] = Schema(one_of=[when, _NULL], description=_WHEN)


# --- examples: built from the contracts themselves, so they cannot drift from the schema ---------------

_AT = datetime(2026, 11, 25, 9, 2, tzinfo=UTC)
_SLA_VIP = SlaDeadline(due_at=datetime(2026, 11, 25, 10, 2, tzinfo=UTC), target_hours=1.0, clock="calendar",
                       calendar="24x7")  # fmt: skip
_SLA_STANDARD = SlaDeadline(due_at=datetime(2026, 11, 27, 9, 2, tzinfo=UTC), target_hours=24.0,
                            clock="business_hours", calendar="de_office")  # fmt: skip
_SENIOR = Escalation(queue="vip-tech", role="senior_technician", skill="technical")
_UPSELL = Action(code="upsell_opportunity", label="Mention the annual plan: it fits their usage")
_REQUESTS: dict[str, dict[str, msgspec.Struct]] = {
    "/v1/classify": {
        "by customer id": ClassifyRequest(
            customer=CustomerRef(customer_id="C000042"), channel="phone", category="technical", priority="high"
        ),
        "by phone number": ClassifyRequest(customer=CustomerRef(phone="+49 30 901820"), channel="phone"),
        "by e-mail": ClassifyRequest(
            customer=CustomerRef(email="Anna.Schmidt@example.com"),
            channel="email",
            category="billing",
            text_sentiment=-0.4,
        ),
    },
    "/v1/handoff": {
        "customer asks for a person": HandoffRequest(
            customer=CustomerRef(customer_id="C000042"),
            conversation=Conversation(bot_turns=3, failed_intents=1, asked_for_human=True, category="billing"),
        ),
    },
    "/v1/customers/{customer_id}/override": {
        "treat as VIP for a week": OverrideRequest(tier="VIP", reason="key account in renewal", expires_in_hours=168),
    },
}
_RESPONSES: dict[tuple[str, str], dict[str, msgspec.Struct]] = {
    ("/v1/classify", "200"): {
        "known VIP customer": Decision(
            decision_id="d-19ab3f2c7e1-4d2a-9f",
            customer_known=True,
            tier="VIP",
            sla=_SLA_VIP,
            escalation=_SENIOR,
            next_best_actions=[_UPSELL],
            scores=ScoreCard(
                clv_score=96.1,
                churn_risk=4.2,
                upsell=61.0,
                advocacy=70.3,
                sentiment="positive",
                last_interaction="product usage",
                last_interaction_at=_AT,
            ),
            reasons=["Top 4 % customer by value", "Technical problem of a VIP: senior technician at once"],
            model_version="churn-v1",
            policy_version="2026-11-25.1",
        ),
    },
    ("/v1/screenpop", "200"): {
        "known caller": ScreenPop(
            caller="known",
            tier="Premium",
            clv_score=85.0,
            churn_risk=12.0,
            sentiment="neutral",
            last_interaction="positive product review",
            last_interaction_at=_AT,
            recommendation="Standard service; upsell opportunity",
            next_best_actions=[_UPSELL],
            escalation=Escalation(queue="priority", role="experienced_agent"),
            reasons=["Top 15 % customer by value"],
            decision_id="d-19ab3f2c7e2-5e3b-0a",
        ),
    },
    ("/v1/handoff", "200"): {
        "hand over now": HandoffDecision(
            handover=True,
            queue="billing",
            role="agent",
            reason="The customer asked for a person",
            tier="Standard",
            sla=_SLA_STANDARD,
            decision_id="d-19ab3f2c7e3-6f4c-1b",
        ),
    },
}
_BAD_PHONE = {
    "phone number that cannot be parsed": ErrorBody(400, "bad_request", "customer.phone: phone number cannot be parsed")
}
_RATE_LIMITED = {
    "over the rate limit": ErrorBody(429, "too_many_requests", "rate limit of 200 requests/s for this key exceeded")
}


def _example_set(values: Mapping[str, msgspec.Struct]) -> dict[str, Example | Reference]:
    return {name: Example(summary=name, value=msgspec.to_builtins(value)) for name, value in values.items()}


def _media(body: Any) -> OpenAPIMediaType | None:
    content = getattr(body, "content", None) or {}
    media = content.get("application/json")
    return media if isinstance(media, OpenAPIMediaType) else None


def _examples(openapi: OpenAPI) -> None:
    paths = openapi.paths or {}
    for path, values in _REQUESTS.items():
        for operation in (op for m in ("post", "put") if (op := getattr(paths[path], m)) is not None):
            media = _media(operation.request_body)
            if media is not None:
                media.examples = _example_set(values)
    for (path, status), values in _RESPONSES.items():
        operation = paths[path].get or paths[path].post
        assert operation is not None and operation.responses is not None
        media = _media(operation.responses.get(status))
        if media is not None:
            media.examples = _example_set(values)
    for path in ("/v1/classify", "/v1/handoff"):
        operation = paths[path].post
        assert operation is not None and operation.responses is not None
        media = _media(operation.responses.get("400"))
        if media is not None:
            media.examples = _example_set(_BAD_PHONE)
    for operation in _operations(openapi):
        media = _media((operation.responses or {}).get("429"))
        if media is not None:
            media.examples = _example_set(_RATE_LIMITED)


def _from_msgspec(tp: type) -> dict[str, Schema]:
    """Component schemas of a contract no handler declares as its body (msgspec writes them)."""
    _, defs = msgspec.json.schema_components([tp], ref_template="#/components/schemas/{name}")
    return {name: _schema(d) for name, d in defs.items()}


def _convert(d: dict[str, Any]) -> Schema | Reference:
    return Reference(ref=d["$ref"]) if "$ref" in d else _schema(d)


def _schema(d: dict[str, Any]) -> Schema:
    kind = d.get("type")
    return Schema(
        title=d.get("title"),
        description=d.get("description"),
        type=OpenAPIType(kind) if kind else None,
        properties={k: _convert(v) for k, v in d["properties"].items()} if "properties" in d else None,
        required=d.get("required"),
        any_of=[_convert(v) for v in d["anyOf"]] if "anyOf" in d else None,
        enum=d.get("enum"),
        min_length=d.get("minLength"),
        max_length=d.get("maxLength"),
    )
