"""API keys with scopes, and a per-key rate limit.

Keys come from ``ROUTER_AUTH_KEYS`` (``name:scope+scope:secret[:expires=YYYY-MM-DD],...``). Only SHA-256 digests
of the secrets are kept; a presented key is hashed and looked up, so the comparison never
depends on how many leading characters of a real key the caller guessed (a dict lookup on
digests leaks nothing about the secrets). Each route names the scopes that may call it in
its ``opt["scopes"]``; :func:`require_key` is the one check that enforces them (the app's
``before_request`` hook calls it on every request, before anything looks at the body).

Rate limiting is an in-process token bucket per key: with several uvicorn workers each
worker has its own bucket, so the effective limit is ``workers x rate`` (documented).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Any

import msgspec
from litestar.connection import ASGIConnection

from router.errors import Forbidden, RateLimited, Unauthorized
from router.settings import AuthSettings, placeholder_reason

__all__ = [
    "DEV_KEY",
    "KEY_REQUIRED",
    "SCOPES",
    "ApiKey",
    "Authenticator",
    "ConfigError",
    "parse_keys",
    "require_key",
]

SCOPES: frozenset[str] = frozenset({"helpdesk", "telephony", "chatbot", "events", "ops", "admin"})
DEV_KEY = "router-dev-key"
"""Accepted only with ``ROUTER_AUTH_DEV_MODE=true`` and no configured keys (``router dev``, tests)."""
_HEADER = "x-api-key"
KEY_REQUIRED: dict[str, Any] = {"scopes": frozenset()}
"""``opt`` of a controller whose routes need a key: a route that names no scopes of its own is
closed to every key (403) rather than open."""


class ConfigError(ValueError):
    """The key configuration cannot be used (the message never contains a secret)."""


class ApiKey(msgspec.Struct, frozen=True):
    """A caller: its name (for the audit log), what it may do, and until when."""

    name: str
    scopes: frozenset[str]
    expires: date | None = None
    """Last day (UTC) the key is accepted; from the next day on it gets 401."""


_EXPIRES = re.compile(r"^(.*):expires=(\S+)$")


def parse_keys(spec: str) -> dict[bytes, ApiKey]:
    """``name:scope+scope:secret[:expires=YYYY-MM-DD],...`` -> SHA-256(secret) -> key.

    A secret must be a real one (:func:`router.settings.placeholder_reason`: 16+ characters, no
    placeholder such as ``replace-me``). Raises :class:`ConfigError` (whose message never contains
    a secret).
    """
    keys: dict[bytes, ApiKey] = {}
    names: set[str] = set()
    for i, entry in enumerate(e.strip() for e in spec.split(",")):
        if not entry:
            continue
        name, sep1, rest = entry.partition(":")
        scopes_text, sep2, secret = rest.partition(":")
        where = f"ROUTER_AUTH_KEYS entry {i + 1}"
        expires: date | None = None
        dated = _EXPIRES.match(secret)
        if dated:
            secret = dated.group(1)
            try:
                expires = date.fromisoformat(dated.group(2))
            except ValueError:
                raise ConfigError(f"{where} ({name}): expires is not a date (YYYY-MM-DD)") from None
        if not (sep1 and sep2 and name and scopes_text):
            raise ConfigError(f"{where}: expected name:scope+scope:secret")
        scopes = frozenset(s.strip() for s in scopes_text.split("+") if s.strip())
        unknown = scopes - SCOPES
        if unknown:
            raise ConfigError(f"{where} ({name}): unknown scopes {sorted(unknown)} (known: {sorted(SCOPES)})")
        weak = placeholder_reason(secret)
        if weak:
            raise ConfigError(f"{where} ({name}): the secret {weak}")
        if name in names:
            raise ConfigError(f"{where}: duplicate key name {name!r}")
        digest = _digest(secret)
        if digest in keys:
            raise ConfigError(f"{where} ({name}): same secret as key {keys[digest].name!r}")
        names.add(name)
        keys[digest] = ApiKey(name, scopes, expires)
    return keys


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class _Bucket:
    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at


class Authenticator:
    """Known keys and their rate-limit buckets (one instance per worker, on app state)."""

    def __init__(self, settings: AuthSettings) -> None:
        keys = parse_keys(settings.keys)
        if not keys:
            if not settings.dev_mode:
                raise ConfigError(
                    "no API keys configured: set ROUTER_AUTH_KEYS=name:scope+scope:secret,... "
                    "(or ROUTER_AUTH_DEV_MODE=true for local development only)"
                )
            keys = {_digest(DEV_KEY): ApiKey("dev", SCOPES)}
        self.keys = keys
        self.rate = settings.rate_per_s
        self.burst = float(max(1, settings.burst))
        self._buckets: dict[str, _Bucket] = {}

    def authenticate(self, presented: str | None, allowed: Iterable[str]) -> ApiKey:
        """The key behind ``presented`` if it may use a route open to ``allowed`` scopes; takes a token (429)."""
        key = self.check(presented, allowed)
        self.take(key.name)
        return key

    def check(self, presented: str | None, allowed: Iterable[str]) -> ApiKey:
        """:meth:`authenticate` without the rate limit: no side effect (401/403 only)."""
        if not presented:
            raise Unauthorized("missing API key: send it in the X-API-Key header")
        key = self.keys.get(_digest(presented))
        if key is None:
            raise Unauthorized("unknown API key")
        if key.expires is not None and datetime.now(UTC).date() > key.expires:
            raise Unauthorized(f"API key {key.name!r} expired on {key.expires.isoformat()}")
        if key.scopes.isdisjoint(allowed):
            raise Forbidden(f"API key {key.name!r} lacks the scope for this endpoint (needs one of {sorted(allowed)})")
        return key

    def take(self, name: str) -> None:
        """One token of the key's bucket, or :class:`RateLimited` (429 with ``Retry-After``).

        A refused take leaves the bucket as a repeated call at the same instant would find it, so
        a request may be refused twice (router.api.fast hands it to Litestar, which asks again).
        """
        now = time.monotonic()
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = _Bucket(self.burst, now)
        tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if tokens < 1.0:
            bucket.tokens = tokens
            raise RateLimited(
                f"rate limit of {self.rate:g} requests/s for this key exceeded", (1.0 - tokens) / self.rate
            )
        bucket.tokens = tokens - 1.0


def require_key(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """A valid key with one of the route's ``opt["scopes"]``; the caller lands on ``state.caller``.

    Routes without ``opt["scopes"]`` are open (health, metrics, the signed webhooks); controllers
    of keyed routes set ``opt = KEY_REQUIRED``. The key is read by :func:`_presented_key`. Not a Litestar guard: Litestar copies the route handler for each guard
    call, which cost more than the check itself.
    """
    scope = connection.scope
    opt = scope["route_handler"].opt
    scopes = opt.get("scopes")
    if scopes is None:
        return
    auth: Authenticator = scope["litestar_app"].state.auth
    presented = _presented_key(connection, opt)
    # What ``connection.state.caller = ...`` does, without building a State wrapper (1.4 us) for it:
    # Litestar's State is a view of scope["state"], which the app creates for every request.
    scope["state"]["caller"] = auth.authenticate(presented, scopes)


def _presented_key(connection: ASGIConnection[Any, Any, Any, Any], opt: dict[str, Any]) -> str | None:
    """The key a caller presents: ``X-API-Key``, ``Authorization: Bearer <key>`` or ``Basic`` with the key as password.

    Basic is for callers that cannot set a header of their own, only credentials in the URL
    (Twilio Studio's HTTP widget: ``https://any-name:<key>@host/v1/screenpop?phone=...``; the
    client sends them as the ``Authorization`` header, never in the request line); the user name is
    ignored. Routes with ``opt["query_key"]`` also accept ``?key=`` (a CTI opening the HTML card
    cannot set headers); such URLs must not be logged, and the service writes no access log.
    """
    headers = connection.headers
    presented = headers.get(_HEADER)
    if presented is not None:
        return presented
    authorization = headers.get("authorization")
    if authorization is not None:
        kind = authorization[:6].lower()
        if kind == "bearer":
            return authorization[7:].strip() if authorization[6:7] == " " else None
        if kind == "basic ":
            try:
                decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
            except (binascii.Error, ValueError):
                return None
            _, sep, password = decoded.partition(":")
            return password if sep else None
    if opt.get("query_key"):
        return connection.query_params.get("key")
    return None
