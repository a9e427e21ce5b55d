"""Operations: portfolio figures, policy and model reloads."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter
from litestar.status_codes import HTTP_200_OK

from router.api.auth import KEY_REQUIRED, ApiKey
from router.api.responses import BODY, KEYED, errors
from router.serving.portfolio import PortfolioService
from router.serving.reloads import ReloadService
from schemas.api import PortfolioReport, ReloadRequest, ReloadResult

__all__ = ["AdminController"]

_ADMIN = frozenset({"admin"})


class AdminController(Controller):
    path = "/v1"
    opt = KEY_REQUIRED
    security = ({"ApiKey": []},)

    @get(
        "/portfolio",
        operation_id="portfolio",
        tags=["portfolio"],
        summary="Portfolio figures for management",
        responses=errors(KEYED, 503),
        opt={"scopes": frozenset({"ops", "admin"})},
        description="Scopes: ops, admin. Tier and churn-risk distribution and trend, MRR/ARR, churn by customers "
        "and by revenue, upsells net of downgrades, NRR, CLV:CAC.",
    )
    async def portfolio(
        self, portfolio: NamedDependency[PortfolioService], days: Annotated[int, Parameter(ge=1, le=730)] = 30
    ) -> PortfolioReport:
        return await portfolio.report(days)

    @post(
        "/admin/policy/reload",
        operation_id="reload_policy",
        status_code=HTTP_200_OK,
        tags=["admin"],
        summary="Load a new policy without restart",
        responses=errors(KEYED, BODY, 422),
        opt={"scopes": _ADMIN},
        description="Scope: admin. An invalid policy gives 422 with the loader's precise message; the old one stays. "
        "Reloads this worker (SIGHUP does the same) and announces the file to the state consumers, which take its "
        "cost-to-serve prices.",
    )
    async def reload_policy(
        self,
        reloads: NamedDependency[ReloadService],
        caller: NamedDependency[ApiKey],
        data: JSONBody[ReloadRequest | None] = None,
    ) -> ReloadResult:
        return await reloads.reload_policy(data.path if data else None, caller.name)

    @post(
        "/admin/model/reload",
        operation_id="reload_model",
        status_code=HTTP_200_OK,
        tags=["admin"],
        summary="Load a new churn model without restart",
        responses=errors(KEYED, BODY, 422),
        opt={"scopes": _ADMIN},
        description="Scope: admin. Loaded and probed before the atomic swap; a failure keeps the old model (422). "
        "Then announced: every other API worker and state consumer loads the same file (checked by SHA-256) within "
        "a few seconds.",
    )
    async def reload_model(
        self,
        reloads: NamedDependency[ReloadService],
        caller: NamedDependency[ApiKey],
        data: JSONBody[ReloadRequest | None] = None,
    ) -> ReloadResult:
        return await reloads.reload_model(data.path if data else None, caller.name)
