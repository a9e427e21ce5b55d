"""Degraded mode: Redis stopped or the model failing never turns into a 5xx, and recovery is automatic."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from litestar.testing import AsyncTestClient

from router.api.app import create_app
from router.churn.model import ChurnModel
from router.settings import ModelSettings
from tests.conftest import SettingsFactory
from tests.support.api_support import VIP_ID, api_settings, auth, big_spender, populate, population, zendesk_request
from tests.support.helpers import produce, running_consumer


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
        assert (await client.get("/health/ready")).status_code == 503
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
