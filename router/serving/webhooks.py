"""Signed helpdesk webhooks: verify, reject stale and replayed requests, then route the ticket.

Zendesk's body is then read and routed by its connector (:mod:`router.connectors.zendesk`), which
also queues the write-back through Zendesk's API when Zendesk is connected.

Zendesk signs ``base64(HMAC-SHA256(secret, timestamp + raw body))`` into
``X-Zendesk-Webhook-Signature``, with the timestamp in ``X-Zendesk-Webhook-Signature-Timestamp``.
The generic variant for other helpdesks signed ``timestamp + "." + raw body`` as
``X-Router-Signature: sha256=<hex>`` with ``X-Router-Timestamp`` (epoch seconds or RFC 3339); it is
deprecated for Standard Webhooks (``router.serving.inbound``) and goes in the next release.

Checks, in order: headers present, signature matches (constant-time), timestamp within
``max_age_s`` of now (either side), signature not seen before (one Redis ``SET NX EX``, before
any other work, kept until the timestamp plus ``max_age_s``: a replay inside the acceptance
window is caught by the cache, one outside it by the staleness check, with no gap between them
even for a timestamp ahead of our clock). The ``SET NX`` is the only arbiter, so eight copies sent at
once give one 200 and seven 409s.

The replay cache has its own Redis client with a budget of :data:`REPLAY_TIMEOUT_S`, not the
request path's few milliseconds: a check that times out cannot tell whether its ``SET`` landed,
and a helpdesk waits seconds for a webhook anyway. For the same reason it ignores the request
path's circuit breaker, which also opens when Redis is merely slower than those milliseconds.
Only when the call fails is the check skipped rather than failing the helpdesk: the signature
and the staleness window still hold, and the answer is marked degraded.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import math
import time
from datetime import datetime

import msgspec

from router.connectors import zendesk
from router.connectors.base import routing_of
from router.connectors.service import ConnectorService
from router.errors import REDIS_FAULTS, BadInput, Conflict, Forbidden, Unauthorized, without_values
from router.ops import metrics
from router.serving.decisions import DecisionService
from router.settings import WebhookSettings
from router.state.store import StateStore
from schemas.api import ClassifyRequest, Decision, HelpdeskRouting
from schemas.events import Severity

__all__ = ["REPLAY_TIMEOUT_S", "WebhookService", "decide_signed", "helpdesk_routing", "sign_generic", "sign_zendesk"]

ZENDESK_SIGNATURE = "x-zendesk-webhook-signature"
ZENDESK_TIMESTAMP = "x-zendesk-webhook-signature-timestamp"
ROUTER_SIGNATURE = "x-router-signature"
ROUTER_TIMESTAMP = "x-router-timestamp"

REPLAY_TIMEOUT_S = 1.0
"""Budget of the replay check's Redis client (socket and call)."""

_classify_dec = msgspec.json.Decoder(ClassifyRequest)


def sign_zendesk(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Zendesk-Webhook-Signature`` value Zendesk sends for ``body`` at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


def sign_generic(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Router-Signature`` value for ``body`` at ``timestamp``."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def _epoch(timestamp: str) -> float | None:
    text = timestamp.strip()
    if text.isdigit():
        return float(text)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def _reject(reason: str, message: str) -> Unauthorized:
    metrics.WEBHOOK_SIGNATURE_FAILURES.labels(reason).inc()
    return Unauthorized(message)


class WebhookService:
    def __init__(
        self, decisions: DecisionService, replays: StateStore, settings: WebhookSettings, connectors: ConnectorService
    ) -> None:
        """``replays`` is the replay cache's own store, with a :data:`REPLAY_TIMEOUT_S` socket timeout."""
        self.decisions = decisions
        self.replays = replays
        self.settings = settings
        self.connectors = connectors

    # -- verification ------------------------------------------------------------------------

    async def verify(
        self, secret: str, signature: str | None, timestamp: str | None, body: bytes, *, scheme: str
    ) -> bool:
        """Raise on a bad signature, stale timestamp or replay; returns False if replays could not be checked."""
        if not secret:
            raise Forbidden(f"{scheme} webhook is not configured on this service (no signing secret)")
        if not signature or not timestamp:
            raise _reject("missing", f"{scheme} webhook: signature or timestamp header missing")
        expected = (
            sign_zendesk(secret, timestamp, body) if scheme == "zendesk" else sign_generic(secret, timestamp, body)
        )
        if not hmac.compare_digest(expected.encode(), signature.strip().encode()):
            raise _reject("mismatch", f"{scheme} webhook: signature does not match the body")
        at = _epoch(timestamp)
        now = time.time()
        max_age = self.settings.max_age_s
        if at is None or abs(now - at) > max_age:
            raise _reject("stale", f"{scheme} webhook: timestamp missing, unreadable or older than {max_age} s")
        digest = hashlib.sha256(signature.encode()).hexdigest()[:32]
        # Remembered for as long as the staleness check would still accept the request: until
        # timestamp + max_age, which for a timestamp ahead of our clock is up to 2 x max_age away.
        ttl_s = math.ceil(at + max_age - now) + 1
        try:
            async with asyncio.timeout(REPLAY_TIMEOUT_S):
                fresh = await self.replays.claim_replay(digest, ttl_s)
        except REDIS_FAULTS as exc:
            metrics.REDIS_ERRORS.labels("webhook_replay", type(exc).__name__).inc()
            return False
        if not fresh:
            metrics.WEBHOOK_SIGNATURE_FAILURES.labels("replayed").inc()
            raise Conflict(f"{scheme} webhook: this signed request was already processed (replay)")
        return True

    # -- routing -----------------------------------------------------------------------------

    async def zendesk(self, signature: str | None, timestamp: str | None, body: bytes) -> HelpdeskRouting:
        replay_checked = await self.verify(self.settings.zendesk_secret, signature, timestamp, body, scheme="zendesk")
        # Lenient (blank placeholders are absent, display text mapped); the write-back is queued when
        # Zendesk is connected (router.connectors).
        return await self.connectors.accept("zendesk", zendesk.decode_webhook(body), degraded=not replay_checked)

    async def generic(self, signature: str | None, timestamp: str | None, body: bytes) -> Decision:
        """Deprecated ``X-Router-Signature`` scheme (Standard Webhooks: ``router.serving.inbound``)."""
        replay_checked = await self.verify(self.settings.generic_secret, signature, timestamp, body, scheme="generic")
        return await decide_signed(self.decisions, body, replay_checked)


async def decide_signed(decisions: DecisionService, body: bytes, replay_checked: bool) -> Decision:
    """The decision for a verified classify request; marked degraded when replays could not be checked."""
    try:
        req = _classify_dec.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise BadInput(f"webhook body: {without_values(str(exc))}") from None
    except (UnicodeDecodeError, RecursionError):
        raise BadInput("webhook body: not valid UTF-8 JSON") from None
    d = decisions.decide(req, await decisions.resolve(req.customer))
    if not replay_checked and not d.degraded:
        d = msgspec.structs.replace(d, degraded=True, degraded_cause="replay_check_unavailable")
    return d


def helpdesk_routing(d: Decision, asked: Severity, replay_checked: bool) -> HelpdeskRouting:
    """What a helpdesk trigger applies: the queue, the priority (at least the tier's floor), tags."""
    return routing_of(d, asked, degraded=not replay_checked)
