"""What the console's pages need beyond the API's own services: lookups, export, search, erasure progress.

Portfolio figures come from :class:`~router.serving.portfolio.PortfolioService` (the code behind
``/v1/portfolio``), the customer view from :class:`~router.serving.customers.CustomerService`
(``/v1/customers/{id}``); this module adds the deadlines falling due per queue, the right-of-access
export, the decision search over the audit streams and how far an erasure has got.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Literal, NamedTuple

import msgspec

from router.core.identity import InvalidIdentifier, normalise_email, normalise_phone
from router.errors import REDIS_FAULTS, BadInput, Unavailable
from router.serving.customers import CustomerService
from router.serving.portfolio import PortfolioService
from router.state.audit import AdminRecord, AuditReader, AuditRecord
from router.state.store import StateStore
from schemas.api import PortfolioReport

__all__ = ["ConsoleService", "ErasureStep", "LookupKind", "PortfolioPage", "Search"]

LookupKind = Literal["id", "phone", "email"]
DUE_WINDOW_H = 24
_DUE_LOOKBACK_DAYS = 14
"""The longest first-response target (96 business hours) spans about two calendar weeks."""
_DUE_SCAN_MAX = 200_000
_DUE_CACHE_S = 30.0
_SEARCH_SCAN_MAX = 100_000
SEARCH_LIMIT = 100


class PortfolioPage(NamedTuple):
    report: PortfolioReport
    alerts: list[tuple[str, float]]
    """The last seven days (UTC), oldest first: (day label, alerts)."""
    due: list[tuple[str, float]]
    """Queue -> first-response deadlines falling due in the next 24 h."""
    due_read: int
    due_complete: bool


class ErasureStep(NamedTuple):
    label: str
    done: bool


class Search(NamedTuple):
    records: list[AuditRecord]
    read: int
    complete: bool


class ConsoleService:
    def __init__(
        self, store: StateStore, portfolio: PortfolioService, customers: CustomerService, reader: AuditReader
    ) -> None:
        self.store = store
        """The background client: population-wide reads take seconds, not milliseconds."""
        self.portfolio = portfolio
        self.customers = customers
        self.reader = reader
        self._due: tuple[float, list[tuple[str, float]], int, bool] | None = None

    # -- portfolio ---------------------------------------------------------------------------------

    async def portfolio_page(self, days: int) -> PortfolioPage:
        report = await self.portfolio.report(days)
        today = datetime.now(UTC).date()
        by_day = {d.day: d.count for d in report.churn_alerts_by_day}
        if days < 7:  # the alert chart always covers a week
            by_day = {d.day: d.count for d in (await self.portfolio.report(7)).churn_alerts_by_day}
        alerts = [
            (
                (today - timedelta(days=i)).strftime("%a %d"),
                float(by_day.get((today - timedelta(days=i)).isoformat(), 0)),
            )
            for i in range(6, -1, -1)
        ]
        due, read, complete = await self._deadlines_due()
        return PortfolioPage(report, alerts, due, read, complete)

    async def _deadlines_due(self) -> tuple[list[tuple[str, float]], int, bool]:
        """Deadlines of recent decisions that fall due within the next 24 h, per queue (cached 30 s)."""
        now = time.time()
        if self._due is not None and now - self._due[0] < _DUE_CACHE_S:
            return self._due[1], self._due[2], self._due[3]
        soon = now + DUE_WINDOW_H * 3600

        def due_soon(rec: AuditRecord) -> bool:
            try:
                return now <= datetime.fromisoformat(rec.due_at).timestamp() <= soon
            except ValueError:
                return False

        try:
            found, read, complete = await self.reader.newest(
                now - _DUE_LOOKBACK_DAYS * 86_400, now, keep=due_soon, limit=_DUE_SCAN_MAX, scan_max=_DUE_SCAN_MAX
            )
        except REDIS_FAULTS as exc:
            raise Unavailable(f"audit trail unavailable ({type(exc).__name__})") from None
        per_queue: dict[str, float] = {}
        for rec in found:
            per_queue[rec.queue] = per_queue.get(rec.queue, 0) + 1
        due = sorted(per_queue.items(), key=lambda kv: (-kv[1], kv[0]))
        self._due = (now, due, read, complete)
        return due, read, complete

    # -- customers ---------------------------------------------------------------------------------

    async def resolve(self, kind: LookupKind, value: str) -> str | None:
        """Customer id behind an id, phone number or e-mail address (None: nobody)."""
        value = value.strip()
        if not value:
            raise BadInput(f"{kind}: enter a value")
        if kind == "id":
            return value
        hasher, keys = self.store.hasher, self.store.keys
        try:
            if kind == "phone":
                index = keys.phone(hasher.digest("phone", normalise_phone(value, hasher.default_region)))
            else:
                index = keys.email(hasher.digest("email", normalise_email(value)))
        except InvalidIdentifier as exc:
            raise BadInput(f"{kind}: {exc}") from None
        try:
            return await self.store.resolve_index(index)
        except REDIS_FAULTS as exc:
            raise Unavailable(f"customer store unavailable ({type(exc).__name__})") from None

    async def export(self, customer_id: str, actor: str) -> bytes:
        """Everything held about the customer, as JSON (GDPR art. 15). Audited."""
        h = self.store.customer_key(customer_id)
        view = await self.customers.view(customer_id)
        try:
            record = await self.store.read_customer(h)
            _, override = await self.store.read_for_decision(h)
            trail = await self.reader.for_customer(h, count=1000)
        except REDIS_FAULTS as exc:
            raise Unavailable(f"customer store unavailable ({type(exc).__name__})") from None
        snap = record.snapshot if record.snapshot is not None and record.snapshot.customer_id else None
        document = {
            "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "customer_id": customer_id,
            "about": "Everything this routing service holds about the customer (GDPR art. 15): the state folded "
            "from events, the scores derived from it with their explanations, a person's tier override, and "
            "the decisions and actions recorded for the customer. Phone numbers and e-mail addresses are held "
            "only as keyed hashes (phone_keys, email_keys), used to find the customer by them.",
            "view": view,
            "stored_state": msgspec.structs.asdict(snap) if snap else None,
            "stored_scores": msgspec.structs.asdict(record.scores) if record.scores and snap else None,
            "override": override,
            "audit_trail": trail,
        }
        self.customers.audit.record(
            AdminRecord(action="customer_exported", at=time.time(), actor=actor, customer_key=h)
        )
        return msgspec.json.format(msgspec.json.encode(document), indent=2)

    async def erasure_steps(self, h: str) -> list[ErasureStep]:
        """How far an erasure has got: request side at once, the consumer's part when it has run."""
        keys = self.store.keys
        try:
            record = await self.store.read_customer(h)
            remaining = await self.store.client.exists(keys.override(h), keys.customer_audit(h))
        except REDIS_FAULTS as exc:
            raise Unavailable(f"customer store unavailable ({type(exc).__name__})") from None
        snap = record.snapshot
        consumer_done = snap is None or not snap.customer_id
        return [
            ErasureStep("Erasure event accepted by the broker (all replicas)", True),
            ErasureStep("Tier override and the customer's decision history deleted", remaining == 0),
            ErasureStep(
                "Snapshot, scores, phone and e-mail index entries removed by the consumer (a tombstone stops "
                "older events from bringing the customer back)",
                consumer_done,
            ),
        ]

    # -- decision search ---------------------------------------------------------------------------

    async def search_decision(self, decision_id: str) -> Search:
        try:
            rec = await self.reader.decision(decision_id.strip())
        except REDIS_FAULTS as exc:
            raise Unavailable(f"audit trail unavailable ({type(exc).__name__})") from None
        return Search([rec] if rec else [], 1, True)

    async def search_customer(self, customer_id: str) -> Search:
        try:
            found = await self.reader.for_customer(self.store.customer_key(customer_id), count=SEARCH_LIMIT)
        except REDIS_FAULTS as exc:
            raise Unavailable(f"audit trail unavailable ({type(exc).__name__})") from None
        decisions = [r for r in found if isinstance(r, AuditRecord)]
        return Search(decisions, len(found), True)

    async def search_range(self, start: float, end: float, tier: str | None) -> Search:
        if end <= start:
            raise BadInput("to: must be after from")
        try:
            found, read, complete = await self.reader.newest(
                start, end, keep=lambda r: tier is None or r.tier == tier, limit=SEARCH_LIMIT,
                scan_max=_SEARCH_SCAN_MAX,
            )  # fmt: skip
        except REDIS_FAULTS as exc:
            raise Unavailable(f"audit trail unavailable ({type(exc).__name__})") from None
        return Search(found, read, complete)
