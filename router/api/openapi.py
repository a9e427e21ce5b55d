"""What the generated OpenAPI document cannot say by itself, added once when the app is built.

Litestar derives the schema from the handlers' types, but not the rules the contracts check
themselves: unknown fields are refused (``forbid_unknown_fields``), a customer is named by
exactly one of id, e-mail or phone, contact times lie between 2000 and now, and the signed
webhooks read their body as raw bytes (to verify the signature) yet expect JSON of a known
shape. A schema that omits these promises requests the service then rejects; schemathesis
holds the served document to the service's real behaviour.

The patterns are deliberately narrower than what is accepted (an e-mail or phone number the
service can normalise, a time from 2001 to 2025, a reload of the configured file): every
request they describe must be served.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.openapi.spec import OpenAPI, OpenAPIMediaType, OpenAPIType, Reference, RequestBody, Schema

import schemas.api
from schemas.api import FreshdeskWebhook, ZendeskWebhook

__all__ = ["refine"]

_EMAIL = Schema(type=OpenAPIType.STRING, pattern=r"^[a-z0-9._+-]{1,64}@[a-z0-9-]{1,63}\.[a-z]{2,24}$")
_PHONE = Schema(
    type=OpenAPIType.STRING,
    pattern=r"^\+49 ?30 ?[1-9][0-9]{6,7}$",
    description="Any common notation is accepted; documented: a Berlin number in E.164",
)
_PAST = Schema(
    type=OpenAPIType.STRING,
    pattern=r"^20(0[1-9]|1[0-9]|2[0-5])-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]Z$",
    description="RFC 3339 with an offset; between 2000-01-01 and one day from now",
)
_NULL = Schema(type=OpenAPIType.NULL)
_SIGNED_BODIES = {
    "/v1/webhooks/zendesk": "ZendeskWebhook",
    "/v1/webhooks/generic": "ClassifyRequest",
    "/v1/webhooks/freshdesk": "FreshdeskWebhook",
}


def refine(openapi: OpenAPI) -> None:
    """Add the contracts' own rules to the generated document (in place, before it is served)."""
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
    # No path the schema could name is sure to be loadable here (and the configured ones must not
    # be published), so only the default is documented as a value; see the description.
    reload.properties["path"] = Schema(
        type=OpenAPIType.NULL,
        description="Absent or null: the configured file. An operator may name another readable file "
        "on the server instead; one that cannot be loaded answers 422 and the old version stays.",
    )
    for path, name in _SIGNED_BODIES.items():
        item = (openapi.paths or {})[path]
        assert item.post is not None
        item.post.request_body = RequestBody(
            content={"application/json": OpenAPIMediaType(schema=Reference(ref=f"#/components/schemas/{name}"))},
            required=True,
            description="The exact bytes that were signed",
        )


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
    schema.properties[field] = Schema(one_of=[_PAST, _NULL])


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
