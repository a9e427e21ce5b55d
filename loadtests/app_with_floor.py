"""uvicorn factory for benchmarks: the real app plus the floor endpoint (``router.api.controllers.bench``).

Once ``create_app`` registers the bench endpoints itself (``ROUTER_API_BENCH_ENDPOINTS=true``)
this only checks they are there; until then it registers them on the built app.
"""

from __future__ import annotations

from litestar import Litestar

from router.api.app import create_app
from router.api.controllers.bench import FLOOR_PATH, bench_route_handlers
from router.settings import Settings


def app() -> Litestar:
    """Run with ``uvicorn loadtests.app_with_floor:app --factory``."""
    application = create_app(Settings.from_env())
    if not any(route.path == FLOOR_PATH for route in application.routes):
        for handler in bench_route_handlers():
            application.register(handler)
    return application
