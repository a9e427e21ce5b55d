"""Freshdesk: the automation rule's webhook in, the Tickets API v2 out.

In: ``POST /v1/webhooks/freshdesk``. Freshdesk does not sign webhooks, so the request must carry
the shared token ``ROUTER_CONNECTORS_FRESHDESK_INBOUND_TOKEN``, as the ``X-Router-Token`` custom
header or as the password of the rule's "Requires authentication" (HTTP Basic); it is compared in
constant time. The body is the rule's advanced JSON content (``deploy/integrations/freshdesk-webhook.json``),
read leniently like Zendesk's: blank placeholders are absent, priority and source as display text
("Medium", "Portal") or numbers.

Out, per write-back (https://developers.freshdesk.com/api/):

1. ``GET /api/v2/tickets/{id}/conversations``: a note holding the decision's marker means it was
   written ("List All Conversations of a Ticket").
2. ``GET /api/v2/tickets/{id}``: the ticket's tags and resolution due date ("View a Ticket").
3. ``PUT /api/v2/tickets/{id}`` with ``group_id``, ``priority`` (1 low, 2 medium, 3 high, 4
   urgent), ``fr_due_by`` (first response; ``due_by`` too when the ticket's resolution date lies
   before it, which Freshdesk refuses), ``tags`` (replaces the list: the ticket's own tags are kept,
   router's earlier ones replaced) and ``custom_fields`` ("Update a Ticket").
4. ``POST /api/v2/tickets/{id}/notes`` with ``private: true``, last ("Add Note").

Freshdesk answers 429 with ``Retry-After`` over its rate limit ("Rate Limit"); the outbox waits.
Auth: the API key as the HTTP Basic user name, any password ("Authentication").
"""

from __future__ import annotations

import base64
import hmac
import html
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec

from router.connectors.base import (
    ROUTER_TAG_PREFIXES,
    Connector,
    Inbound,
    Retry,
    WriteBack,
    category_of,
    channel_of,
    json_of,
    marker,
    note_text,
    router_tags,
    severity_of,
    text_or_none,
    ticket_number,
)
from router.connectors.config import FreshdeskConfig
from router.connectors.zendesk import customer_refs
from router.errors import BadInput, Forbidden, Unauthorized, without_values
from router.ops import metrics
from schemas.api import FreshdeskWebhook

__all__ = ["TOKEN_HEADER", "FreshdeskConnector", "decode_webhook", "verify_token"]

TOKEN_HEADER = "x-router-token"
_dec = msgspec.json.Decoder(FreshdeskWebhook)
_PAGE = 100
_MAX_PAGES = 20


def verify_token(expected: str, header: str | None, authorization: str | None) -> None:
    """The shared token, from ``X-Router-Token`` or the Basic password; 403 unconfigured, 401 missing or wrong."""
    if not expected:
        raise Forbidden("freshdesk webhook is not configured on this service (no inbound token)")
    presented = header.strip() if header else None
    if presented is None and authorization and authorization[:6].lower() == "basic ":
        try:
            presented = base64.b64decode(authorization[6:].strip(), validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            presented = None
    if not presented:
        metrics.WEBHOOK_SIGNATURE_FAILURES.labels("missing").inc()
        raise Unauthorized("freshdesk webhook: token missing (X-Router-Token header or Basic password)")
    if not hmac.compare_digest(presented.encode(), expected.encode()):
        metrics.WEBHOOK_SIGNATURE_FAILURES.labels("mismatch").inc()
        raise Unauthorized("freshdesk webhook: token does not match")


def decode_webhook(body: bytes) -> Inbound:
    """The rule's body as a ticket to route (400 only when it is not the template at all)."""
    try:
        ticket = _dec.decode(body).ticket
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise BadInput(f"freshdesk webhook body: {without_values(str(exc))}") from None
    except (UnicodeDecodeError, RecursionError):
        raise BadInput("freshdesk webhook body: not valid UTF-8 JSON") from None
    return Inbound(
        ticket=ticket_number(ticket.id) or "",
        customers=customer_refs(ticket.requester),
        channel=channel_of(ticket.source) if text_or_none(ticket.source) else "ticket",
        category=category_of(ticket.category),
        priority=severity_of(ticket.priority),
    )


def _when(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FreshdeskConnector(Connector):
    """Freshdesk's API v2 at ``<url>/api/v2``."""

    name = "freshdesk"

    def __init__(self, config: FreshdeskConfig, api_key: str, timeout_s: float) -> None:
        credentials = base64.b64encode(f"{api_key}:X".encode()).decode()
        super().__init__(
            httpx.AsyncClient(
                base_url=config.url.rstrip("/") + "/api/v2",
                headers={"Authorization": f"Basic {credentials}", "Accept": "application/json"},
                timeout=timeout_s,
            )
        )
        self.config = config

    async def write_back(self, job: WriteBack, *, check: bool = True) -> bool:
        if check and await self._has_note(job.ticket, marker(job)):
            return False
        current = json_of(await self.request("GET", f"/tickets/{job.ticket}"))
        await self.request("PUT", f"/tickets/{job.ticket}", json=self.update_of(job, current))
        body = html.escape(note_text(job)).replace("\n", "<br>")
        await self.request("POST", f"/tickets/{job.ticket}/notes", ok=(201,), json={"body": body, "private": True})
        return True

    def update_of(self, job: WriteBack, current: dict[str, Any]) -> dict[str, Any]:
        """The ``PUT /tickets/{id}`` body, given the ticket as it is now."""
        c = self.config
        update: dict[str, Any] = {"priority": c.priorities.get(job.priority, 2)}
        group = c.groups.get(job.queue, c.default_group)
        if group is not None:
            update["group_id"] = group
        if c.due_field:
            update[c.due_field] = _iso(job.due_at)
            resolution = _when(current.get("due_by"))
            if c.due_field == "fr_due_by" and resolution is not None and resolution < job.due_at:
                update["due_by"] = _iso(job.due_at)
        if c.tags:
            kept = [
                t for t in current.get("tags") or [] if isinstance(t, str) and not t.startswith(ROUTER_TAG_PREFIXES)
            ]
            update["tags"] = kept + router_tags(job)
        fields: dict[str, str] = {}
        if c.tier_field:
            fields[c.tier_field] = job.tier
        if c.action_field and job.actions:
            fields[c.action_field] = job.actions[0].code
        if fields:
            update["custom_fields"] = fields
        return update

    async def _has_note(self, ticket: str, mark: str) -> bool:
        for page in range(1, _MAX_PAGES + 1):
            response = await self.request(
                "GET", f"/tickets/{ticket}/conversations", params={"per_page": _PAGE, "page": page}
            )
            items = json_of(response)
            if not isinstance(items, list):
                raise Retry("GET /tickets/{id}/conversations: unexpected answer")
            if any(mark in (i.get("body_text") or i.get("body") or "") for i in items if isinstance(i, dict)):
                return True
            if len(items) < _PAGE:
                return False
        return False
