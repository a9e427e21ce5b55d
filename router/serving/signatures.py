"""Webhook signature schemes of the vendors that call the router, as each one documents it.

Pure functions (no I/O, the clock passed in) so each scheme is tested against its vendor's own
test vectors. Every failure raises :class:`SignatureError` with a reason label for the metrics
(``missing``, ``mismatch``, ``stale``, ``malformed``) and a message that never contains a secret
or a signature.

* **Standard Webhooks** (standardwebhooks.com, spec 1.0.0): ``webhook-id``, ``webhook-timestamp``
  (integer Unix seconds) and ``webhook-signature``, a space-separated list of ``v1,<base64>``
  where each is HMAC-SHA256 over ``id.timestamp.body`` keyed by the base64 part of the
  ``whsec_<base64>`` secret. Several signatures let the sender rotate its secret: one match is
  enough; other schemes (``v1a`` asymmetric) are skipped.
* **Stripe** (docs.stripe.com/webhooks, "verify manually"): ``Stripe-Signature:
  t=<unix>,v1=<hex>[,v1=<hex>...]``, HMAC-SHA256 over ``t.body`` keyed by the endpoint secret
  *as text* (``whsec_...`` is not decoded, unlike Standard Webhooks); within a tolerance of now.
* **Intercom** (developers.intercom.com, "signed notifications"): ``X-Hub-Signature:
  sha1=<hex>``, HMAC-SHA1 over the body keyed by the app's client secret. No timestamp: the
  caller bounds replays with the notification's own id and time (see ``router.serving.inbound``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

__all__ = [
    "SignatureError",
    "parse_standard_secret",
    "sign_intercom",
    "sign_standard",
    "sign_stripe",
    "verify_intercom",
    "verify_standard",
    "verify_stripe",
]

_MAX_HEADER = 4096
"""Longer signature headers are refused before any parsing (a sender rotating a few secrets needs far less)."""


class SignatureError(ValueError):
    """A request whose signature cannot be accepted; ``reason`` is a low-cardinality metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# -- Standard Webhooks ---------------------------------------------------------------------------


def parse_standard_secret(secret: str) -> bytes:
    """The key bytes of a ``whsec_<base64>`` secret (the prefix is optional, padding too).

    Raises ``ValueError`` for a secret that is not base64 or shorter than 16 bytes.
    """
    text = secret.strip()
    text = text.removeprefix("whsec_")
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("Standard Webhooks secret must be whsec_ followed by base64") from None
    if len(key) < 16:
        raise ValueError("Standard Webhooks secret is shorter than 16 bytes")
    return key


def sign_standard(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value (one ``v1`` signature) a sender writes for ``body``."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify_standard(
    key: bytes,
    msg_id: str | None,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    *,
    now: float,
    tolerance_s: int,
) -> int:
    """Check a Standard Webhooks request; returns its timestamp (Unix seconds)."""
    if not msg_id or not timestamp or not signature:
        raise SignatureError("missing", "webhook-id, webhook-timestamp or webhook-signature header missing")
    if len(signature) > _MAX_HEADER or len(msg_id) > 256 or "." in msg_id:
        raise SignatureError("malformed", "webhook-id or webhook-signature header malformed")
    text = timestamp.strip()
    if not text.isdigit() or len(text) > 12:
        raise SignatureError("malformed", "webhook-timestamp must be integer Unix seconds")
    at = int(text)
    expected = hmac.new(key, f"{msg_id}.{text}.".encode() + body, hashlib.sha256).digest()
    matched = False
    for item in signature.split():
        version, _, value = item.partition(",")
        if version != "v1":
            continue  # v1a (asymmetric) or a future scheme: not ours to check
        try:
            given = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        matched |= hmac.compare_digest(expected, given)
    if not matched:
        raise SignatureError("mismatch", "webhook-signature does not match the body (no valid v1 signature)")
    if abs(now - at) > tolerance_s:
        raise SignatureError("stale", f"webhook-timestamp is more than {tolerance_s} s from now")
    return at


# -- Stripe --------------------------------------------------------------------------------------


def sign_stripe(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Stripe-Signature`` value Stripe sends for ``body`` at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_stripe(secret: str, header: str | None, body: bytes, *, now: float, tolerance_s: int) -> int:
    """Check a ``Stripe-Signature`` header; returns its timestamp (Unix seconds).

    As Stripe documents it: split on ``,``, then each element on the first ``=``; ``t`` is the
    timestamp, every ``v1`` a candidate signature (several while a secret is being rolled),
    other schemes (``v0``, test-mode) are ignored; one ``v1`` must match, and ``t`` must lie
    within ``tolerance_s`` of now.
    """
    if not header:
        raise SignatureError("missing", "Stripe-Signature header missing")
    if len(header) > _MAX_HEADER:
        raise SignatureError("malformed", "Stripe-Signature header malformed")
    timestamp: str | None = None
    candidates: list[str] = []
    for element in header.split(","):
        name, sep, value = element.strip().partition("=")
        if not sep:
            continue
        if name == "t":
            timestamp = value.strip()
        elif name == "v1":
            candidates.append(value.strip())
    if timestamp is None or not timestamp.isdigit() or len(timestamp) > 12:
        raise SignatureError("malformed", "Stripe-Signature has no t=<Unix seconds> element")
    if not candidates:
        raise SignatureError("missing", "Stripe-Signature has no v1 signature")
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest().encode()
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate.lower().encode())
    if not matched:
        raise SignatureError("mismatch", "Stripe-Signature does not match the body (no valid v1 signature)")
    at = int(timestamp)
    if abs(now - at) > tolerance_s:
        raise SignatureError("stale", f"Stripe-Signature timestamp is more than {tolerance_s} s from now")
    return at


# -- Intercom ------------------------------------------------------------------------------------


def sign_intercom(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature`` value Intercom sends for ``body``."""
    return "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


def verify_intercom(secret: str, header: str | None, body: bytes) -> None:
    """Check an ``X-Hub-Signature: sha1=<hex>`` header against the raw body."""
    if not header:
        raise SignatureError("missing", "X-Hub-Signature header missing")
    scheme, sep, value = header.strip().partition("=")
    if not sep or scheme.lower() != "sha1" or len(value) > 128:
        raise SignatureError("malformed", "X-Hub-Signature must be sha1=<hex>")
    expected = hmac.new(secret.encode(), body, hashlib.sha1).hexdigest().encode()
    if not hmac.compare_digest(expected, value.strip().lower().encode()):
        raise SignatureError("mismatch", "X-Hub-Signature does not match the body")
