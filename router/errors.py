"""Domain errors. Each knows its HTTP status; one handler in the API converts them.

Messages are shown to the caller as they are: they must never carry a secret, an API key,
a phone number, an e-mail address or any other personal data.
"""

from __future__ import annotations

import re

from redis.exceptions import RedisError

__all__ = [
    "REDIS_FAULTS",
    "BadInput",
    "Conflict",
    "Forbidden",
    "Invalid",
    "NotFound",
    "RateLimited",
    "RouterError",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "without_values",
]

REDIS_FAULTS: tuple[type[Exception], ...] = (RedisError, OSError, TimeoutError, RuntimeError)
"""What a Redis call in the API can raise when Redis is slow, gone or back. RuntimeError: under
uvloop, writing to a connection Redis has just closed raises "unable to perform operation on
<TCPTransport closed=True>" where plain asyncio ignored the write and the read then failed."""

_QUOTED_VALUE = re.compile(r"(Invalid (?:enum )?value) '(?:[^'\\]|\\.)*'")


def without_values(message: str) -> str:
    """A msgspec validation message with the submitted value cut out (it may be personal data).

    ``Invalid enum value 'jane@example.org' - at `$.channel``` -> ``Invalid enum value - at `$.channel```.
    """
    return _QUOTED_VALUE.sub(r"\1", message)


class RouterError(Exception):
    """Base error: ``status_code`` and a message that is safe to show (no secrets, no PII)."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadInput(RouterError):
    status_code = 400
    code = "bad_request"


class Unauthorized(RouterError):
    status_code = 401
    code = "unauthorized"


class Forbidden(RouterError):
    status_code = 403
    code = "forbidden"


class NotFound(RouterError):
    status_code = 404
    code = "not_found"


class Conflict(RouterError):
    status_code = 409
    code = "conflict"


class UnsupportedMediaType(RouterError):
    status_code = 415
    code = "unsupported_media_type"


class Invalid(RouterError):
    """Well-formed request whose content cannot be used (e.g. a policy file with a mistake)."""

    status_code = 422
    code = "unprocessable"


class RateLimited(RouterError):
    status_code = 429
    code = "too_many_requests"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, round(retry_after_s + 0.5)))})


class Unavailable(RouterError):
    """A dependency of an administrative action is down (never used for decisions: they degrade)."""

    status_code = 503
    code = "unavailable"
