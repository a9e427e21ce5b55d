"""POST /v1/classify answers the same on its direct path (router.api.fast) as through Litestar.

Two apps on the same Redis, one with ``ROUTER_API_FAST_CLASSIFY`` on and one with it off, get the
same requests: valid ones, an unknown customer, every kind of bad input, bad keys, a too large
body, the rate limit. Status, body (without the decision's id) and the headers a caller reads
must be the same, and the valid ones must really have taken the direct path.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from router.api.app import create_app
from router.api.fast import FastClassify
from router.settings import Settings
from tests.conftest import SettingsFactory
from tests.support.api_support import KEYS, NOW, VIP_ID, api_settings, auth, populate, population

Client = AsyncTestClient  # type: ignore[type-arg]
RECEIVED = NOW.isoformat()
JSON = {"Content-Type": "application/json"}


def _counting(app: Litestar) -> list[int]:
    """Counts the requests the direct path answered itself."""
    fast = app.asgi_handler
    assert isinstance(fast, FastClassify)
    calls: list[int] = []
    inner = fast.respond

    async def respond(scope: Any, receive: Any, send: Any) -> None:
        calls.append(1)
        await inner(scope, receive, send)

    fast.respond = respond
    return calls


@pytest.fixture
async def pair(settings: SettingsFactory) -> AsyncIterator[tuple[Client, Client, list[int]]]:
    s = api_settings(settings, api={"max_body_bytes": 2048})
    await populate(s, population())
    fast = create_app(s)
    slow = create_app(msgspec.structs.replace(s, api=msgspec.structs.replace(s.api, fast_classify=False)))
    assert not isinstance(slow.asgi_handler, FastClassify)
    calls = _counting(fast)
    async with AsyncTestClient(app=fast) as on, AsyncTestClient(app=slow) as off:
        yield on, off, calls


def _valid(customer: dict[str, str], **extra: Any) -> bytes:
    body = {
        "customer": customer,
        "channel": "phone",
        "category": "billing",
        "priority": "high",
        "received_at": RECEIVED,
    }
    return msgspec.json.encode({**body, **extra})


def _basic(secret: str) -> str:
    return "Basic " + base64.b64encode(f"anyone:{secret}".encode()).decode()


VALID = _valid({"customer_id": VIP_ID})
# (name, body, headers, answered on the direct path)
CASES: list[tuple[str, bytes, dict[str, str], bool]] = [
    ("known customer", VALID, {**auth("helpdesk"), **JSON}, True),
    ("known, every field", _valid({"customer_id": VIP_ID}, text_sentiment=-0.5), {**auth("chatbot"), **JSON}, True),
    ("known, by phone", _valid({"phone": "+49 30 901820"}), {**auth("telephony"), **JSON}, True),
    ("unknown customer", _valid({"customer_id": "nobody"}), {**auth("helpdesk"), **JSON}, True),
    ("no content type", VALID, auth("helpdesk"), True),
    ("json with charset", VALID, {**auth("helpdesk"), "Content-Type": "application/json; charset=utf-8"}, True),
    ("caller's request id", VALID, {**auth("helpdesk"), **JSON, "X-Request-ID": "req-42.a:b"}, True),
    ("unsafe request id", VALID, {**auth("helpdesk"), **JSON, "X-Request-ID": "bad id\x01"}, True),
    ("bearer key", VALID, {"Authorization": f"Bearer {KEYS['helpdesk']}", **JSON}, False),
    ("basic key", VALID, {"Authorization": _basic(KEYS["helpdesk"]), **JSON}, False),
    (
        "lax number as string",
        _valid({"customer_id": VIP_ID}, text_sentiment="0.5"),
        {**auth("helpdesk"), **JSON},
        False,
    ),
    ("bad phone", _valid({"phone": "not a number"}), {**auth("helpdesk"), **JSON}, True),
    ("bad json", b'{"customer": {"customer_id": "C1"', {**auth("helpdesk"), **JSON}, False),
    ("not utf-8", b'{"customer": {"customer_id": "\xff\xfe"}}', {**auth("helpdesk"), **JSON}, False),
    ("nested deeply", b"[" * 5000 + b"]" * 5000, {**auth("helpdesk"), **JSON}, False),
    ("empty body", b"", {**auth("helpdesk"), **JSON}, False),
    ("missing field", b'{"channel": "phone"}', {**auth("helpdesk"), **JSON}, False),
    ("wrong type", b'{"customer": {"customer_id": 5}}', {**auth("helpdesk"), **JSON}, False),
    ("unknown enum", _valid({"customer_id": VIP_ID}, channel="pigeon"), {**auth("helpdesk"), **JSON}, False),
    ("unknown field", _valid({"customer_id": VIP_ID}, colour="red"), {**auth("helpdesk"), **JSON}, False),
    ("no reference", b'{"customer": {}}', {**auth("helpdesk"), **JSON}, False),
    (
        "implausible time",
        _valid({"customer_id": VIP_ID}, received_at="1970-01-01T00:00:00Z"),
        {**auth("helpdesk"), **JSON},
        False,
    ),
    (
        "naive time",
        _valid({"customer_id": VIP_ID}, received_at="2026-01-01T00:00:00"),
        {**auth("helpdesk"), **JSON},
        False,
    ),
    ("wrong content type", VALID, {**auth("helpdesk"), "Content-Type": "text/plain"}, False),
    ("form content type", b"a=b", {**auth("helpdesk"), "Content-Type": "application/x-www-form-urlencoded"}, False),
    ("too large", _valid({"customer_id": VIP_ID + "x" * 4000}), {**auth("helpdesk"), **JSON}, False),
    ("no key", VALID, JSON, False),
    ("unknown key", VALID, {"X-API-Key": "not-a-key-0123456789", **JSON}, False),
    ("wrong scope", VALID, {**auth("events"), **JSON}, False),
    ("wrong scope, bad body", b"{", {**auth("ops"), **JSON}, False),
]


def _comparable(response: Any) -> tuple[int, Any, dict[str, str | None]]:
    """Status, body without the decision's id, and the headers a caller reads."""
    body = response.json() if response.content else None
    if isinstance(body, dict) and "decision_id" in body:
        assert body.pop("decision_id").startswith("d-")
    headers = {name: response.headers.get(name) for name in ("content-type", "retry-after")}
    if response.status_code != 200:
        headers["content-length"] = response.headers.get("content-length")
    return response.status_code, body, headers


async def test_each_request_is_answered_alike_on_both_paths(pair: tuple[Client, Client, list[int]]) -> None:
    fast, slow, calls = pair
    for name, body, headers, direct in CASES:
        calls.clear()
        a = await fast.post("/v1/classify", content=body, headers=headers)
        b = await slow.post("/v1/classify", content=body, headers=headers)
        assert _comparable(a) == _comparable(b), name
        assert len(calls) == int(direct), f"{name}: answered on the {'direct' if calls else 'Litestar'} path"
        sent_id = headers.get("X-Request-ID")
        for response in (a, b):
            request_id = response.headers.get("x-request-id")
            assert request_id, name
            if sent_id is not None and sent_id.isprintable():
                assert request_id == sent_id, name
            elif sent_id is not None:
                assert request_id != sent_id, name


async def _raw(
    app: Litestar, headers: list[tuple[bytes, bytes]], chunks: list[bytes]
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request straight into the ASGI app (the body in several messages), its answer."""
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1} for i, chunk in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/classify", "raw_path": b"/v1/classify", "root_path": "", "query_string": b"",
        "headers": [(b"host", b"testserver"), *headers], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    await app(scope, receive, send)  # type: ignore[arg-type]
    return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


async def test_a_body_in_several_messages_is_answered_alike(settings: SettingsFactory) -> None:
    s = api_settings(settings)
    await populate(s, population())
    fast = create_app(s)
    slow = create_app(msgspec.structs.replace(s, api=msgspec.structs.replace(s.api, fast_classify=False)))
    calls = _counting(fast)
    key = [(b"x-api-key", KEYS["helpdesk"].encode()), (b"content-type", b"application/json")]
    length = [(b"content-length", str(len(VALID)).encode())]
    chunked = [(b"transfer-encoding", b"chunked")]
    async with AsyncTestClient(app=fast) as on, AsyncTestClient(app=slow) as off:
        for headers, direct in ((key + length, True), (key + chunked, False)):
            calls.clear()
            answers = []
            for app, client in ((fast, on), (slow, off)):
                # on the app's own event loop (its Redis clients belong to it)
                chunks = [VALID[:7], VALID[7:20], VALID[20:]]
                status, head, body = await asyncio.to_thread(client.blocking_portal.call, _raw, app, headers, chunks)
                decision = msgspec.json.decode(body)
                decision.pop("decision_id")
                answers.append((status, head[b"content-type"], decision))
            assert answers[0] == answers[1] and answers[0][0] == 200
            assert len(calls) == int(direct)


async def test_the_rate_limit_holds_alike_with_retry_after(settings: SettingsFactory) -> None:
    s = api_settings(settings, auth={"rate_per_s": 0.01, "burst": 3})
    await populate(s, population())
    seen: list[list[tuple[int, Any, dict[str, str | None]]]] = []
    for fast_classify in (True, False):
        app = create_app(msgspec.structs.replace(s, api=msgspec.structs.replace(s.api, fast_classify=fast_classify)))
        async with AsyncTestClient(app=app) as client:
            sends: list[Callable[[], Any]] = [
                lambda: client.post("/v1/classify", content=VALID, headers={**auth("helpdesk"), **JSON}),
                lambda: client.post("/v1/classify", content=b"{", headers={**auth("helpdesk"), **JSON}),
            ]
            answers = [_comparable(await sends[i % 2 if i < 2 else 0]()) for i in range(5)]
            seen.append(answers)
    assert seen[0] == seen[1]
    statuses = [status for status, _, _ in seen[0]]
    assert statuses == [200, 400, 200, 429, 429], statuses
    assert seen[0][3][2]["retry-after"] is not None


async def test_metrics_count_direct_answers_under_the_route(pair: tuple[Client, Client, list[int]]) -> None:
    fast, _, calls = pair
    await fast.post("/v1/classify", content=VALID, headers={**auth("helpdesk"), **JSON})
    assert calls
    text = (await fast.get("/metrics")).text
    line = next(
        line
        for line in text.splitlines()
        if line.startswith("router_http_requests_total{") and 'route="/v1/classify"' in line and '"2xx"' in line
    )
    assert float(line.rsplit(" ", 1)[1]) >= 1


def test_the_settings_switch_it_off(settings: SettingsFactory) -> None:
    s: Settings = api_settings(settings, api={"fast_classify": False})
    assert not isinstance(create_app(s).asgi_handler, FastClassify)
    assert isinstance(create_app(api_settings(settings)).asgi_handler, FastClassify)
