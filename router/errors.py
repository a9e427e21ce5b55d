"""Domain errors. Each knows its HTTP status; one handler in the API converts them."""

from __future__ import annotations

__all__ = ["BadInput", "Forbidden", "NotFound", "RouterError", "Unauthorized"]


class RouterError(Exception):
    """Base error: ``status_code`` and a message that is safe to show (no secrets, no PII)."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


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
