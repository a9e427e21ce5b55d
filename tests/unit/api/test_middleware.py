"""Request metrics middleware: route templates, status classes, request ids."""

from __future__ import annotations

import re
from typing import Annotated

from litestar import Litestar, MediaType, Response, get
from litestar.params import PathParameter
from litestar.testing import TestClient
from prometheus_client import REGISTRY

from router.api.middleware import RequestMetricsMiddleware


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_requests_are_counted_by_route_template_and_status_class() -> None:
    @get("/items/{item_id:int}", sync_to_thread=False)
    def item(item_id: Annotated[int, PathParameter()]) -> dict[str, int]:
        if item_id == 0:
            raise RuntimeError("boom")
        return {"id": item_id}

    @get("/teapot", sync_to_thread=False)
    def teapot() -> Response[str]:
        return Response("short and stout", status_code=418, media_type=MediaType.TEXT)

    app = Litestar([item, teapot], middleware=[RequestMetricsMiddleware])
    route = "/items/{item_id}"
    before = {s: _sample("router_http_requests_total", route=route, status=s) for s in ("2xx", "4xx", "5xx")}
    seconds_before = _sample("router_http_request_duration_seconds_count", route=route)
    with TestClient(app, raise_server_exceptions=False) as client:
        for i in (1, 2, 3):
            assert client.get(f"/items/{i}").status_code == 200
        assert client.get("/items/0").status_code == 500
        assert client.get("/teapot").status_code == 418
        echoed = client.get("/items/7", headers={"X-Request-ID": "caller-id-42"})
        invented = client.get("/items/8", headers={"X-Request-ID": "<script>"})
        assert client.get("/nowhere").status_code == 404

    assert _sample("router_http_requests_total", route=route, status="2xx") - before["2xx"] == 5
    assert _sample("router_http_requests_total", route=route, status="5xx") - before["5xx"] == 1
    # every status class exists from the first request on, so error ratios have series at 0
    assert REGISTRY.get_sample_value("router_http_requests_total", {"route": route, "status": "4xx"}) is not None
    assert _sample("router_http_requests_total", route="/teapot", status="4xx") >= 1
    assert _sample("router_http_request_duration_seconds_count", route=route) - seconds_before == 6
    # the raw path (with the id in it) is never a label value
    exposed = {s.labels.get("route") for m in REGISTRY.collect() for s in m.samples if s.name.startswith("router_http")}
    assert not any(r and re.search(r"/items/\d", r) for r in exposed)
    assert "/nowhere" not in exposed  # unmatched paths are not routes
    assert echoed.headers["x-request-id"] == "caller-id-42"
    assert re.fullmatch(r"[0-9a-f]{16}", invented.headers["x-request-id"])


def test_wrapping_the_whole_app_counts_unmatched_paths() -> None:
    @get("/ok", sync_to_thread=False)
    def ok() -> str:
        return "ok"

    app = RequestMetricsMiddleware(Litestar([ok]))
    before = _sample("router_http_requests_total", route="unmatched", status="4xx")
    with TestClient(app) as client:  # type: ignore[arg-type]
        assert client.get("/ok").status_code == 200
        assert client.get("/missing").status_code == 404
    assert _sample("router_http_requests_total", route="unmatched", status="4xx") - before == 1
