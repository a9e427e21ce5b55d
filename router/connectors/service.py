"""The request side of the connectors: decide for an inbound ticket, queue its write-back, report health.

Used by the API (Zendesk's and Freshdesk's webhooks, ``GET /v1/connectors``) and by ``router
connect`` (tickets it follows, RT). The webhook answers as soon as the write-back is queued in
the outbox (one Redis script: milliseconds, far inside Zendesk's 10 s); ``router connect`` writes
it back. A ticket is routed at most once per connector within ``ROUTER_CONNECTORS_DEDUPE_S``, so a
duplicate delivery or a trigger that fires on router's own update does not add a second note.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import msgspec

from router.connectors import freshdesk
from router.connectors.base import Inbound, WriteBack, helpdesk_routing, writeback_of
from router.connectors.config import ConnectorsConfig
from router.errors import REDIS_FAULTS, BadInput, Unavailable
from router.ops import metrics
from router.serving.decisions import DecisionService, Resolved
from router.settings import ConnectorSettings
from router.state.outbox import Outbox, OutboxStatus
from schemas.api import ClassifyRequest, ConnectorStatus, CustomerRef, Decision, HelpdeskRouting

__all__ = ["ENQUEUE_TIMEOUT_S", "ConnectorService", "encode_job"]

log = logging.getLogger("router.connectors")

ENQUEUE_TIMEOUT_S = 2.0
"""Budget of queueing one write-back from a webhook (Zendesk waits 10 s)."""
_NOBODY = CustomerRef(customer_id="unknown")
"""Stands in for a ticket without a usable requester; never looked up (the decision gets an unknown customer)."""
_enc = msgspec.msgpack.Encoder()


def encode_job(job: WriteBack) -> bytes:
    return _enc.encode(job)


def _plausible(when: datetime | None) -> datetime | None:
    """A creation time the classify contract accepts (2000 .. now + 1 day), else none (the SLA starts now)."""
    if when is None or when.tzinfo is None:
        return None
    now = datetime.now(UTC)
    return when if datetime(2000, 1, 2, tzinfo=UTC) <= when <= now + timedelta(hours=23) else None


class ConnectorService:
    """Decide for inbound tickets and queue their write-backs; one per process."""

    def __init__(
        self, decisions: DecisionService, outbox: Outbox, config: ConnectorsConfig, settings: ConnectorSettings
    ) -> None:
        self.decisions = decisions
        self.outbox = outbox
        self.config = config
        self.settings = settings

    # -- deciding ---------------------------------------------------------------------------------

    async def decide(self, inbound: Inbound) -> Decision:
        """The decision for ``inbound``: the first reference that names a known customer wins.

        A reference router cannot use (an e-mail or phone number it cannot normalise) is skipped, not
        an error: a helpdesk's data is what it is, and the ticket still needs a routing.
        """
        chosen: tuple[CustomerRef, Resolved] | None = None
        for ref in inbound.customers:
            try:
                resolved = await self.decisions.resolve(ref)
            except BadInput:
                continue
            if chosen is None or resolved.snapshot is not None or resolved.degraded_cause:
                chosen = (ref, resolved)
            if resolved.snapshot is not None or resolved.degraded_cause:
                break
        ref, resolved = chosen or (_NOBODY, Resolved(None, None, None, None))
        req = ClassifyRequest(
            customer=ref,
            channel=inbound.channel,
            category=inbound.category,
            priority=inbound.priority or "normal",
            received_at=_plausible(inbound.received_at),
        )
        return self.decisions.decide(req, resolved)

    def job(self, connector: str, inbound: Inbound, decision: Decision, *, degraded: bool = False) -> WriteBack:
        return writeback_of(connector, inbound, decision, self.config.tier_priority, degraded=degraded)

    # -- webhooks ---------------------------------------------------------------------------------

    async def accept(self, connector: str, inbound: Inbound, *, degraded: bool = False) -> HelpdeskRouting:
        """Decide, queue the write-back when ``connector`` is connected, and answer the routing.

        ``degraded``: the request was let through without its replay check (Redis unavailable).
        """
        job = self.job(connector, inbound, await self.decide(inbound), degraded=degraded)
        if connector not in self.config.names:
            metrics.CONNECTOR_INBOUND.labels(connector, "answered").inc()
            return helpdesk_routing(job)
        if not inbound.ticket:
            metrics.CONNECTOR_INBOUND.labels(connector, "no_ticket").inc()
            log.warning(
                "%s webhook without a ticket number (check the template's ticket.id): not written back", connector
            )
            return helpdesk_routing(job)
        try:
            async with asyncio.timeout(ENQUEUE_TIMEOUT_S):
                fresh = await self.outbox.enqueue(connector, job.ticket, encode_job(job), self.settings.dedupe_s)
        except REDIS_FAULTS as exc:
            metrics.CONNECTOR_INBOUND.labels(connector, "not_queued").inc()
            log.warning("%s webhook: write-back not queued (%s)", connector, type(exc).__name__)
            raise Unavailable(
                f"{connector} webhook: the write-back could not be queued; send the request again",
                headers={"Retry-After": "10"},
            ) from None
        metrics.CONNECTOR_INBOUND.labels(connector, "queued" if fresh else "duplicate").inc()
        return helpdesk_routing(job)

    async def freshdesk(self, token: str | None, authorization: str | None, body: bytes) -> HelpdeskRouting:
        """``POST /v1/webhooks/freshdesk``: token, lenient body, decision, queued write-back."""
        freshdesk.verify_token(self.settings.freshdesk_inbound_token, token, authorization)
        return await self.accept("freshdesk", freshdesk.decode_webhook(body))

    # -- health -----------------------------------------------------------------------------------

    async def status(self) -> list[ConnectorStatus]:
        """Every connected helpdesk's outbox and last results (``GET /v1/connectors``)."""
        try:
            async with asyncio.timeout(ENQUEUE_TIMEOUT_S):
                found = [(name, await self.outbox.status(name)) for name in self.config.names]
        except REDIS_FAULTS as exc:
            raise Unavailable(f"connector status unavailable: Redis {type(exc).__name__}") from None
        return [connector_status(name, s) for name, s in found]


def _at(t: float | None) -> datetime | None:
    return datetime.fromtimestamp(t, UTC) if t else None


def connector_status(name: str, s: OutboxStatus) -> ConnectorStatus:
    failing = (s.failed_at or 0) > (s.landed_at or 0) or bool(s.poll_failure)
    idle = not (s.failed_at or s.landed_at or s.polled_at)
    return ConnectorStatus(
        name=name,
        state="failing" if failing else "idle" if idle else "ok",
        queued=s.queued,
        in_flight=s.in_flight,
        delayed=s.delayed,
        dead_letters=s.dead_letters,
        last_landed_at=_at(s.landed_at),
        last_failure_at=_at(s.failed_at),
        last_failure=s.failure,
        last_poll_at=_at(s.polled_at),
        poll_failure=s.poll_failure,
        watermark=s.mark,
    )
