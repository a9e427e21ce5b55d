"""The request path's circuit breaker against a black-holed Redis.

A refused connection fails in microseconds, so a test with Redis simply stopped passes with or
without a breaker. A black hole is what the breaker is for: every call waits out its budget
(``redis.timeout_ms``). While the breaker is open, requests must not even try Redis; after the
reset interval one probe goes through, and once Redis answers again decisions use it again.
Attempts are counted by ``router_redis_duration_seconds_count{op="read_customer"}`` (every Redis
read of a decision, whatever its outcome) and, as a cross-check, by the connections the proxy
sees (a call that timed out leaves its connection unusable, so the next attempt opens another).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY

from router.api.app import create_app
from tests.conftest import SettingsFactory
from tests.support.api_support import VIP_ID, api_settings, auth, populate, population
from tests.support.tcp_proxy import TcpProxy

RESET_S = 0.5
THRESHOLD = 3  # consecutive faults that open the breaker (router.serving.breaker.Breaker)


def _attempts() -> float:
    return REGISTRY.get_sample_value("router_redis_duration_seconds_count", {"op": "read_customer"}) or 0.0


async def test_an_open_breaker_stops_redis_attempts_and_closes_after_the_reset_interval(
    settings: SettingsFactory, redis_server: Any
) -> None:
    s = api_settings(
        settings,
        redis={"breaker_reset_ms": int(RESET_S * 1000), "timeout_ms": 50},
        auth={"rate_per_s": 1_000_000.0, "burst": 1_000_000},
    )
    await populate(s, population())
    vip = {"customer": {"customer_id": VIP_ID}, "channel": "phone"}
    with TcpProxy("127.0.0.1", redis_server.port) as proxy:
        s_api = msgspec.structs.replace(s, redis=msgspec.structs.replace(s.redis, url=f"redis://{proxy.address}/0"))
        async with AsyncTestClient(app=create_app(s_api)) as client:

            async def classify() -> dict[str, Any]:
                r = await client.post("/v1/classify", json=vip, headers=auth("helpdesk"))
                assert r.status_code == 200, r.text
                answer: dict[str, Any] = r.json()
                return answer

            assert (await classify())["degraded"] is False
            proxy.pause()  # black hole: nothing answers, nothing is reset
            attempts0, accepted0, t0 = _attempts(), proxy.accepted, time.monotonic()
            answers = []
            while time.monotonic() - t0 < 3.0:
                answers.append(await classify())
                await asyncio.sleep(0.005)
            window = time.monotonic() - t0
            attempts, connections = _attempts() - attempts0, proxy.accepted - accepted0
            assert all(a["degraded"] and a["degraded_cause"] == "redis_unavailable" for a in answers)
            # the faults that open it, then one probe per reset interval; nothing else reaches Redis
            allowed = THRESHOLD + window / RESET_S + 2
            print(
                f"\n[breaker] black hole {window:.1f} s: {len(answers)} requests, {attempts:.0f} Redis attempts "
                f"(allowed {allowed:.0f}), {connections} new connections through the proxy"
            )
            assert attempts <= allowed, f"{attempts:.0f} Redis attempts for {len(answers)} requests while open"
            assert len(answers) >= 4 * allowed, f"only {len(answers)} requests: the test did not load the breaker"
            assert connections <= allowed + 6  # + the background reads (health ping, CLV histogram)

            proxy.resume()
            t1 = time.monotonic()
            while (await classify())["degraded"]:
                assert time.monotonic() - t1 < RESET_S + 2.0, "the breaker did not close after Redis came back"
                await asyncio.sleep(0.01)
            recovered_s = time.monotonic() - t1
            attempts1 = _attempts()
            for _ in range(20):
                assert (await classify())["degraded"] is False
            assert _attempts() - attempts1 == 20, "closed again, every decision reads Redis"
            print(f"[breaker] closed {recovered_s:.2f} s after Redis came back (reset interval {RESET_S} s)")
