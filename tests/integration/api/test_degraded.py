"""Degraded mode: Redis stopped or the model failing never turns into a 5xx, and recovery is automatic."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
from litestar.testing import AsyncTestClient

from router.api.app import create_app
from router.churn.model import ChurnModel
from router.settings import ModelSettings
from tests.conftest import SettingsFactory
from tests.support.api_support import (
    VIP_ID,
    api_settings,
    auth,
    big_spender,
    live_server,
    populate,
    population,
    zendesk_request,
)
from tests.support.helpers import produce, running_consumer
from tests.support.tcp_proxy import TcpProxy


async def test_redis_down_gives_fast_degraded_answers_and_recovers(
    settings: SettingsFactory, redis_server: Any
) -> None:
    s = api_settings(settings)
    await populate(s, population())
    vip = {"customer": {"customer_id": VIP_ID}, "channel": "phone", "category": "technical"}
    async with AsyncTestClient(app=create_app(s)) as client:
        r = await client.post("/v1/classify", json=vip, headers=auth("helpdesk"))
        assert r.json()["tier"] == "VIP" and r.json()["degraded"] is False

        redis_server.stop()
        timings = []
        for _ in range(20):
            t0 = time.perf_counter()
            r = await client.post("/v1/classify", json=vip, headers=auth("helpdesk"))
            timings.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
            d = r.json()
            assert d["degraded"] is True and d["degraded_cause"] == "redis_unavailable"
            assert d["tier"] == "Standard" and d["sla"]["due_at"] and d["escalation"]["queue"]
        # once the breaker is open no request waits for Redis (in-process client: well under 20 ms)
        assert sorted(timings)[len(timings) // 2] < 0.02, timings

        r = await client.get("/v1/screenpop", params={"phone": "+49 30 901820"}, headers=auth("telephony"))
        assert r.status_code == 200 and r.json()["degraded"] is True and r.json()["caller"] == "unknown"
        r = await client.post("/v1/handoff", json={"customer": {"customer_id": VIP_ID}}, headers=auth("chatbot"))
        assert r.status_code == 200 and r.json()["degraded"] is True
        body, headers = zendesk_request({"ticket": {"id": 7, "requester": {"external_id": VIP_ID}}})
        r = await client.post("/v1/webhooks/zendesk", content=body, headers=headers)
        assert r.status_code == 200 and r.json()["degraded"] is True and "router_degraded" in r.json()["tags"]
        assert (await client.get("/health/ready")).status_code == 200  # degraded, not unready
        r = await client.get(f"/v1/customers/{VIP_ID}", headers=auth("ops"))
        assert r.status_code == 503 and r.json()["error"] == "unavailable"

        redis_server.start()
        deadline = time.monotonic() + 10
        while True:
            r = await client.post("/v1/classify", json=vip, headers=auth("helpdesk"))
            assert r.status_code == 200
            if not r.json()["degraded"]:
                break
            assert time.monotonic() < deadline, "did not recover after Redis came back"
            await asyncio.sleep(0.05)
        assert (await client.get("/health/ready")).status_code == 200
        # The test Redis keeps nothing on disk: new state written after the restart is served
        # by the same API process, without a restart.
        fresh = big_spender("BIG2")
        await produce(s, fresh)
        big2 = {"customer": {"customer_id": "BIG2"}}
        async with running_consumer(s):
            deadline = time.monotonic() + 30
            while not (r := await client.post("/v1/classify", json=big2, headers=auth("helpdesk"))).json()[
                "customer_known"
            ]:
                assert time.monotonic() < deadline, "state written after the restart never served"
                await asyncio.sleep(0.1)
        assert r.json()["degraded"] is False


class _FailingModel(ChurnModel):
    """The real model whose inference breaks (fault injection for the model path only)."""

    def predict_one(self, row: Any) -> float:
        raise RuntimeError("onnxruntime exploded")


async def test_model_missing_or_failing_degrades_and_reload_recovers(settings: SettingsFactory) -> None:
    s = api_settings(settings, model={"path": "/nonexistent/churn.onnx"})
    await populate(s, population())
    body = {"customer": {"customer_id": VIP_ID}}
    async with AsyncTestClient(app=create_app(s)) as client:
        d = (await client.post("/v1/classify", json=body, headers=auth("helpdesk"))).json()
        assert d["degraded"] is True and d["degraded_cause"] == "model_unavailable" and d["model_version"] == "none"
        assert d["customer_known"] is True and d["scores"]["churn_risk"] is not None  # the consumer's last score
        assert (await client.get("/health/ready")).status_code == 503

        real = ChurnModel.load(ModelSettings().path)
        r = await client.post("/v1/admin/model/reload", json={"path": str(real.path)}, headers=auth("admin"))
        assert r.status_code == 200, r.text
        d = (await client.post("/v1/classify", json=body, headers=auth("helpdesk"))).json()
        assert d["degraded"] is False and d["model_version"] == real.version

        live = client.app.state.services.live
        live.model = _FailingModel(real._session, real.card, real.path)
        d = (await client.post("/v1/classify", json=body, headers=auth("helpdesk"))).json()
        assert d["degraded"] is True and d["degraded_cause"] == "model_failed" and d["tier"] in {"VIP", "Premium"}


def _kubelet_probe(client: httpx.Client, path: str) -> bool:
    """One HTTP probe as the kubelet runs it: success is a status from 200 to 399 within timeoutSeconds (2)."""
    try:
        return 200 <= client.get(path, timeout=2.0).status_code < 400
    except httpx.HTTPError:
        return False


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_redis_outage_keeps_the_pod_ready_and_serving_degraded_answers(
    settings: SettingsFactory, redis_server: Any, tmp_path: Path
) -> None:
    """Kubernetes removes a pod from its Service after ``failureThreshold`` (2) failed readiness
    probes (``periodSeconds`` 5, ``timeoutSeconds`` 2 in deploy/k8s/api.yaml). Were readiness tied
    to Redis, every pod would leave the Service about 10 s into an outage and clients would get no
    answer at all instead of the promised degraded 200. Redis is black-holed (nothing answers,
    nothing is reset), then refused, each for longer than those 10 s."""
    s = api_settings(settings, auth={"rate_per_s": 1_000_000.0, "burst": 1_000_000})
    asyncio.run(populate(s, population()))
    vip = {"customer": {"customer_id": VIP_ID}, "channel": "phone", "category": "technical"}
    with TcpProxy("127.0.0.1", redis_server.port) as proxy:
        s_api = msgspec.structs.replace(s, redis=msgspec.structs.replace(s.redis, url=f"redis://{proxy.address}/0"))
        with live_server(s_api, tmp_path / "api.log") as client:
            assert client.post("/v1/classify", json=vip, headers=auth("helpdesk")).json()["degraded"] is False
            for fault in ("black hole", "refused"):
                if fault == "black hole":
                    proxy.pause()
                else:
                    proxy.resume()
                    proxy.refuse = True
                    proxy.cut()
                probes: list[bool] = []
                answers: list[dict[str, Any]] = []
                end = time.monotonic() + 11.0
                while time.monotonic() < end:
                    probes.append(_kubelet_probe(client, "/health/ready"))
                    r = client.post("/v1/classify", json=vip, headers=auth("helpdesk"))
                    assert r.status_code == 200, (fault, r.status_code, r.text)
                    answers.append(r.json())
                    time.sleep(0.5)
                assert all(probes), f"{fault}: readiness failed {probes.count(False)} of {len(probes)} probes"
                assert all(a["degraded"] and a["degraded_cause"] == "redis_unavailable" for a in answers[2:]), fault
                detail = client.get("/health/detail").json()
                assert detail["ready"] is True and detail["status"] == "degraded", detail
                assert detail["checks"]["redis"].startswith("unavailable"), detail
                assert _metric(client.get("/metrics").text, "router_redis_up") == 0, fault
            proxy.refuse = False
            deadline = time.monotonic() + 10
            while client.post("/v1/classify", json=vip, headers=auth("helpdesk")).json()["degraded"]:
                assert time.monotonic() < deadline, "decisions did not recover after Redis came back"
                time.sleep(0.1)
            assert client.get("/health/detail").json()["status"] == "ok"
            deadline = time.monotonic() + 5
            while _metric(client.get("/metrics").text, "router_redis_up") != 1:  # the next background ping
                assert time.monotonic() < deadline, "router_redis_up stayed 0 after Redis came back"
                time.sleep(0.2)
