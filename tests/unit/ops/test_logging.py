"""Structured logs: one JSON object per line, request and decision ids, no personal data in clear."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Annotated

import pytest
from litestar import Litestar, get
from litestar.middleware import DefineMiddleware
from litestar.params import PathParameter
from litestar.testing import TestClient

from router.api.middleware import RequestMetricsMiddleware
from router.ops.logs import (
    JsonFormatter,
    RedactFilter,
    bind_decision_id,
    current_request_id,
    redact,
)

PERSONAL = [
    "anna.schmidt+support@example.co.uk",
    "+49 30 901820",
    "+4930901820",
    "0049 30 901820",
    "030 901820",
    "(030) 901-820",
    "030/901820",
    "+1 (415) 555-0132",
    # whole international numbers written without "+" or "00" (as some CRMs and CTIs store them)
    "4915123456789",
    "4930901820",
    "14155550132",
    "447911123456",
    "8613800138000",
]
NOT_PERSONAL = [
    "2026-11-25 08:51:23",
    "2026-11-25T08:51:23.249+00:00",
    "took 0.000123456 s",
    "127.0.0.1:8000",
    "10.200.100.250",
    "offset 12345678",
    "events:3@1234567",
    "d-18f3a2b1c4d-7f3a-1b",
    "lag 1500 records",
    "version churn-v1 (2026-10-01)",
    "at 1733456789",  # Unix time, seconds
    "ts=1733456789123",  # Unix time, milliseconds
    "20261206043512",  # compact timestamp
    "ratio 0.4915123456789",
    "took 4915.123456789 ms",
    "id 100000000000",
    "request 49151234567890123",  # longer than any phone number
    "trace d-4915123456789abc",
]


@pytest.mark.parametrize("text", PERSONAL)
def test_emails_and_phone_numbers_are_redacted(text: str) -> None:
    out = redact(f"lookup for {text} failed")
    assert out.startswith("lookup for <") and out.endswith("> failed"), out
    assert not any(ch.isdigit() for ch in out), out


@pytest.mark.parametrize("text", NOT_PERSONAL)
def test_times_numbers_and_ids_stay_readable(text: str) -> None:
    assert redact(text) == text


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactFilter())
    logger = logging.getLogger("router.test-logging")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_redact_args_extras_and_tracebacks(captured: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = captured
    log.warning("no customer for %s", "+49 30 901820", extra={"contact": "anna@example.com", "partition": 3})
    try:
        raise ValueError("bad address anna@example.com")
    except ValueError:
        log.exception("lookup failed")
    first, second = _lines(stream)
    assert first["level"] == "WARNING" and first["logger"] == "router.test-logging"
    assert first["msg"] == "no customer for <phone>"
    assert first["contact"] == "<email>" and first["partition"] == 3
    assert "request_id" not in first  # outside a request
    assert "anna@example.com" not in str(second["exc"]) and "ValueError" in str(second["exc"])
    assert "901820" not in stream.getvalue() and "anna@" not in stream.getvalue()


def test_lines_carry_the_request_and_decision_id(captured: tuple[logging.Logger, io.StringIO]) -> None:
    log, stream = captured

    @get("/decide", sync_to_thread=False)
    def decide() -> dict[str, str | None]:
        log.info("resolving")
        bind_decision_id("d-1234-ab")
        log.info("decided")
        return {"request_id": current_request_id()}

    with TestClient(Litestar([decide], middleware=[RequestMetricsMiddleware])) as client:
        r = client.get("/decide")
        client.get("/decide", headers={"X-Request-ID": "upstream-7"})
    log.info("after")
    resolving, decided, resolving2, _, after = _lines(stream)
    rid = r.headers["x-request-id"]
    assert r.json()["request_id"] == rid == resolving["request_id"] == decided["request_id"]
    assert "decision_id" not in resolving and decided["decision_id"] == "d-1234-ab"
    assert resolving2["request_id"] == "upstream-7" and "decision_id" not in resolving2
    assert "request_id" not in after and "decision_id" not in after


def test_access_log_is_off_by_default_and_structured_when_on() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactFilter())
    access = logging.getLogger("router.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:

        @get("/customers/{ref:str}", sync_to_thread=False)
        def customer(ref: Annotated[str, PathParameter()]) -> str:
            return ref

        with TestClient(Litestar([customer], middleware=[RequestMetricsMiddleware])) as client:
            client.get("/customers/anna@example.com")
        assert stream.getvalue() == ""

        with_log = DefineMiddleware(RequestMetricsMiddleware, access_log=True)
        with TestClient(Litestar([customer], middleware=[with_log])) as client:
            client.get("/customers/anna@example.com")
        (line,) = _lines(stream)
        # the route template, never the raw path with the identifier in it
        assert line["route"] == "/customers/{ref}" and line["status"] == 200 and line["method"] == "GET"
        assert isinstance(line["duration_ms"], float) and line["request_id"]
        assert "anna" not in stream.getvalue()
    finally:
        access.removeHandler(handler)


def test_setup_logging_writes_json_at_the_configured_level() -> None:
    code = (
        "import logging\n"
        "from router.ops.logs import setup_logging\n"
        "setup_logging('warning')\n"
        "logging.getLogger('router.x').info('hidden')\n"
        "logging.getLogger('router.x').warning('caller %s', '+49 30 901820')\n"
        "logging.getLogger('uvicorn.access').warning('uvicorn says hi')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [entry["msg"] for entry in lines] == ["caller <phone>", "uvicorn says hi"]
    assert {entry["level"] for entry in lines} == {"WARNING"}


def test_an_unknown_level_is_refused() -> None:
    code = "from router.ops.logs import setup_logging\nsetup_logging('chatty')\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "CHATTY" in done.stderr


def test_litestar_reports_unhandled_errors_through_the_json_handler() -> None:
    code = (
        "import logging\n"
        "from litestar import Litestar, get\n"
        "from litestar.testing import TestClient\n"
        "from router.api.middleware import RequestMetricsMiddleware\n"
        "from router.ops.logs import litestar_logging_config, setup_logging\n"
        "setup_logging('info')\n"
        "@get('/boom', sync_to_thread=False)\n"
        "def boom() -> str:\n"
        "    raise RuntimeError('cannot reach anna@example.com')\n"
        "app = Litestar([boom], middleware=[RequestMetricsMiddleware], logging_config=litestar_logging_config('info'))\n"
        "with TestClient(app) as client:\n"
        "    print(client.get('/boom').headers['x-request-id'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # every line is JSON
    (error,) = [entry for entry in lines if entry["logger"] == "litestar"]
    assert error["level"] == "ERROR" and error["request_id"] == done.stdout.strip()
    assert "RuntimeError" in str(error["exc"]) and "anna@" not in done.stderr
