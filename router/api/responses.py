"""The error answers each operation documents, built in one place.

Every handler names what it can answer besides success; the OpenAPI schema then lists each
status with the one error body (:class:`schemas.api.ErrorBody`) that ``router.api.app``'s
exception handlers write. Schemathesis holds the served schema to this.
"""

from __future__ import annotations

from litestar.openapi import ResponseSpec

from schemas.api import ErrorBody

__all__ = ["BODY", "KEYED", "SIGNED", "errors"]

_DESCRIPTIONS = {
    400: "Malformed request: the detail names the field (never its value)",
    401: "API key missing or unknown (webhooks: signature missing, wrong or stale)",
    403: "API key lacks the scope (webhooks: no signing secret configured)",
    404: "No such resource",
    409: "Conflict (webhooks: this signed request was already processed)",
    413: "Body larger than the configured limit",
    415: "Body not sent as JSON",
    422: "Well-formed but unusable (the old version stays in force)",
    429: "API key over its rate limit: see `Retry-After`",
    503: "A dependency of this action is down: repeat the request later",
}

KEYED = (400, 401, 403, 429)
"""Every API-key endpoint: bad parameters, no key, wrong scope, rate limit."""
BODY = (400, 413, 415)
"""Every endpoint that reads a JSON body."""
SIGNED = (400, 401, 403, 409, 413, 415)
"""Signed webhooks (no API key, so no 429)."""


def errors(*groups: int | tuple[int, ...]) -> dict[int, ResponseSpec]:
    """``responses=`` for a handler: each status (or group of statuses) with the error body."""
    codes = sorted({c for g in groups for c in (g if isinstance(g, tuple) else (g,))})
    return {
        code: ResponseSpec(data_container=ErrorBody, description=_DESCRIPTIONS[code], generate_examples=False)
        for code in codes
    }
