"""Benchmark-only endpoint: the floor of a Python service on this stack.

``POST /bench/snapshot`` takes the very body ``/v1/classify`` takes, hashes the customer id,
reads the snapshot with one Redis command on the decision's client and connection pool, within
the same time budget, and returns the stored bytes as they are: HTTP parsing, body decoding,
one bounded round trip, a response, and nothing else. ``loadtests.bench_serve`` measures classify as a ratio to it, in the same run.

Registered only when ``ApiSettings.bench_endpoints`` is true (``ROUTER_API_BENCH_ENDPOINTS``):
it needs no key and must never be reachable in production.
"""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Response, post
from litestar.datastructures import State
from litestar.params import JSONBody
from litestar.status_codes import HTTP_200_OK

from router.api.lifespans import Services
from router.errors import BadInput
from schemas.api import ClassifyRequest

__all__ = ["FLOOR_PATH", "bench_route_handlers", "snapshot_floor"]

FLOOR_PATH = "/bench/snapshot"


@post(FLOOR_PATH, status_code=HTTP_200_OK, include_in_schema=False)
async def snapshot_floor(data: JSONBody[ClassifyRequest], state: State) -> Response[bytes]:
    """The customer's stored snapshot (msgpack, empty for an unknown customer): no decision."""
    services: Services = state.services
    store, settings = services.stores.reader, services.settings
    customer_id = data.customer.customer_id
    if customer_id is None:
        raise BadInput("customer.customer_id: the floor endpoint reads by customer id only")
    async with asyncio.timeout(settings.redis.timeout_ms / 1000):
        raw: Any = await store.client.hget(store.keys.customer(store.hasher.customer_key(customer_id)), "s")
    return Response(raw or b"", media_type="application/msgpack")


def bench_route_handlers() -> list[Any]:
    """Handlers that ``create_app`` registers when ``settings.api.bench_endpoints`` is true."""
    return [snapshot_floor]
