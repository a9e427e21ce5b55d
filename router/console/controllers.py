"""The console's routes: thin handlers that read a form, call a service and render a page.

Everything the routes share is done once, in :func:`_guard` (the console router's
``before_request``): the session (else a redirect to sign-in), the scopes a route names in
``opt["console"]``, and on every POST the CSRF token. Identifiers a person looks a customer up
by (id, phone, e-mail) travel only in POST bodies, never in a URL; no handler logs them.
"""

from __future__ import annotations

import contextlib
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, cast

from litestar import MediaType, Request, Response, Router, get, post
from litestar.datastructures import State, UploadFile
from litestar.exceptions import HTTPException, ValidationException
from litestar.params import Parameter
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from litestar.status_codes import HTTP_303_SEE_OTHER

from router.api.auth import Authenticator
from router.api.lifespans import Services
from router.console.render import PAGE_HEADERS, fragment, page
from router.console.service import LookupKind, Search
from router.console.sessions import (
    LOGIN_COOKIE,
    NotSignedIn,
    Visitor,
    check_csrf,
    login_cookie,
    session_cookie,
    sign_in,
    visitor_of,
)
from router.errors import BadInput, Forbidden, RouterError, Unavailable
from router.policy.spec import TIERS
from router.serving.policy_admin import diff
from schemas.api import OverrideRequest

__all__ = ["console_router"]

ANYONE = frozenset({"helpdesk", "ops", "admin"})
OPS = frozenset({"ops", "admin"})
ADMIN = frozenset({"admin"})
TARGET_SHARES = {"VIP": 0.10, "Premium": 0.20, "Standard": 0.60, "Basic": 0.10}
"""The service matrix's population shares, drawn against the actual tier mix."""
_STATIC = Path(__file__).parent / "static"
_JOB = Annotated[str, Parameter(pattern=r"^[0-9a-f]{16}$")]
_EVENT = Annotated[str, Parameter(pattern=r"^erasure-[0-9a-f]{16}-[0-9]{1,16}$", max_length=64)]


# -- shared checks -----------------------------------------------------------------------------------


def _services(request: Request[Any, Any, State]) -> Services:
    services: Services | None = request.app.state.services
    if services is None:
        raise Unavailable("the service is starting")
    return services


async def _guard(request: Request[Any, Any, State]) -> None:
    """Session, scopes and CSRF for every route with ``opt["console"]`` (the scopes it needs)."""
    need: frozenset[str] | None = request.route_handler.opt.get("console")
    if need is None:
        return
    services = _services(request)
    auth: Authenticator = request.app.state.auth
    visitor = await visitor_of(request, services.console_state, auth)
    request.state.visitor = visitor
    if not visitor.can(*need):
        raise Forbidden(f"the API key {visitor.name!r} may not do this (needs {' or '.join(sorted(need))})")
    if request.method == "POST":
        form = await request.form()
        check_csrf(request, visitor.csrf, _text(form.get("csrf")))


def _visitor(request: Request[Any, Any, State]) -> Visitor:
    visitor: Visitor = request.state.visitor
    return visitor


def _text(value: object, limit: int = 10_000) -> str:
    if not isinstance(value, str):
        return ""
    return value[:limit]


def _ctx(request: Request[Any, Any, State], nav: str, **extra: Any) -> dict[str, Any]:
    services = _services(request)
    visitor: Visitor | None = getattr(request.state, "visitor", None)
    live = services.live
    return {
        "visitor": visitor,
        "csrf": visitor.csrf if visitor else "",
        "nav": nav,
        "policy_version": live.policy.version,
        "model_version": live.model.version if live.model else "none",
        "message": None,
        "error": None,
        **extra,
    }


def _see_other(path: str) -> Response[Any]:
    return Redirect(path, status_code=HTTP_303_SEE_OTHER, headers=PAGE_HEADERS)


# -- sign-in -----------------------------------------------------------------------------------------


@get("/", opt={"console": ANYONE}, sync_to_thread=False)
def home(request: Request[Any, Any, State]) -> Response[Any]:
    """The first page a key may see (signed out: the sign-in form, by the guard's redirect)."""
    return _see_other(_landing(_visitor(request)))


def _landing(visitor: Visitor) -> str:
    return "/console/portfolio" if visitor.can(*OPS) else "/console/decisions"


@get("/sign-in", sync_to_thread=False)
def sign_in_form(request: Request[Any, Any, State]) -> Response[str]:
    token = secrets.token_urlsafe(24)
    response = page("sign_in.html", **_ctx(request, "sign-in", login_token=token))
    response.set_cookie(login_cookie(request, token))
    return response


@post("/sign-in")
async def sign_in_submit(request: Request[Any, Any, State]) -> Response[Any]:
    services = _services(request)
    form = await request.form()
    check_csrf(request, request.cookies.get(LOGIN_COOKIE, ""), _text(form.get("csrf")))
    try:
        token, visitor, lifetime = await sign_in(
            services.console_state, request.app.state.auth, services.settings.console, _text(form.get("api_key"), 200)
        )
    except RouterError as exc:
        fresh = secrets.token_urlsafe(24)
        response = page(
            "sign_in.html", status=exc.status_code, **_ctx(request, "sign-in", login_token=fresh, error=exc.message)
        )
        response.set_cookie(login_cookie(request, fresh))
        return response
    response = _see_other(_landing(visitor))
    response.set_cookie(session_cookie(request, token, lifetime))
    response.set_cookie(login_cookie(request, "", 0))
    return response


@post("/sign-out", opt={"console": ANYONE})
async def sign_out(request: Request[Any, Any, State]) -> Response[Any]:
    await _services(request).console_state.end_session(_visitor(request).token)
    response = _see_other("/console/sign-in")
    response.set_cookie(session_cookie(request, "", 0))
    return response


# -- portfolio ---------------------------------------------------------------------------------------


@get("/portfolio", opt={"console": OPS})
async def portfolio(
    request: Request[Any, Any, State], days: Annotated[int, Parameter(ge=1, le=730)] = 30
) -> Response[str]:
    data = await _services(request).console.portfolio_page(days)
    tiers = [(t.tier, t.customers, t.share) for t in data.report.tiers]
    bands = [(b.band, b.customers) for b in data.report.churn_risk]
    return page(
        "portfolio.html",
        **_ctx(request, "portfolio", data=data, tiers=tiers, bands=bands, targets=TARGET_SHARES, days=days),
    )


# -- customers ---------------------------------------------------------------------------------------


@get("/customer", opt={"console": OPS})
async def customer_form(request: Request[Any, Any, State]) -> Response[str]:
    return page("customer.html", **_ctx(request, "customer", view=None, customer_id=None, tiers=TIERS))


async def _customer_page(
    request: Request[Any, Any, State], customer_id: str, *, status: int = 200, **extra: Any
) -> Response[str]:
    services = _services(request)
    view = await services.customers.view(customer_id)
    cutoffs = services.live.policy.spec.tiers.cutoffs
    return page(
        "customer.html", status=status,
        **_ctx(request, "customer", view=view, customer_id=customer_id, tiers=TIERS, cutoffs=cutoffs,
               horizon=services.settings.model.horizon_days, **extra),
    )  # fmt: skip


def _customer_id(form: Any) -> str:
    value = _text(form.get("customer_id"), 200).strip()
    if not value:
        raise BadInput("customer_id: missing")
    return value


@post("/customer", opt={"console": OPS})
async def customer_lookup(request: Request[Any, Any, State]) -> Response[str]:
    form = await request.form()
    kind = _text(form.get("kind"), 10)
    if kind not in ("id", "phone", "email"):
        raise BadInput("kind: choose customer id, phone or e-mail")
    try:
        customer_id = await _services(request).console.resolve(cast(LookupKind, kind), _text(form.get("value"), 256))
    except BadInput as exc:
        return page(
            "customer.html",
            status=400,
            **_ctx(request, "customer", view=None, customer_id=None, tiers=TIERS, error=exc.message),
        )
    if customer_id is None:
        return page(
            "customer.html", status=404,
            **_ctx(request, "customer", view=None, customer_id=None, tiers=TIERS, error="No customer has this phone number or e-mail address."),
        )  # fmt: skip
    return await _customer_page(request, customer_id)


@post("/customer/override", opt={"console": ADMIN})
async def override_set(request: Request[Any, Any, State]) -> Response[str]:
    form = await request.form()
    customer_id = _customer_id(form)
    try:
        hours = float(_text(form.get("hours"), 20) or "24")
        req = OverrideRequest(tier=_tier(form.get("tier")), reason=_reason(form), expires_in_hours=_hours(hours))
        await _services(request).customers.set_override(customer_id, req, _visitor(request).name)
    except ValueError:
        return await _customer_page(request, customer_id, status=400, error="hours: enter a number of hours")
    except RouterError as exc:
        return await _customer_page(request, customer_id, status=exc.status_code, error=exc.message)
    return await _customer_page(
        request, customer_id, message=f"Override set: {req.tier} for {req.expires_in_hours:g} h."
    )


def _tier(value: object) -> Any:
    if value not in TIERS:
        raise BadInput("tier: choose VIP, Premium, Standard or Basic")
    return value


def _reason(form: Any) -> str:
    reason = _text(form.get("reason"), 500).strip()
    if len(reason) < 3:
        raise BadInput("reason: say in a few words why (at least 3 characters)")
    return reason


def _hours(hours: float) -> float:
    if not 0 < hours <= 24 * 366:
        raise BadInput("hours: between 0 and 8784 (a year)")
    return hours


@post("/customer/override/clear", opt={"console": ADMIN})
async def override_clear(request: Request[Any, Any, State]) -> Response[str]:
    form = await request.form()
    customer_id = _customer_id(form)
    try:
        await _services(request).customers.remove_override(customer_id, _visitor(request).name, _reason(form))
    except RouterError as exc:
        return await _customer_page(request, customer_id, status=exc.status_code, error=exc.message)
    return await _customer_page(request, customer_id, message="Override removed.")


@post("/customer/erasure", opt={"console": ADMIN})
async def erasure(request: Request[Any, Any, State]) -> Response[Any]:
    form = await request.form()
    customer_id = _customer_id(form)
    if _text(form.get("confirm"), 200).strip() != customer_id:
        return await _customer_page(
            request, customer_id, status=400, error="Erasure not requested: type the customer id exactly to confirm."
        )
    services = _services(request)
    accepted = await services.customers.erase(customer_id, _visitor(request).name)
    h = services.stores.store.customer_key(customer_id)
    await services.console_state.follow_erasure(_visitor(request).token, accepted.event_id, h)
    return _see_other(f"/console/erasures/{accepted.event_id}")


async def _erasure_steps(request: Request[Any, Any, State], event_id: str) -> list[Any]:
    services = _services(request)
    h = await services.console_state.followed_erasure(_visitor(request).token, event_id)
    if h is None:
        raise HTTPException(status_code=404, detail="no erasure of this session with this id")
    return await services.console.erasure_steps(h)


@get("/erasures/{event_id:str}", opt={"console": ADMIN})
async def erasure_progress(request: Request[Any, Any, State], event_id: _EVENT) -> Response[str]:
    steps = await _erasure_steps(request, event_id)
    return page("erasure.html", **_ctx(request, "customer", event_id=event_id, steps=steps))


@get("/erasures/{event_id:str}/progress", opt={"console": ADMIN})
async def erasure_progress_fragment(request: Request[Any, Any, State], event_id: _EVENT) -> Response[str]:
    return fragment("_erasure_steps.html", steps=await _erasure_steps(request, event_id))


@post("/customer/export", opt={"console": OPS})
async def export(request: Request[Any, Any, State]) -> Response[bytes]:
    form = await request.form()
    body = await _services(request).console.export(_customer_id(form), _visitor(request).name)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Response(
        body, media_type=MediaType.JSON,
        headers={**PAGE_HEADERS, "Content-Disposition": f'attachment; filename="customer-export-{stamp}.json"'},
    )  # fmt: skip


# -- policy ------------------------------------------------------------------------------------------


async def _policy_page(
    request: Request[Any, Any, State], *, draft: str | None = None, status: int = 200, **extra: Any
) -> Response[str]:
    services = _services(request)
    admin = services.policy_admin
    current, number = await admin.current_text()
    history = []
    with contextlib.suppress(Unavailable):
        history = await admin.history()
    settings = services.settings.console
    return page(
        "policy.html", status=status,
        **_ctx(request, "policy", draft=current if draft is None else draft, active_number=number, history=history,
               cpu_share=settings.simulation_cpu_share, form=extra.pop("form", {}), **extra),
    )  # fmt: skip


@get("/policy", opt={"console": OPS})
async def policy(request: Request[Any, Any, State]) -> Response[str]:
    return await _policy_page(request)


@post("/policy", opt={"console": OPS})
async def policy_check(request: Request[Any, Any, State]) -> Response[Any]:
    """Validate or simulate a draft (typed into the editor, or uploaded)."""
    form = await request.form()
    upload = form.get("upload")
    draft = _text(form.get("draft"), 100_000)
    if isinstance(upload, UploadFile) and upload.filename:
        raw = await upload.read()
        try:
            draft = raw.decode("utf-8")
        except UnicodeDecodeError:
            return await _policy_page(request, draft=draft, status=422, error="upload: the file is not UTF-8 text")
    services = _services(request)
    fields = {name: _text(form.get(name), 2000) for name in ("days", "sample", "capacity", "queue_capacity")}
    try:
        policy = services.policy_admin.validate(draft)
        if _text(form.get("action"), 20) != "simulate":
            return await _policy_page(
                request, draft=draft, form=fields, message=f"The draft is valid (policy {policy.version})."
            )
        options = _simulation_options(fields)
    except RouterError as exc:
        return await _policy_page(request, draft=draft, form=fields, status=exc.status_code, error=exc.message)
    options["cpu_share"] = services.settings.console.simulation_cpu_share
    try:
        job_id = await services.policy_admin.start_simulation(draft, _visitor(request).name, options)
    except RouterError as exc:
        return await _policy_page(request, draft=draft, form=fields, status=exc.status_code, error=exc.message)
    return _see_other(f"/console/policy/simulations/{job_id}")


def _simulation_options(fields: dict[str, str]) -> dict[str, Any]:
    try:
        days = int(fields["days"] or "7")
        sample = float(fields["sample"] or "1")
        default_capacity = float(fields["capacity"]) if fields["capacity"].strip() else None
    except ValueError:
        raise BadInput("days, sample and capacity must be numbers") from None
    if not 1 <= days <= 90:
        raise BadInput("days: between 1 and 90")
    if not 0 < sample <= 1:
        raise BadInput("sample: a share above 0 and at most 1")
    if default_capacity is not None and default_capacity <= 0:
        raise BadInput("capacity: contacts per hour above 0")
    capacity: dict[str, float] = {}
    for item in fields["queue_capacity"].replace(",", " ").split():
        queue, sep, value = item.partition("=")
        try:
            capacity[queue] = float(value)
        except ValueError:
            sep = ""
        if not (sep and queue) or capacity.get(queue, 0) <= 0:
            raise BadInput("queue capacities: write queue=contacts per hour, e.g. vip=4 support=30")
    return {"days": days, "sample": sample, "default_capacity": default_capacity, "capacity": capacity}


@get("/policy/simulations/{job_id:str}", opt={"console": OPS})
async def simulation(request: Request[Any, Any, State], job_id: _JOB) -> Response[str]:
    admin = _services(request).policy_admin
    job = await admin.job(job_id)
    report, ids = await admin.report(job) if job.state == "done" else (None, {})
    current, _ = await admin.current_text()
    changes = diff(current, job.draft, "in force", "draft")
    return page(
        "simulation.html",
        **_ctx(request, "policy", job=job, report=report, ids=ids, tiers=TIERS, draft_diff=changes),
    )


@get("/policy/simulations/{job_id:str}/progress", opt={"console": OPS})
async def simulation_progress(request: Request[Any, Any, State], job_id: _JOB) -> Response[str]:
    job = await _services(request).policy_admin.job(job_id)
    return fragment("_simulation_progress.html", job=job)


@post("/policy/simulations/{job_id:str}/apply", opt={"console": ADMIN})
async def apply(request: Request[Any, Any, State], job_id: _JOB) -> Response[Any]:
    stored = await _services(request).policy_admin.apply(job_id, _visitor(request).name)
    return _see_other(f"/console/policy/versions/{stored.number}")


@get("/policy/versions/{number:int}", opt={"console": OPS})
async def version(request: Request[Any, Any, State], number: Annotated[int, Parameter(ge=1)]) -> Response[str]:
    services = _services(request)
    stored, lines = await services.policy_admin.version_diff(number)
    return page(
        "version.html",
        **_ctx(request, "policy", stored=stored, diff=lines, in_force=services.live.policy_number == number),
    )


@post("/policy/versions/{number:int}/rollback", opt={"console": ADMIN})
async def rollback(request: Request[Any, Any, State], number: Annotated[int, Parameter(ge=1)]) -> Response[Any]:
    stored = await _services(request).policy_admin.rollback(number, _visitor(request).name)
    return _see_other(f"/console/policy/versions/{stored.number}")


# -- decisions ---------------------------------------------------------------------------------------


@get("/decisions", opt={"console": ANYONE})
async def decisions(request: Request[Any, Any, State]) -> Response[str]:
    return page("decisions.html", **_ctx(request, "decisions", result=None, form={}, tiers=TIERS))


@post("/decisions", opt={"console": ANYONE})
async def decisions_search(request: Request[Any, Any, State]) -> Response[str]:
    form = await request.form()
    fields = {n: _text(form.get(n), 256) for n in ("by", "decision_id", "kind", "value", "start", "end", "tier")}
    console = _services(request).console
    try:
        by = fields["by"]
        result: Search | None
        if by == "decision":
            result = await console.search_decision(fields["decision_id"])
        elif by == "customer":
            kind = fields["kind"] if fields["kind"] in ("id", "phone", "email") else "id"
            customer_id = await console.resolve(cast(LookupKind, kind), fields["value"])
            result = await console.search_customer(customer_id) if customer_id else None
        elif by == "time":
            tier = fields["tier"] if fields["tier"] in TIERS else None
            result = await console.search_range(_instant(fields["start"], "from"), _instant(fields["end"], "to"), tier)
        else:
            raise BadInput("search by decision id, customer, or time range and tier")
    except RouterError as exc:
        return page(
            "decisions.html",
            status=exc.status_code,
            **_ctx(request, "decisions", result=None, form=fields, tiers=TIERS, error=exc.message),
        )
    fields.pop("value", None)  # a phone number or e-mail is not written back into the page
    return page("decisions.html", **_ctx(request, "decisions", result=result, form=fields, tiers=TIERS))


def _instant(text: str, name: str) -> float:
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadInput(f"{name}: a date and time like 2026-11-25T08:00") from None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


# -- errors as pages ---------------------------------------------------------------------------------


def _error_page(request: Request[Any, Any, State], status: int, message: str) -> Response[Any]:
    if status == 401 and request.method == "GET":
        return _see_other("/console/sign-in")
    try:
        context = _ctx(request, "")
    except Unavailable:
        context = {
            "visitor": None,
            "csrf": "",
            "nav": "",
            "policy_version": "-",
            "model_version": "-",
            "message": None,
            "error": None,
        }
    return page("error.html", status=status, **{**context, "code": status, "detail": message})


def _on_router_error(request: Request[Any, Any, State], exc: RouterError) -> Response[Any]:
    return _error_page(request, exc.status_code, exc.message)


def _on_validation(request: Request[Any, Any, State], exc: ValidationException) -> Response[Any]:
    return _error_page(request, 400, "the address or a field of the form is not valid")


def _on_http(request: Request[Any, Any, State], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    return _error_page(request, status, exc.detail if status < 500 else "internal error")


def console_router() -> Router:
    """The console's routes under ``/console`` (excluded from the OpenAPI document)."""
    static = create_static_files_router(
        path="/static", directories=[_STATIC], include_in_schema=False, send_as_attachment=False,
        cache_control=None, name="console-static",
    )  # fmt: skip
    return Router(
        path="/console",
        route_handlers=[
            home, sign_in_form, sign_in_submit, sign_out, portfolio, customer_form, customer_lookup, override_set,
            override_clear, erasure, erasure_progress, erasure_progress_fragment, export, policy, policy_check,
            simulation, simulation_progress, apply, version, rollback, decisions, decisions_search, static,
        ],
        before_request=_guard,
        exception_handlers={
            NotSignedIn: _on_router_error, RouterError: _on_router_error, ValidationException: _on_validation,
            HTTPException: _on_http,
        },
        include_in_schema=False,
    )  # fmt: skip
