"""Request metrics, structured logs and multiprocess-aware metrics exposition.

- :class:`RequestMetricsMiddleware`: a pure ASGI middleware that counts requests and
  times them per route template and status class, and gives each request an id
  (``X-Request-ID``, taken from the caller when sane, else generated) that every log
  line written while serving it carries.
- :func:`logging_config` / :func:`setup_logging`: one JSON object per log line, with
  anything that looks like an e-mail address or a phone number redacted.
- :func:`prepare_multiprocess` / :func:`metrics_payload`: correct totals with several
  uvicorn workers through prometheus-client's multiprocess mode.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import logging.config
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from router.ops import metrics

if TYPE_CHECKING:  # the consumer imports this module too, and needs no web framework
    from litestar.logging.config import LoggingConfig
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "MULTIPROC_ENV",
    "JsonFormatter",
    "RedactFilter",
    "RequestMetricsMiddleware",
    "bind_decision_id",
    "current_request_id",
    "litestar_logging_config",
    "logging_config",
    "metrics_payload",
    "prepare_multiprocess",
    "redact",
    "setup_logging",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client reads it when first imported: set it before any worker starts."""

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("router_request_id", default=None)
_decision_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("router_decision_id", default=None)

access_log = logging.getLogger("router.access")


def current_request_id() -> str | None:
    """Id of the request being served in this context (None outside a request)."""
    return _request_id.get()


def bind_decision_id(decision_id: str) -> None:
    """Attach ``decision_id`` to every later log line of the current request."""
    _decision_id.set(decision_id)


# --- request metrics ---------------------------------------------------------------------------

_UNMATCHED = "unmatched"
_REQUEST_ID_HEADER = b"x-request-id"
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class RequestMetricsMiddleware:
    """Counts and times HTTP requests by route template and status class; binds a request id.

    Use it as Litestar middleware (``middleware=[RequestMetricsMiddleware]``; there it sees
    matched routes only) or wrap the whole app with it (``RequestMetricsMiddleware(app)``;
    then unmatched paths count under ``route="unmatched"``). The route label is the
    template (``/v1/customers/{id}``), never the raw path, so it stays low-cardinality and
    free of identifiers. ``access_log=True`` writes one JSON line per request; it is off by
    default because the hot path should not pay for it.
    """

    def __init__(self, app: ASGIApp, *, access_log: bool = False) -> None:
        self.app = app
        self.access_log = access_log
        # labels() takes a lock and hashes the label tuple; the children are reused instead.
        self._counters: dict[tuple[str, str], Any] = {}
        self._histograms: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type: str = scope["type"]
        if scope_type != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _incoming_request_id(scope.get("headers", ())) or secrets.token_hex(8)
        rid_token = _request_id.set(request_id)
        did_token = _decision_id.set(None)
        status = 500
        encoded_id = request_id.encode()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (_REQUEST_ID_HEADER, encoded_id)]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = str(scope.get("path_template") or _UNMATCHED)
            self._observe(route, status, elapsed)
            if self.access_log:
                access_log.info(
                    "request",
                    extra={
                        "method": scope.get("method", ""),
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                    },
                )
            _decision_id.reset(did_token)
            _request_id.reset(rid_token)

    def _observe(self, route: str, status: int, elapsed: float) -> None:
        status_class = f"{min(max(status // 100, 1), 5)}xx"
        counter = self._counters.get((route, status_class))
        if counter is None:
            # First request on this route: create every status class at zero, so an error
            # ratio has a denominator and a numerator series before the first error.
            for cls in metrics.STATUS_CLASSES:
                self._counters[(route, cls)] = metrics.REQUESTS.labels(route, cls)
            counter = self._counters.setdefault((route, status_class), metrics.REQUESTS.labels(route, status_class))
        counter.inc()
        histogram = self._histograms.get(route)
        if histogram is None:
            histogram = self._histograms[route] = metrics.REQUEST_SECONDS.labels(route)
        histogram.observe(elapsed)


def _incoming_request_id(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == _REQUEST_ID_HEADER:
            text = value.decode("latin-1")
            # A caller's id is kept for correlation only if it cannot smuggle anything in.
            return text if _SAFE_ID.fullmatch(text) else None
    return None


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
    # A bare run of digits not starting like a phone number is an offset, an id, a time.
    if not (international or separated or text.startswith("0")):
        return text
    if _DECIMAL.fullmatch(text) or _DOTTED_QUAD.fullmatch(text) or _DATE.search(text):
        return text
    return "<phone>"


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


# --- multiprocess metrics ------------------------------------------------------------------------


def prepare_multiprocess(workers: int) -> Path | None:
    """Set up prometheus-client's multiprocess mode before uvicorn starts its workers.

    With several workers and no ``PROMETHEUS_MULTIPROC_DIR``, a private temporary
    directory is created (and removed at exit) and exported, so every worker process
    (started fresh by uvicorn) writes its values there. Files of earlier processes in a
    given directory are removed: a restarted container would otherwise count them again.
    Returns the directory, or None when a single process keeps its metrics in memory.
    """
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        if workers <= 1:
            return None
        directory = tempfile.mkdtemp(prefix="router-metrics-")
        os.environ[MULTIPROC_ENV] = directory
        atexit.register(shutil.rmtree, directory, True)
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    own = f"_{os.getpid()}.db"
    for stale in path.glob("*.db"):
        if not stale.name.endswith(own):
            stale.unlink(missing_ok=True)
    return path


def metrics_payload() -> bytes:
    """Prometheus text exposition: summed over all worker processes in multiprocess mode."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry(auto_describe=True)
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry)
