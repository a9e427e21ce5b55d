"""Zendesk: the trigger webhook in, the Tickets API out.

In: ``POST /v1/webhooks/zendesk``, signed as Zendesk signs webhooks (verified in
:mod:`router.serving.webhooks`); the body is the trigger's JSON template
(``deploy/integrations/zendesk-trigger.json``). Zendesk renders an empty placeholder as ``""``
and many values as display text ("Normal", "Web Form"); :func:`decode_webhook` reads those as
absent or maps them, and answers 400 only when the body is not the template at all (no JSON, a
value of the wrong JSON type): a 400 per blank field would trip Zendesk's webhook circuit breaker.

Out, per write-back (https://developer.zendesk.com/api-reference/ticketing/tickets/tickets/):

1. ``GET /api/v2/tickets/{id}/comments?sort_order=desc``: a comment holding the decision's marker
   means it was written (Ticket Comments API).
2. ``GET /api/v2/tickets/{id}``: the ticket's tags and ``updated_at``.
3. ``PUT /api/v2/tickets/{id}`` with ``group_id``, ``priority``, ``tags``, ``custom_fields`` and a
   private ``comment`` (``public: false``: an internal note) in one update, so fields and note land
   together. ``tags`` replaces the ticket's tags on this endpoint (see "Adding tags to tickets
   without overwriting existing tags"), so the list is the ticket's own tags without router's
   earlier ones, plus the new ones; ``safe_update`` with ``updated_stamp`` makes Zendesk answer 409
   instead of overwriting a change made in between ("Protecting against ticket update
   collisions", Creating and updating tickets), and a 409 is retried.

Zendesk answers 429 with ``Retry-After`` when over its rate limit; the outbox waits that long.
Auth: ``{email}/token:{api_token}`` as HTTP Basic, or an OAuth access token as Bearer
(https://developer.zendesk.com/api-reference/introduction/security-and-auth/).
"""

from __future__ import annotations

import base64
from typing import Any

import httpx
import msgspec

from router.connectors.base import (
    ROUTER_TAG_PREFIXES,
    Connector,
    Inbound,
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
from router.connectors.config import ZendeskConfig
from router.errors import BadInput, without_values
from schemas.api import CustomerRef, FreshdeskRequester, ZendeskRequester, ZendeskWebhook

__all__ = ["ZendeskConnector", "customer_refs", "decode_webhook"]

_dec = msgspec.json.Decoder(ZendeskWebhook)


def decode_webhook(body: bytes) -> Inbound:
    """The trigger's body as a ticket to route (400 only for a body that is not the template at all).

    A ``ticket.id`` that is not a ticket number still gets its routing, but nothing can be written back.
    """
    try:
        ticket = _dec.decode(body).ticket
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise BadInput(f"zendesk webhook body: {without_values(str(exc))}") from None
    except (UnicodeDecodeError, RecursionError):
        raise BadInput("zendesk webhook body: not valid UTF-8 JSON") from None
    return Inbound(
        ticket=ticket_number(ticket.id) or "",
        customers=customer_refs(ticket.requester),
        channel=channel_of(ticket.channel) if text_or_none(ticket.channel) else "email",
        category=category_of(ticket.category),
        priority=severity_of(ticket.priority),
    )


def customer_refs(requester: ZendeskRequester | FreshdeskRequester) -> tuple[CustomerRef, ...]:
    """The usable references of a requester, in the order they are tried: external id, e-mail, phone."""
    refs: list[CustomerRef] = []
    external_id = text_or_none(requester.external_id, 128)
    if external_id:
        refs.append(CustomerRef(customer_id=external_id))
    email = text_or_none(requester.email)
    if email and len(email) >= 3:
        refs.append(CustomerRef(email=email))
    phone = text_or_none(requester.phone, 32)
    if phone and len(phone) >= 3:
        refs.append(CustomerRef(phone=phone))
    return tuple(refs)


class ZendeskConnector(Connector):
    """Zendesk's Tickets API at ``<url>/api/v2``."""

    name = "zendesk"

    def __init__(self, config: ZendeskConfig, email: str, token: str, timeout_s: float) -> None:
        if email:
            credentials = base64.b64encode(f"{email}/token:{token}".encode()).decode()
            authorization = f"Basic {credentials}"
        else:
            authorization = f"Bearer {token}"
        super().__init__(
            httpx.AsyncClient(
                base_url=config.url.rstrip("/") + "/api/v2",
                headers={"Authorization": authorization, "Accept": "application/json"},
                timeout=timeout_s,
            )
        )
        self.config = config

    async def write_back(self, job: WriteBack, *, check: bool = True) -> bool:
        if check:
            mark = marker(job)
            comments = (
                json_of(
                    await self.request("GET", f"/tickets/{job.ticket}/comments", params={"sort_order": "desc"})
                ).get("comments")
                or []
            )
            if any(mark in (c.get("body") or c.get("plain_body") or "") for c in comments):
                return False
        current = json_of(await self.request("GET", f"/tickets/{job.ticket}")).get("ticket") or {}
        await self.request("PUT", f"/tickets/{job.ticket}", json={"ticket": self.update_of(job, current)})
        return True

    def update_of(self, job: WriteBack, current: dict[str, Any]) -> dict[str, Any]:
        """The ``ticket`` object of the update, given the ticket as it is now."""
        c = self.config
        ticket: dict[str, Any] = {
            "priority": job.priority,
            "comment": {"body": note_text(job), "public": False},
        }
        group = c.groups.get(job.queue, c.default_group)
        if group is not None:
            ticket["group_id"] = group
        if c.tags:
            kept = [
                t for t in current.get("tags") or [] if isinstance(t, str) and not t.startswith(ROUTER_TAG_PREFIXES)
            ]
            ticket["tags"] = kept + router_tags(job)
        fields: list[dict[str, Any]] = []
        if c.tier_field_id is not None:
            fields.append({"id": c.tier_field_id, "value": job.tier.lower()})
        if c.action_field_id is not None and job.actions:
            fields.append({"id": c.action_field_id, "value": job.actions[0].code})
        if fields:
            ticket["custom_fields"] = fields
        if current.get("updated_at"):
            ticket["safe_update"] = True
            ticket["updated_stamp"] = current["updated_at"]
        return ticket
