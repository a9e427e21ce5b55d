"""Signed webhooks of the Standard Webhooks scheme and of Intercom: verify, reject replays, route.

* ``/v1/webhooks/generic`` with ``webhook-id``/``webhook-timestamp``/``webhook-signature``
  (standardwebhooks.com): the body is a classify request, the answer a decision. The
  ``webhook-id`` is the idempotency key the spec asks receivers to keep: a second delivery of
  the same id within the timestamp window gets 409, a later one is stale (401). The replay
  entry lives exactly as long as its timestamp stays acceptable.
* ``/v1/webhooks/intercom`` (developers.intercom.com, webhook models): a notification
  ``{"type": "notification_event", "id": "notif_...", "topic": ..., "created_at": ...,
  "data": {"item": <conversation or ticket>}}`` signed with ``X-Hub-Signature: sha1=<hex>``.
  Intercom sends no timestamp header, so the signed body's ``created_at`` bounds the replay
  window (a day: Intercom retries within minutes) and the notification ``id`` is the replay key.
  A new conversation (``conversation.user.created``) or ticket (``ticket.created``) is routed;
  every other topic, Intercom's ``ping`` included, is acknowledged and ignored.

Intercom payloads are read leniently: every field may be missing or null, blank strings are
absent, enum-like values are matched case-insensitively. The customer is the first contact's
``external_id`` (your user id in Intercom), else an e-mail address from the contact or the
conversation's author; a lead without either gets the default routing, not an error (Intercom
suspends endpoints that keep failing).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import msgspec

from router.errors import REDIS_FAULTS, BadInput, Conflict, Forbidden, Unauthorized, without_values
from router.ops import metrics
from router.serving.decisions import DecisionService, Resolved
from router.serving.signatures import SignatureError, parse_standard_secret, verify_intercom, verify_standard
from router.serving.webhooks import REPLAY_TIMEOUT_S, decide_signed, helpdesk_routing
from router.settings import WebhookSettings
from router.state.store import StateStore
from schemas.api import Category, Channel, ClassifyRequest, CustomerRef, Decision, IntercomReceipt
from schemas.events import Severity

__all__ = ["INTERCOM_WINDOW_S", "InboundWebhooks"]

INTERCOM_WINDOW_S = 86_400
"""Intercom notifications older than this (by their signed ``created_at``) are refused as stale."""

_ROUTED_TOPICS = frozenset({"conversation.user.created", "ticket.created"})
_CATEGORIES: frozenset[str] = frozenset({"technical", "billing", "account", "cancellation", "sales", "general"})
_SOURCE_CHANNELS: dict[str, Channel] = {
    "conversation": "chat",
    "push": "chat",
    "sms": "chat",
    "email": "email",
    "facebook": "social",
    "instagram": "social",
    "twitter": "social",
    "whatsapp": "social",
    "phone_call": "phone",
    "phone_switch": "phone",
}
_PEOPLE = frozenset({"user", "lead", "contact"})


# -- Intercom's objects, read leniently --------------------------------------------------------


class _Author(msgspec.Struct):
    type: str | None = None
    email: str | None = None


class _Source(msgspec.Struct):
    type: str | None = None
    author: _Author | None = None


class _Contact(msgspec.Struct):
    external_id: str | None = None
    email: str | None = None


class _Contacts(msgspec.Struct):
    contacts: list[_Contact] = []


class _Tag(msgspec.Struct):
    name: str | None = None


class _Tags(msgspec.Struct):
    tags: list[_Tag] = []


class _TicketType(msgspec.Struct):
    name: str | None = None


class _User(msgspec.Struct):
    """API 1.x conversations name their user here instead of ``contacts``."""

    user_id: str | None = None
    email: str | None = None


class _Item(msgspec.Struct):
    type: str | None = None
    priority: str | None = None
    source: _Source | None = None
    contacts: _Contacts | None = None
    user: _User | None = None
    tags: _Tags | None = None
    custom_attributes: dict[str, Any] | None = None
    ticket_attributes: dict[str, Any] | None = None
    ticket_type: _TicketType | None = None


class _Data(msgspec.Struct):
    item: _Item | None = None


class _Notification(msgspec.Struct):
    id: str | None = None
    topic: str | None = None
    created_at: int | float | None = None
    data: _Data | None = None


_notification_dec = msgspec.json.Decoder(_Notification)


def _text(value: Any) -> str | None:
    """A usable string: blank means absent."""
    return value.strip() if isinstance(value, str) and value.strip() else None


class InboundWebhooks:
    def __init__(self, decisions: DecisionService, replays: StateStore, settings: WebhookSettings) -> None:
        """``replays`` is the replay cache's own store (budget :data:`REPLAY_TIMEOUT_S`)."""
        self.decisions = decisions
        self.replays = replays
        self.settings = settings
        self.standard_key = parse_standard_secret(settings.standard_secret) if settings.standard_secret else b""

    async def _claim(self, scheme: str, key: str, ttl_s: int) -> bool:
        """Record ``key`` as processed: False if Redis could not tell (answer then marked degraded)."""
        digest = hashlib.sha256(f"{scheme}:{key}".encode()).hexdigest()[:32]
        try:
            async with asyncio.timeout(REPLAY_TIMEOUT_S):
                fresh = await self.replays.claim_replay(digest, max(1, ttl_s))
        except REDIS_FAULTS as exc:
            metrics.REDIS_ERRORS.labels("webhook_replay", type(exc).__name__).inc()
            return False
        if not fresh:
            metrics.WEBHOOK_SIGNATURE_FAILURES.labels("replayed").inc()
            raise Conflict(f"{scheme} webhook: this request was already processed (replay)")
        return True

    # -- Standard Webhooks on the generic endpoint ----------------------------------------------

    async def standard(self, msg_id: str | None, timestamp: str | None, signature: str | None, body: bytes) -> Decision:
        if not self.standard_key:
            raise Forbidden("generic webhook: Standard Webhooks is not configured on this service (no whsec_ secret)")
        now = time.time()
        max_age = self.settings.max_age_s
        try:
            at = verify_standard(self.standard_key, msg_id, timestamp, signature, body, now=now, tolerance_s=max_age)
        except SignatureError as exc:
            metrics.WEBHOOK_SIGNATURE_FAILURES.labels(exc.reason).inc()
            raise Unauthorized(f"generic webhook: {exc.message}") from None
        assert msg_id is not None
        # The id stays a replay until its timestamp leaves the window (at most 2 x max_age from now).
        checked = await self._claim("standard", msg_id, int(at + max_age - now) + 1)
        return await decide_signed(self.decisions, body, checked)

    # -- Intercom --------------------------------------------------------------------------------

    async def intercom(self, signature: str | None, body: bytes) -> IntercomReceipt:
        secret = self.settings.intercom_secret
        if not secret:
            raise Forbidden("intercom webhook is not configured on this service (no client secret)")
        try:
            verify_intercom(secret, signature, body)
        except SignatureError as exc:
            metrics.WEBHOOK_SIGNATURE_FAILURES.labels(exc.reason).inc()
            raise Unauthorized(f"intercom webhook: {exc.message}") from None
        try:
            note = _notification_dec.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise BadInput(f"intercom notification: {without_values(str(exc))}") from None
        except (UnicodeDecodeError, RecursionError):
            raise BadInput("intercom notification: not valid UTF-8 JSON") from None
        topic = _text(note.topic) or ""
        now = time.time()
        created = note.created_at
        if created is None or created <= 0:
            raise BadInput("intercom notification: created_at (Unix seconds) is missing")
        if abs(now - created) > INTERCOM_WINDOW_S:
            metrics.WEBHOOK_SIGNATURE_FAILURES.labels("stale").inc()
            raise Unauthorized(f"intercom webhook: notification created more than {INTERCOM_WINDOW_S} s from now")
        replay_key = _text(note.id) or hashlib.sha256(body).hexdigest()
        checked = await self._claim("intercom", replay_key, int(created + INTERCOM_WINDOW_S - now) + 1)
        item = note.data.item if note.data else None
        if topic not in _ROUTED_TOPICS:
            return IntercomReceipt(topic=topic[:64], routed=False, ignored="topic opens no conversation or ticket")
        if item is None:
            raise BadInput("intercom notification: data.item is missing")
        req = self._request(item, ticket=topic.startswith("ticket."))
        resolved = (
            await self.decisions.resolve(req.customer)
            if req.customer.customer_id != _ANONYMOUS
            else Resolved(None, None, None, None)
        )
        d = self.decisions.decide(req, resolved)
        return IntercomReceipt(topic=topic, routed=True, routing=helpdesk_routing(d, req.priority, checked))

    def _request(self, item: _Item, *, ticket: bool) -> ClassifyRequest:
        channel: Channel = "ticket" if ticket else "chat"
        source_type = _text(item.source.type) if item.source else None
        if not ticket and source_type:
            channel = _SOURCE_CHANNELS.get(source_type.lower(), "chat")
        priority: Severity = "high" if (_text(item.priority) or "").lower() == "priority" else "normal"
        return ClassifyRequest(
            customer=self._customer(item), channel=channel, category=_category(item), priority=priority
        )

    def _customer(self, item: _Item) -> CustomerRef:
        contacts = item.contacts.contacts if item.contacts else []
        for c in contacts:
            external = _text(c.external_id)
            if external and len(external) <= 128:
                return CustomerRef(customer_id=external)
        if item.user is not None and (uid := _text(item.user.user_id)) and len(uid) <= 128:
            return CustomerRef(customer_id=uid)
        emails = [c.email for c in contacts]
        if item.user is not None:
            emails.append(item.user.email)
        author = item.source.author if item.source else None
        if author is not None and (_text(author.type) or "").lower() in _PEOPLE:
            emails.append(author.email)
        hasher = self.decisions.hasher
        for email in emails:
            text = _text(email)
            if text and len(text) <= 254 and hasher.email_key(text) is not None:
                return CustomerRef(email=text)
        return CustomerRef(customer_id=_ANONYMOUS)


_ANONYMOUS = "intercom-anonymous"
"""Stands for a lead Intercom knows no id or e-mail of: never looked up, routed by default."""


def _category(item: _Item) -> Category:
    candidates: list[Any] = []
    for attributes in (item.custom_attributes, item.ticket_attributes):
        if attributes:
            candidates.append(attributes.get("category"))
    if item.ticket_type is not None:
        candidates.append(item.ticket_type.name)
    candidates += [t.name for t in (item.tags.tags if item.tags else [])]
    for value in candidates:
        text = (_text(value) or "").lower()
        if text in _CATEGORIES:
            return text  # type: ignore[return-value]
    return "general"
