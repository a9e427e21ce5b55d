"""Operations routes: health and metrics. Unauthenticated on purpose (kubelet, Prometheus, blackbox
probes); they name versions and dependency states, never data."""

from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE
from prometheus_client import CONTENT_TYPE_LATEST

from router.api.lifespans import Readiness
from router.ops.metrics import metrics_payload

__all__ = ["detail", "live", "metrics_endpoint", "ready"]


@get("/health/live", operation_id="live", tags=["operations"], summary="Liveness", sync_to_thread=False)
def live() -> dict[str, str]:
    """Cheap: the event loop answers."""
    return {"status": "alive"}


@get(
    "/health/ready",
    operation_id="ready",
    tags=["operations"],
    summary="Readiness",
    responses={
        503: ResponseSpec(
            data_container=dict[str, object], description="Not ready: the failing checks", generate_examples=False
        )
    },
)
async def ready(state: State) -> Response[dict[str, object]]:
    """503 until the model and policy are loaded. A Redis outage does not make the process
    unready: decisions degrade instead (see ``/health/detail`` and ``router_redis_up``)."""
    ok, checks = Readiness.check(state.services)
    return Response({"ready": ok, "checks": checks}, status_code=HTTP_200_OK if ok else HTTP_503_SERVICE_UNAVAILABLE)


@get(
    "/health/detail",
    operation_id="health_detail",
    tags=["operations"],
    summary="Readiness and dependencies (a report, not a probe)",
)
async def detail(state: State) -> dict[str, object]:
    """Always 200: ``status`` is ``ok``, ``degraded`` (Redis unavailable or the circuit breaker
    open: decisions are rule-based) or ``not_ready``; ``checks`` says what each part answered."""
    return await Readiness.detail(state.services)


@get("/metrics", tags=["operations"], summary="Prometheus metrics", include_in_schema=False, sync_to_thread=False)
def metrics_endpoint() -> Response[bytes]:
    return Response(metrics_payload(), media_type=CONTENT_TYPE_LATEST)
