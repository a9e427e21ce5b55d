"""The whole path on real processes: events -> Kafka -> consumer -> Redis -> HTTP classify."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.api.auth import DEV_KEY
from router.settings import Settings, to_env
from schemas.events import CustomerEvent, CustomerProfile, OrderPlaced, SubscriptionChanged, Usage
from tests.conftest import SettingsFactory
from tests.support.helpers import produce

NOW = datetime.now(UTC).replace(microsecond=0)


def _spawn(settings: Settings, *args: str, log: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, **to_env(settings), "ROUTER_STREAM_HEALTH_PORT": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "router", *args],
        env=env,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.fixture
def stack(settings: SettingsFactory, tmp_path: os.PathLike[str]) -> Iterator[tuple[Settings, httpx.Client]]:
    # `router dev` and tests run in dev mode: no keys configured, the dev key has every scope.
    s = settings(auth={"dev_mode": True})
    procs = [
        _spawn(s, "consume", log=f"{tmp_path}/consumer.log"),
        _spawn(s, "serve", log=f"{tmp_path}/api.log"),
    ]
    client = httpx.Client(base_url=f"http://{s.api.host}:{s.api.port}", timeout=5, headers={"X-API-Key": DEV_KEY})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if client.get("/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert all(p.poll() is None for p in procs), Path(tmp_path, "api.log").read_text()[-3000:]
            time.sleep(0.2)
        else:
            raise AssertionError("API not ready: " + Path(tmp_path, "api.log").read_text()[-3000:])
        yield s, client
    finally:
        client.close()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _big_spender(cid: str) -> list[CustomerEvent]:
    start = NOW - timedelta(days=400)
    events: list[CustomerEvent] = [
        CustomerProfile(event_id=f"{cid}-p", customer_id=cid, occurred_at=start, segment="enterprise", plan="enterprise",
                        phones=["+49 30 901820"], acquisition_cost=2000.0, company_size=5000),
        SubscriptionChanged(event_id=f"{cid}-s", customer_id=cid, occurred_at=start, change="new", plan="enterprise",
                            mrr_delta=9000.0),
    ]  # fmt: skip
    for i in range(40):
        t = start + timedelta(days=10 * i)
        events.append(
            OrderPlaced(event_id=f"{cid}-o{i}", customer_id=cid, occurred_at=t, order_id=f"o{i}", amount=25_000.0)
        )
    for d in range(60, 0, -1):
        events.append(Usage(event_id=f"{cid}-u{d}", customer_id=cid, occurred_at=NOW - timedelta(days=d), logins=40,
                            features_used=30))  # fmt: skip
    return events


def _small(cid: str, i: int) -> list[CustomerEvent]:
    t = NOW - timedelta(days=100 + i % 50)
    return [
        CustomerProfile(event_id=f"{cid}-p", customer_id=cid, occurred_at=t, segment="consumer", plan="basic"),
        SubscriptionChanged(event_id=f"{cid}-s", customer_id=cid, occurred_at=t, change="new", plan="basic",
                            mrr_delta=float(5 + i % 20)),
        OrderPlaced(event_id=f"{cid}-o", customer_id=cid, occurred_at=t + timedelta(days=3), order_id="o",
                    amount=float(10 + i)),
    ]  # fmt: skip


def _poll(
    client: httpx.Client, body: dict[str, Any], until: Callable[[dict[str, Any]], bool], timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = client.post("/v1/classify", json=body)
        assert r.status_code == 200, r.text
        last = r.json()
        if until(last):
            return last
        time.sleep(0.3)
    raise AssertionError(f"condition never held; last decision {last}")


def test_events_drive_the_decision(stack: tuple[Settings, httpx.Client]) -> None:
    s, client = stack
    import asyncio

    population: list[CustomerEvent] = []
    for i in range(60):
        population += _small(f"S{i:03d}", i)
    population += _big_spender("BIG1")
    asyncio.run(produce(s, population))

    # an unknown customer gets a sensible default, not an error
    unknown = client.post("/v1/classify", json={"customer": {"customer_id": "nobody"}, "channel": "chat"})
    assert unknown.status_code == 200
    assert unknown.json()["customer_known"] is False and unknown.json()["tier"] in {"Standard", "Basic"}

    # the big spender becomes VIP once the consumer applied its events and the population is known
    body = {"customer": {"customer_id": "BIG1"}, "channel": "phone", "category": "technical", "priority": "high"}
    vip = _poll(client, body, lambda d: d["tier"] == "VIP")
    assert vip["customer_known"] is True
    assert vip["escalation"]["role"].startswith("senior")
    assert vip["scores"]["clv_score"] >= 90
    assert vip["reasons"] and len(vip["reasons"]) <= 3
    assert vip["model_version"] != "none" and vip["policy_version"]
    due = datetime.fromisoformat(vip["sla"]["due_at"])
    assert due > datetime.now(UTC) - timedelta(minutes=1)

    # the same customer by phone number in another notation (screen-pop style lookup)
    by_phone = client.post("/v1/classify", json={"customer": {"phone": "030 901820"}, "channel": "phone"})
    assert by_phone.status_code == 200 and by_phone.json()["tier"] == "VIP"

    # cancelling turns into a retention action
    asyncio.run(
        produce(
            s,
            [SubscriptionChanged(event_id="BIG1-cancel", customer_id="BIG1", occurred_at=NOW, change="cancel",
                                 mrr_delta=-9000.0)],
        )
    )  # fmt: skip
    body = {"customer": {"customer_id": "BIG1"}, "channel": "phone", "category": "cancellation"}
    after = _poll(client, body, lambda d: any(a["code"].startswith("retention") for a in d["next_best_actions"]))
    assert after["customer_known"] is True


def test_bad_requests_get_clear_400s(stack: tuple[Settings, httpx.Client]) -> None:
    _, client = stack
    r = client.post("/v1/classify", json={"customer": {"customer_id": 5}})
    assert r.status_code == 400 and "customer.customer_id" in r.json()["detail"]
    r = client.post("/v1/classify", json={"customer": {}})
    assert r.status_code == 400 and "exactly one" in r.json()["detail"]
    r = client.post("/v1/classify", json={"customer": {"customer_id": "x"}, "channel": "pigeon"})
    assert r.status_code == 400 and "channel" in r.json()["detail"]
    r = client.post("/v1/classify", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    for bad_phone in ("+1 555", "call me"):
        r = client.post("/v1/classify", json={"customer": {"phone": bad_phone}})
        assert r.status_code == 400 and "customer.phone" in r.json()["detail"], r.text
        assert bad_phone not in r.text
    r = client.post("/v1/classify", content=b"x" * 200_000, headers={"content-type": "application/json"})
    assert r.status_code == 413
