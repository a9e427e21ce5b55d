"""Request Tracker 5: follow new tickets through REST2 and write decisions back through REST2.

Why follow rather than be called: RT 5 has no webhook action. A Scrip with a user-defined Perl
action could post to router, but it runs inside the ticket's creation (a slow router delays
every ticket) and delivers at most once (a ticket created while router is down is never
routed). Following REST2 by ticket id (``id > watermark``, ordered by id) is at-least-once, needs
only an RT user and token, and catches up by itself after either side was down. The watermark
moves in the same Redis script that queues the tickets' write-backs, so a crash re-polls rather
than losing or doubling a ticket.

Write-back, as RT 5.0's REST2 behaves (checked live, see ``deploy/integrations/README.md``):

* ``GET /ticket/{id}/history?fields=Type,Data`` first: a Comment transaction's ``Data`` is its
  Subject, which carries :func:`~router.connectors.base.marker`; found means already written.
* ``PUT /ticket/{id}`` with Queue, Priority (0-100), Due and CustomFields. RT answers 200 with
  one message per change, also when it refused one (``Queue X does not exist``): the messages
  are checked. Due must be ``YYYY-MM-DD HH:MM:SS`` in UTC (an ISO string with ``T``/``Z`` is
  stored verbatim and reads back as 1970). A custom field that is not applied to the ticket's
  queue is dropped silently, so :meth:`RtConnector.probe` checks that at start.
* ``POST /ticket/{id}/comment`` (internal: comments are not mailed to requesters) with the marker
  as Subject, last.

Auth: an RT auth token (``Authorization: token ...``, RT 5's built-in RT::Authen::Token).
References: https://docs.bestpractical.com/rt/5.0.3/RT/REST2.html (REST2),
https://docs.bestpractical.com/rt/5.0.3/query_builder.html (TicketSQL).
"""

from __future__ import annotations

import re
import urllib.parse
from datetime import UTC, datetime
from typing import Any

import httpx

from router.connectors.base import (
    SEVERITIES,
    Connector,
    Inbound,
    Permanent,
    WriteBack,
    json_of,
    marker,
    note_text,
)
from router.connectors.config import RtConfig
from schemas.api import CustomerRef
from schemas.events import Severity

__all__ = ["RtConnector", "rt_due"]

_REFUSED = re.compile(
    r"does not exist|permission denied|no permission|could not|couldn't|invalid|illegal|not a valid|failed",
    re.IGNORECASE,
)
_PAGE = 100


def rt_due(when: datetime) -> str:
    """A deadline as RT's REST2 parses it on update: ``YYYY-MM-DD HH:MM:SS``, UTC."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


class RtConnector(Connector):
    """RT's REST2 API at ``<url>/REST/2.0``, as the user owning ``token``."""

    name = "rt"

    def __init__(self, config: RtConfig, token: str, timeout_s: float) -> None:
        super().__init__(
            httpx.AsyncClient(
                base_url=config.url.rstrip("/") + "/REST/2.0",
                headers={"Authorization": f"token {token}", "Accept": "application/json"},
                timeout=timeout_s,
            )
        )
        self.config = config

    # -- write-back ------------------------------------------------------------------------------

    async def write_back(self, job: WriteBack, *, check: bool = True) -> bool:
        if check and await self._has_comment(job.ticket, marker(job)):
            return False
        response = await self.request("PUT", f"/ticket/{job.ticket}", json=self.update_of(job))
        messages = json_of(response)
        refused = (
            [m for m in messages if isinstance(m, str) and _REFUSED.search(m)] if isinstance(messages, list) else []
        )
        if refused:
            # RT's messages name our own values (queue, field), never the requester.
            raise Permanent(f"PUT /ticket/{{id}}: RT refused: {refused[0][:160]}")
        await self.request(
            "POST",
            f"/ticket/{job.ticket}/comment",
            ok=(201,),
            json={"Subject": marker(job), "Content": note_text(job), "ContentType": "text/plain"},
        )
        return True

    def update_of(self, job: WriteBack) -> dict[str, Any]:
        """The ``PUT /ticket/{id}`` body for ``job``."""
        c = self.config
        body: dict[str, Any] = {"Priority": c.priorities.get(job.priority, 50), "Due": rt_due(job.due_at)}
        queue = c.queues.get(job.queue, c.default_queue)
        if queue:
            body["Queue"] = queue
        fields: dict[str, str] = {}
        if c.tier_field:
            fields[c.tier_field] = job.tier
        if c.action_field and job.actions:
            fields[c.action_field] = job.actions[0].code
        if fields:
            body["CustomFields"] = fields
        return body

    async def _has_comment(self, ticket: str, mark: str) -> bool:
        page = 1
        while True:
            response = await self.request(
                "GET", f"/ticket/{ticket}/history", params={"fields": "Type,Data", "per_page": _PAGE, "page": page}
            )
            doc = json_of(response)
            for item in doc.get("items") or []:
                if item.get("Type") == "Comment" and mark in (item.get("Data") or ""):
                    return True
            if page >= int(float(doc.get("pages") or 0)):  # "pages" is 0.0 (a float) when empty
                return False
            page += 1

    # -- following new tickets -------------------------------------------------------------------

    async def latest_ticket(self) -> int:
        """The highest ticket id in RT (0 when there is none)."""
        response = await self.request(
            "GET", "/tickets", params={"query": "id > 0", "orderby": "id", "order": "DESC", "per_page": 1}
        )
        items = json_of(response).get("items") or []
        return int(items[0]["id"]) if items else 0

    async def tickets_after(self, after: int) -> tuple[list[Inbound], int, bool]:
        """Tickets with an id above ``after``: (those to route, the new watermark, whether more are waiting)."""
        response = await self.request(
            "GET",
            "/tickets",
            params={
                "query": f"id > {int(after)}",
                "orderby": "id",
                "order": "ASC",
                "per_page": _PAGE,
                "fields": "Queue,Requestor,Created,Priority",
                "fields[Queue]": "Name",
                "fields[Requestor]": "EmailAddress",
            },
        )
        items = json_of(response).get("items") or []
        watch = set(self.config.watch_queues)
        found: list[Inbound] = []
        mark = after
        for item in items:
            ticket = int(item["id"])
            mark = max(mark, ticket)
            queue = (item.get("Queue") or {}).get("Name") or ""
            if watch and queue not in watch:
                continue
            found.append(self.inbound_of(ticket, queue, item))
        return found, mark, len(items) >= _PAGE

    def inbound_of(self, ticket: int, queue: str, item: dict[str, Any]) -> Inbound:
        """A REST2 ticket as router sees it: requestors' e-mails, category by queue, priority, creation time."""
        refs: list[CustomerRef] = []
        for requestor in item.get("Requestor") or []:
            address = (requestor or {}).get("EmailAddress") or ""
            if 3 <= len(address) <= 254:
                refs.append(CustomerRef(email=address))
        return Inbound(
            ticket=str(ticket),
            customers=tuple(refs),
            channel="ticket",
            category=self.config.categories.get(queue, "general"),
            priority=self._severity(item.get("Priority")),
            received_at=_created(item.get("Created")),
        )

    def _severity(self, value: object) -> Severity | None:
        """RT's numeric priority as the highest severity it reaches; 0 (RT's default) means not chosen."""
        try:
            number = int(str(value))
        except ValueError:
            return None
        if number <= 0:
            return None
        reached = [s for s in SEVERITIES if self.config.priorities.get(s, 101) <= number]
        return reached[-1] if reached else "low"

    # -- configuration check -----------------------------------------------------------------------

    async def probe(self) -> list[str]:
        """Queues that do not exist, custom fields not applied to a target queue."""
        problems: list[str] = []
        c = self.config
        wanted_fields = [f for f in (c.tier_field, c.action_field) if f]
        for queue in sorted({*c.queues.values(), *([c.default_queue] if c.default_queue else [])}):
            try:
                response = await self.request("GET", f"/queue/{urllib.parse.quote(queue, safe='')}")
            except Permanent:
                problems.append(f"RT queue {queue!r} does not exist")
                continue
            queue_id = json_of(response).get("id")
            applied = await self.request(
                "GET", f"/queue/{queue_id}/customfields", params={"fields": "Name", "per_page": 100}
            )
            names = {item.get("Name") for item in json_of(applied).get("items") or []}
            problems += [
                f"custom field {f!r} is not applied to RT queue {queue!r}" for f in wanted_fields if f not in names
            ]
        return problems


def _created(value: object) -> datetime | None:
    if not isinstance(value, str) or value.startswith("1970"):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
