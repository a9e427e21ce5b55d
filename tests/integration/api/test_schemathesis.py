"""Property-based API testing with schemathesis against the served OpenAPI schema.

A real ``router serve`` (uvicorn) process is started once for this module; schemathesis
loads ``/schema/openapi.json`` from it and, for every operation, sends a bounded number of
generated requests (valid and invalid, ``max_examples`` each) with an API key that has
every scope. Signed webhooks get a correct signature over the exact bytes sent, so they
are exercised past the signature check. All of schemathesis's checks run: no 5xx, every
status code, content type, header and body documented and matching the schema, invalid
data rejected, valid data accepted, authentication not ignored.

The served document is the real contract (any phone notation, any e-mail address, any time in
the accepted window). Where a rule cannot be a schema, the *generated data* is narrowed here,
never the document: the string formats ``phone``, ``email`` and ``date-time`` get strategies of
values the service must accept (numbers of many countries in several notations, realistic
addresses, times between 2000 and now), and a positive reload names the configured file.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import msgspec
import phonenumbers
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from router.api.app import create_app
from router.api.openapi import PHONE_FORMAT
from router.serving.signatures import parse_standard_secret, sign_intercom, sign_standard, sign_stripe
from router.serving.webhooks import sign_zendesk
from router.settings import AuthSettings, Settings
from tests.support.api_support import (
    INTERCOM_SECRET,
    KEY_SPEC,
    STANDARD_SECRET,
    STRIPE_SECRET,
    ZENDESK_SECRET,
    live_server,
    module_settings,
    populate,
    population,
)

MAX_EXAMPLES = 30
FUZZ_KEY = "fuzz-every-scope-0123456789"


@pytest.fixture(scope="module")
def fuzz_server(broker: str, redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """One API process for the whole module (its own topics, prefix and port), populated."""
    s = module_settings(
        broker,
        redis_server.url,
        "fuzz",
        # a generous Redis budget: this test is about the contract, not about a loaded CI machine
        redis={"timeout_ms": 1000},
        api={"log_level": "warning"},
        auth={"keys": f"{KEY_SPEC},fuzz:helpdesk+telephony+chatbot+events+ops+admin:{FUZZ_KEY}",
              "rate_per_s": 1_000_000.0, "burst": 1_000_000},
    )  # fmt: skip
    asyncio.run(populate(s, population(5)))
    log = tmp_path_factory.mktemp("schemathesis") / "api.log"
    with live_server(s, log):
        yield s


def _phone_numbers() -> list[str]:
    """Real numbers (libphonenumber's examples) of several countries, in the notations callers use."""
    numbers = []
    for region in ("DE", "AT", "CH", "FR", "GB", "NL", "US", "BR", "IN", "JP", "AU"):
        for kind in (phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE):
            number = phonenumbers.example_number_for_type(region, kind)
            e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
            numbers += [
                e164,
                "00" + e164[1:],
                phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL),
            ]
            if region == "DE":  # the default region: national notation works too
                numbers.append(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL))
    return [n for n in numbers if len(n) <= 32]


_LABEL = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,14}[A-Za-z0-9])?", fullmatch=True)
_EMAILS = st.builds(
    lambda local, labels, tld: f"{local}@{'.'.join(labels)}.{tld}",
    st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9._%+-]{0,20}[A-Za-z0-9])?", fullmatch=True),
    st.lists(_LABEL, min_size=1, max_size=3),
    st.from_regex(r"[A-Za-z]{2,10}", fullmatch=True),
)
_OFFSETS = st.integers(-12 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
_TIMES = st.builds(
    lambda when, tz: when.astimezone(tz).isoformat(),
    # the service accepts 2000-01-01 .. now + 1 day; a day of margin at both ends for clocks and offsets
    st.datetimes(min_value=datetime(2000, 1, 3), max_value=datetime.now() - timedelta(days=1), timezones=st.just(UTC)),
    _OFFSETS,
)


@pytest.fixture(scope="module")
def generated_formats() -> Iterator[None]:
    """Strategies for the string formats whose rules the schema can only describe (this module only)."""
    formats = {PHONE_FORMAT: st.sampled_from(_phone_numbers()), "email": _EMAILS, "date-time": _TIMES}
    for name, strategy in formats.items():
        schemathesis.openapi.format(name, strategy)
    yield
    from schemathesis.specs.openapi.formats import unregister_string_format

    for name in formats:
        unregister_string_format(name)


@pytest.fixture(scope="module")
def api_schema(fuzz_server: Settings, generated_formats: None) -> Any:
    base = f"http://{fuzz_server.api.host}:{fuzz_server.api.port}"
    return schemathesis.openapi.from_url(f"{base}/schema/openapi.json")


def _operations() -> list[tuple[str, str]]:
    """(method, path) of every documented operation, from the app itself (no connection needed).

    The pytest plugin of schemathesis (lazy schemas from fixtures) does not run on pytest 9,
    so the operations are listed at collection time and each test drives hypothesis itself
    with the strategy schemathesis builds from the *served* schema.
    """
    app = create_app(Settings(auth=AuthSettings(dev_mode=True)))
    spec = app.openapi_schema.to_schema()
    methods = ("get", "put", "post", "delete", "patch")
    return [(m.upper(), path) for path, item in spec["paths"].items() for m in methods if m in item]


def _signed(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """Sign ``body`` as the endpoint's sender would; returns the bytes to send."""
    ts = str(int(time.time()))
    if path.endswith("/zendesk"):
        headers["X-Zendesk-Webhook-Signature"] = sign_zendesk(ZENDESK_SECRET, ts, body)
        headers["X-Zendesk-Webhook-Signature-Timestamp"] = ts
    elif path.endswith("/generic"):
        msg_id = f"msg_{uuid.uuid4().hex}"
        headers["webhook-id"] = msg_id
        headers["webhook-timestamp"] = ts
        headers["webhook-signature"] = sign_standard(parse_standard_secret(STANDARD_SECRET), msg_id, int(ts), body)
    elif path.endswith("/intercom"):
        body = _fresh_notification(body)
        headers["X-Hub-Signature"] = sign_intercom(INTERCOM_SECRET, body)
    elif path.endswith("/stripe"):
        headers["Stripe-Signature"] = sign_stripe(STRIPE_SECRET, int(ts), body)
    return body


def _fresh_notification(body: bytes) -> bytes:
    """Intercom sends a notification when it happens: a generated one gets a current ``created_at`` and id."""
    try:
        payload = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body
    if isinstance(payload, dict) and isinstance(payload.get("created_at"), int):
        payload["created_at"] = int(time.time())
        payload["id"] = f"notif_{uuid.uuid4()}"
        return msgspec.json.encode(payload)
    return body


def _call_and_validate(case: Any, base: str) -> None:
    kwargs = case.as_transport_kwargs(base_url=base)
    kwargs["headers"] = dict(kwargs.get("headers") or {})
    # A positive case carries a random string as the security header: the real key replaces it.
    # A negative case whose headers were made invalid on purpose (key missing or malformed) keeps them.
    meta = getattr(case, "meta", None)
    broken_headers = meta is not None and any(
        str(getattr(loc, "value", loc)) == "header" and info.mode == GenerationMode.NEGATIVE
        for loc, info in meta.components.items()
    )
    if not broken_headers:
        # the key goes where the case put its credential: X-API-Key, or the Bearer or Basic alternative
        scheme = next((str(v).split(" ", 1)[0].lower() for k, v in kwargs["headers"].items() if k.lower() == "authorization"), None)  # fmt: skip
        kwargs["headers"] = {
            k: v for k, v in kwargs["headers"].items() if k.lower() not in ("x-api-key", "authorization")
        }
        if scheme == "basic":
            kwargs["headers"]["Authorization"] = "Basic " + base64.b64encode(f"fuzz:{FUZZ_KEY}".encode()).decode()
        elif scheme is not None:
            kwargs["headers"]["Authorization"] = f"Bearer {FUZZ_KEY}"
        else:
            kwargs["headers"]["X-API-Key"] = FUZZ_KEY
    if "/v1/webhooks/" in case.path:
        # the exact bytes schemathesis would send, signed as the helpdesk would sign them
        if "json" in kwargs:
            body = msgspec.json.encode(kwargs.pop("json"))
            kwargs["headers"].setdefault("Content-Type", "application/json")
        else:
            raw = kwargs.pop("data", b"") or b""
            body = raw if isinstance(raw, bytes) else str(raw).encode()
        kwargs["data"] = _signed(case.path, body, kwargs["headers"])
    response = requests.request(**kwargs, timeout=5)
    case.validate_response(response, headers=kwargs["headers"], transport_kwargs=kwargs)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("method", "path"), _operations())
def test_every_operation_conforms_to_its_schema(
    api_schema: Any, fuzz_server: Settings, method: str, path: str, mode: GenerationMode
) -> None:
    base = f"http://{fuzz_server.api.host}:{fuzz_server.api.port}"
    operation = api_schema[path][method]
    strategy = operation.as_strategy(generation_mode=mode)
    if mode == GenerationMode.POSITIVE and path.startswith("/v1/admin/") and path.endswith("/reload"):
        # Any path is valid input, but only a loadable file can be accepted (422 otherwise, documented).
        configured = fuzz_server.policy.path if "/policy/" in path else fuzz_server.model.path
        strategy = strategy.map(lambda case: _with_body(case, {"path": configured}))

    @hypothesis_settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,  # the HTTP timeout bounds each example
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        _call_and_validate(case, base)

    try:
        run()
    except Unsatisfiable:
        # an operation without parameters or body has nothing that can be made invalid
        assert mode == GenerationMode.NEGATIVE, "no valid request could be generated"


def _with_body(case: Any, body: dict[str, Any]) -> Any:
    if isinstance(case.body, dict) and case.body.get("path") is not None:
        case.body = {**case.body, **body}
    return case


def test_the_schema_is_served_and_names_the_key(fuzz_server: Settings) -> None:
    r = httpx.get(f"http://{fuzz_server.api.host}:{fuzz_server.api.port}/schema/openapi.json", timeout=5)
    assert r.status_code == 200
    spec = r.json()
    assert spec["components"]["securitySchemes"]["ApiKey"]["name"] == "X-API-Key"
    assert spec["components"]["securitySchemes"]["Bearer"]["scheme"] == "bearer"
    assert spec["components"]["securitySchemes"]["Basic"]["scheme"] == "basic"
    assert "/v1/classify" in spec["paths"]
