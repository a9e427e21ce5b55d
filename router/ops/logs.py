"""Structured logs: one JSON object per line, personal data redacted, request and decision ids bound.

- :func:`logging_config` / :func:`setup_logging`: one JSON object per log line, with
  anything that looks like an e-mail address or a phone number redacted.
- :func:`bind_request_id` / :func:`bind_decision_id`: ids that every log line written while
  serving a request carries (the API's middleware binds the request id).
"""

from __future__ import annotations

import contextvars
import logging
import logging.config
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
import phonenumbers

if TYPE_CHECKING:  # the consumer imports this module too, and needs no web framework
    from litestar.logging.config import LoggingConfig

__all__ = [
    "JsonFormatter",
    "RedactFilter",
    "bind_decision_id",
    "bind_request",
    "current_request_id",
    "litestar_logging_config",
    "logging_config",
    "redact",
    "setup_logging",
    "unbind_request",
]

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("router_request_id", default=None)
_decision_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("router_decision_id", default=None)
_Tokens = tuple[contextvars.Token[str | None], contextvars.Token[str | None]]


def current_request_id() -> str | None:
    """Id of the request being served in this context (None outside a request)."""
    return _request_id.get()


def bind_request(request_id: str) -> _Tokens:
    """Attach ``request_id`` (and no decision id yet) to every log line of the current request."""
    return _request_id.set(request_id), _decision_id.set(None)


def unbind_request(tokens: _Tokens) -> None:
    """Undo :func:`bind_request` when the request is done."""
    _decision_id.reset(tokens[1])
    _request_id.reset(tokens[0])


def bind_decision_id(decision_id: str) -> None:
    """Attach ``decision_id`` to every later log line of the current request."""
    _decision_id.set(decision_id)


# --- logging -----------------------------------------------------------------------------------

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# Digits with phone-like separators; the candidate is checked further in _phone().
_PHONE = re.compile(r"(?<![\w.+/-])(?:\+|00)?\(?\d[\d ()./-]{5,}\d(?![\w])")
_DATE = re.compile(r"(?:19|20)\d{2}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])")
_DECIMAL = re.compile(r"\d+\.\d+")
_DOTTED_QUAD = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")


def _phone(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = sum(c.isdigit() for c in text)
    international = text.startswith(("+", "00"))
    separated = any(not c.isdigit() for c in text)
    if not 7 <= digits <= 15:
        return text
    # A bare run of digits not starting like a phone number is an offset, an id, a time, unless
    # it is a whole international number without its "+" (4915123456789): 10-15 digits that a
    # country code turns into a valid number. Unix times in seconds or milliseconds never are.
    if not (international or separated or text.startswith("0")):
        return "<phone>" if digits >= 10 and _valid_international(text) else text
    if _DECIMAL.fullmatch(text) or _DOTTED_QUAD.fullmatch(text) or _DATE.search(text):
        return text
    return "<phone>"


def _valid_international(digits: str) -> bool:
    try:
        return bool(phonenumbers.is_valid_number(phonenumbers.parse("+" + digits, None)))
    except phonenumbers.NumberParseException:
        return False


def redact(text: str) -> str:
    """``text`` with e-mail addresses and phone numbers replaced by ``<email>`` / ``<phone>``."""
    if "@" in text:
        text = _EMAIL.sub("<email>", text)
    return _PHONE.sub(_phone, text)


# Attributes every LogRecord has; anything else came in through ``extra=``.
# (uvicorn adds ``color_message``: the message again, with terminal escapes.)
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}


class RedactFilter(logging.Filter):
    """Rewrites a record's message (and string ``extra`` fields) through :func:`redact`.

    Attach it to handlers, not loggers: a logger's filters do not see records that
    propagate from its children.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg = redact(message)
        record.args = None
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, request/decision id, extras, exc."""

    _encoder = msgspec.json.Encoder(enc_hook=str)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = _request_id.get()
        if request_id is not None:
            entry["request_id"] = request_id
        decision_id = _decision_id.get()
        if decision_id is not None:
            entry["decision_id"] = decision_id
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc"] = redact(record.exc_text)
        return self._encoder.encode(entry).decode()


def logging_config(level: str = "info", *, access_log: bool = False) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for JSON lines on stderr; also usable as uvicorn's ``log_config``.

    uvicorn's own loggers propagate into the same handler; its access log stays off
    unless ``access_log`` (the request middleware writes a better one anyway).
    """
    lvl = level.upper()
    logging.getLevelName(lvl)  # an unknown level fails in dictConfig with a clear message
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": "router.ops.logs.RedactFilter"}},
        "formatters": {"json": {"()": "router.ops.logs.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["redact"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": lvl},
        "loggers": {
            "uvicorn": {"handlers": [], "level": lvl, "propagate": True},
            "uvicorn.error": {"handlers": [], "level": lvl, "propagate": True},
            "uvicorn.access": {"handlers": [], "level": lvl if access_log else "WARNING", "propagate": True},
            "aiokafka": {"handlers": [], "level": "WARNING" if lvl in {"DEBUG", "INFO"} else lvl, "propagate": True},
            # httpx logs every helpdesk call (method, URL, status) at INFO; the connectors log what failed.
            "httpx": {"handlers": [], "level": "WARNING" if lvl in {"DEBUG", "INFO"} else lvl, "propagate": True},
        },
    }


def litestar_logging_config(level: str = "info") -> LoggingConfig:
    """Litestar's ``logging_config``: its logger (unhandled exceptions with their traceback)
    propagates into the JSON handler of :func:`setup_logging` instead of replacing the root
    logger's configuration with Litestar's own text format."""
    from litestar.logging.config import LoggingConfig

    return LoggingConfig(
        configure_root_logger=False,
        formatters={"standard": {"()": "router.ops.logs.JsonFormatter"}},
        # Litestar adds a console handler and a queue listener thread unless these exist.
        handlers={"console": {"class": "logging.NullHandler"}, "queue_listener": {"class": "logging.NullHandler"}},
        loggers={"litestar": {"level": level.upper(), "handlers": [], "propagate": True}},
        log_exceptions="always",
    )


def setup_logging(level: str = "info", *, access_log: bool = False) -> None:
    """Configure this process for JSON log lines at ``level`` (``ROUTER_API_LOG_LEVEL``)."""
    logging.config.dictConfig(logging_config(level, access_log=access_log))
