"""Console sign-in: an API key once, then a session cookie; CSRF tokens on every form.

* Sign-in checks the key exactly as the API does (:meth:`Authenticator.authenticate`) and
  needs one of the console's scopes. The session lives in Redis (every worker sees it, sign-out
  ends it everywhere); the cookie is HttpOnly, SameSite=Strict, limited to ``/console``,
  Secure when the request came over TLS, and expires with the session.
* Each request re-reads the key by name: a key removed from the configuration or expired
  ends its sessions, and a key's scopes are its current ones.
* Every POST carries the session's CSRF token in a form field (compared in constant time)
  and, when the browser sends one, an ``Origin`` of this very host. The sign-in form itself
  is protected by a double-submit token (a short-lived cookie and the same value in the form).
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from litestar import Request
from litestar.datastructures import Cookie, State

from router.api.auth import ApiKey, Authenticator
from router.errors import Forbidden, Unauthorized
from router.settings import ConsoleSettings
from router.state.console import ConsoleSession, ConsoleState

__all__ = [
    "CONSOLE_SCOPES",
    "LOGIN_COOKIE",
    "SESSION_COOKIE",
    "NotSignedIn",
    "Visitor",
    "check_csrf",
    "check_origin",
    "login_cookie",
    "session_cookie",
    "sign_in",
    "visitor_of",
]

CONSOLE_SCOPES = frozenset({"helpdesk", "ops", "admin"})
SESSION_COOKIE = "router_console"
LOGIN_COOKIE = "router_console_login"
_PATH = "/console"
_LOGIN_TTL_S = 900


class NotSignedIn(Unauthorized):
    """No valid session: pages redirect to the sign-in form, form posts are refused."""


@dataclass(frozen=True, slots=True)
class Visitor:
    """The signed-in person: the API key's name and current scopes, and the session's CSRF token."""

    token: str
    name: str
    scopes: frozenset[str]
    csrf: str

    def can(self, *scopes: str) -> bool:
        return not self.scopes.isdisjoint(scopes)


def _secure(request: Request[object, object, State]) -> bool:
    return request.url.scheme == "https"


def session_cookie(request: Request[object, object, State], token: str, max_age: int) -> Cookie:
    """The session cookie (an empty value with ``max_age=0`` deletes it)."""
    return Cookie(
        key=SESSION_COOKIE, value=token, path=_PATH, max_age=max_age, httponly=True,
        secure=_secure(request), samesite="strict",
    )  # fmt: skip


def login_cookie(request: Request[object, object, State], token: str, max_age: int = _LOGIN_TTL_S) -> Cookie:
    """The sign-in form's double-submit token."""
    return Cookie(
        key=LOGIN_COOKIE, value=token, path=_PATH, max_age=max_age, httponly=True,
        secure=_secure(request), samesite="strict",
    )  # fmt: skip


def check_origin(request: Request[object, object, State]) -> None:
    """A POST whose browser says it comes from another site is refused (CSRF defence in depth)."""
    origin = request.headers.get("origin")
    if origin is None:  # older browsers and non-browser clients; the token still has to match
        return
    if urlsplit(origin).netloc != request.headers.get("host", ""):
        raise Forbidden("form posted from another site")


def check_csrf(request: Request[object, object, State], expected: str, sent: str | None) -> None:
    """The form's token must be the session's (or the sign-in cookie's)."""
    check_origin(request)
    if not sent or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        raise Forbidden("the form's security token is missing or stale: reload the page and try again")


async def sign_in(
    state: ConsoleState, auth: Authenticator, settings: ConsoleSettings, presented: str
) -> tuple[str, Visitor, int]:
    """A new session for the key ``presented``: (cookie value, visitor, lifetime in seconds).

    Raises Unauthorized (unknown or expired key) or Forbidden (no console scope).
    """
    key = auth.authenticate(presented.strip(), CONSOLE_SCOPES)
    token = secrets.token_urlsafe(32)
    now = time.time()
    lifetime = max(60, round(settings.session_hours * 3600))
    scopes = sorted(key.scopes & CONSOLE_SCOPES)
    session = ConsoleSession(
        key_name=key.name, scopes=scopes, csrf=secrets.token_urlsafe(32), created=now, expires=now + lifetime
    )
    await state.create_session(token, session)
    return token, Visitor(token, key.name, frozenset(scopes), session.csrf), lifetime


async def visitor_of(request: Request[object, object, State], state: ConsoleState, auth: Authenticator) -> Visitor:
    """The signed-in visitor of this request, or :class:`NotSignedIn`."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token or len(token) > 100:
        raise NotSignedIn("sign in with an API key")
    session = await state.session(token)
    if session is None:
        raise NotSignedIn("your session has ended: sign in again")
    key = _key_named(auth, session.key_name)
    if key is None or _expired(key):
        await state.end_session(token)
        raise NotSignedIn("the API key of this session is no longer valid: sign in again")
    scopes = frozenset(session.scopes) & key.scopes
    return Visitor(token, key.name, scopes, session.csrf)


def _key_named(auth: Authenticator, name: str) -> ApiKey | None:
    for key in auth.keys.values():
        if key.name == name:
            return key
    return None


def _expired(key: ApiKey) -> bool:
    return key.expires is not None and datetime.now(UTC).date() > key.expires
