"""The API process's resources and services, built once per worker.

Each resource owns one lifespan context manager (open, ``yield``, close in ``finally``); the
single app lifespan :func:`services` enters them in order and hands the typed
:class:`Services` container to app state. Handlers and dependency providers read it from
there, so nothing is looked up by a string name and every service receives only what it uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from litestar import Litestar

from router.connectors.config import ConnectorConfigError, load_connectors
from router.connectors.service import ConnectorService
from router.console.service import ConsoleService
from router.core.identity import IdentityHasher
from router.ops.heap import settle_heap
from router.serving.customers import CustomerService
from router.serving.decisions import DecisionService
from router.serving.handoff import HandoffService
from router.serving.inbound import InboundWebhooks
from router.serving.intake import EventIntake
from router.serving.live import Live
from router.serving.policy_admin import PolicyAdmin
from router.serving.portfolio import PortfolioService
from router.serving.publisher import EventPublisher
from router.serving.reloads import ReloadService
from router.serving.screenpop import ScreenPopService
from router.serving.stripe import StripeService
from router.serving.webhooks import REPLAY_TIMEOUT_S, WebhookService
from router.settings import Settings
from router.state.audit import AuditReader, AuditWriter
from router.state.console import ConsoleState
from router.state.follow import Follower
from router.state.outbox import Outbox
from router.state.probe import RedisProbe
from router.state.records import Announcement
from router.state.store import StateStore, connect_redis

__all__ = ["Readiness", "Services", "services"]

log = logging.getLogger("router.api")
BACKGROUND_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Stores:
    """One Redis, three clients with different budgets."""

    store: StateStore
    """Request-side writes and reads (socket timeout ``redis.timeout_ms``)."""
    reader: StateStore
    """The decision's own read: no socket timeout, its caller bounds the whole lookup."""
    background: StateStore
    """Population-wide reads (CLV histogram, portfolio), the audit writer, the Redis probe: seconds, not milliseconds."""
    replays: StateStore
    """The webhook replay cache: a check that times out cannot tell whether its SET landed."""


@dataclass(frozen=True, slots=True)
class Services:
    """Everything the handlers call, built once per worker by :func:`services`."""

    settings: Settings
    stores: Stores
    probe: RedisProbe
    live: Live
    audit: AuditWriter
    publisher: EventPublisher
    decisions: DecisionService
    screenpop: ScreenPopService
    handoff: HandoffService
    webhooks: WebhookService
    inbound: InboundWebhooks
    stripe: StripeService
    intake: EventIntake
    customers: CustomerService
    portfolio: PortfolioService
    reloads: ReloadService
    connectors: ConnectorService
    console_state: ConsoleState
    """Console sessions and simulation jobs."""
    console: ConsoleService
    policy_admin: PolicyAdmin


class Readiness:
    """Ready means "this process can answer": model and policy loaded.

    Redis is not part of it: the API degrades around a Redis outage (rule-based answers marked
    ``degraded``), and a readiness that failed with Redis would take every pod out of its
    Service at once, so clients would get no answer instead of a degraded one. Redis health is
    in ``router_redis_up``, the ``RouterRedisDown`` alert and :meth:`detail`.
    """

    @staticmethod
    def check(services: Services | None) -> tuple[bool, dict[str, str]]:
        checks: dict[str, str] = {}
        live = services.live if services else None
        checks["model"] = f"loaded {live.model.version}" if live and live.model else "not loaded"
        checks["policy"] = f"loaded {live.policy.version}" if live else "not loaded"
        return bool(live and live.model), checks

    @staticmethod
    async def detail(services: Services | None) -> dict[str, object]:
        """Readiness plus the dependencies this process degrades around, checked now."""
        ready, checks = Readiness.check(services)
        if services is None:
            return {"status": "not_ready", "ready": False, "checks": checks}
        redis_ok = await services.probe.check()
        checks["redis"] = services.probe.describe()
        checks["circuit_breaker"] = "open" if services.decisions.breaker.open else "closed"
        status = "not_ready" if not ready else "ok" if redis_ok and not services.decisions.breaker.open else "degraded"
        return {"status": status, "ready": ready, "checks": checks}


# -- one lifespan per resource ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def redis_stores(settings: Settings) -> AsyncIterator[Stores]:
    hasher = IdentityHasher.from_settings(settings.identity)
    r, prefix = settings.redis, settings.redis.prefix
    clients = (
        connect_redis(r, timeout_s=r.timeout_ms / 1000),
        # redis-py's socket timeout costs a task and a timer per command: the reader has none.
        connect_redis(r, timeout_s=None),
        connect_redis(r, timeout_s=BACKGROUND_TIMEOUT_S),
        connect_redis(r, timeout_s=REPLAY_TIMEOUT_S),
    )
    try:
        yield Stores(*(StateStore(client, prefix, hasher) for client in clients))
    finally:
        for client in clients:
            await client.aclose()


@contextlib.asynccontextmanager
async def redis_probe(background: StateStore) -> AsyncIterator[RedisProbe]:
    probe = RedisProbe(background.client)
    await probe.start()
    try:
        yield probe
    finally:
        await probe.stop()


@contextlib.asynccontextmanager
async def live_models(settings: Settings, background: StateStore) -> AsyncIterator[Live]:
    live = Live.load(
        background, model_path=settings.model.path, policy_path=settings.policy.path, business=settings.model.business
    )
    await live.start()
    try:
        yield live
    finally:
        await live.stop()


@contextlib.asynccontextmanager
async def model_follower(settings: Settings, live: Live) -> AsyncIterator[Follower]:
    """Load the model an admin reload announced to every process (this worker may not have served it)."""

    async def apply(announced: Announcement) -> None:
        await live.reload_model(announced.path, announced.sha256)

    follower = Follower(
        live.background, "model", settings.model.follow_s, lambda: live.model.sha256 if live.model else "", apply
    )
    await follower.start()
    try:
        yield follower
    finally:
        await follower.stop()


@contextlib.asynccontextmanager
async def audit_writer(store: StateStore, retention_days: int) -> AsyncIterator[AuditWriter]:
    audit = AuditWriter(store, retention_s=retention_days * 86_400)
    await audit.start()
    try:
        yield audit
    finally:
        await audit.stop()


@contextlib.asynccontextmanager
async def event_publisher(settings: Settings) -> AsyncIterator[EventPublisher]:
    publisher = EventPublisher(settings.kafka)
    await publisher.start()
    try:
        yield publisher
    finally:
        await publisher.stop()


@contextlib.asynccontextmanager
async def policy_admin(
    live: Live, state: ConsoleState, audit: AuditWriter, settings: Settings
) -> AsyncIterator[PolicyAdmin]:
    admin = PolicyAdmin(live, state, audit, settings)
    try:
        yield admin
    finally:
        await admin.close()  # simulations this worker started


@contextlib.asynccontextmanager
async def sighup_reloads(reloads: ReloadService) -> AsyncIterator[None]:
    """Reload policy and model on SIGHUP, where this process may own signals (not in tests' threads)."""
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reloads.on_sighup)
        installed = True
    except (ValueError, RuntimeError, NotImplementedError):
        installed = False
    try:
        yield
    finally:
        if installed:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)


# -- the app's one lifespan ------------------------------------------------------------------


def services(settings: Settings) -> Callable[[Litestar], contextlib.AbstractAsyncContextManager[None]]:
    """The app lifespan: resources in the order they must open, then the services over them."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            stores = await stack.enter_async_context(redis_stores(settings))
            probe = await stack.enter_async_context(redis_probe(stores.background))
            # Background writes with a budget of seconds: on the request path's 50 ms client a batch of
            # a few hundred records on a busy Redis timed out and was dropped whole.
            audit = await stack.enter_async_context(
                audit_writer(stores.background, settings.redis.audit_retention_days)
            )
            live = await stack.enter_async_context(live_models(settings, stores.background))
            await stack.enter_async_context(model_follower(settings, live))
            publisher = await stack.enter_async_context(event_publisher(settings))
            decisions = DecisionService(live, stores.reader, audit, settings.redis, settings.model)
            reloads = ReloadService(live, audit)
            try:
                connected = load_connectors(settings.connectors.config_path)
            except ConnectorConfigError as exc:
                raise SystemExit(f"invalid configuration: {exc}") from None
            # The replay cache's client: a webhook's write-back is queued with the same budget.
            outbox = Outbox(stores.replays.client, stores.replays.keys)
            connectors = ConnectorService(decisions, outbox, connected, settings.connectors)
            await stack.enter_async_context(sighup_reloads(reloads))
            console_state = ConsoleState(stores.store.client, stores.store.keys)
            admin = await stack.enter_async_context(policy_admin(live, console_state, audit, settings))
            customers = CustomerService(stores.store, live, audit, publisher, settings.model)
            portfolio = PortfolioService(stores.background, live)
            app.state.services = Services(
                settings=settings,
                stores=stores,
                probe=probe,
                live=live,
                audit=audit,
                publisher=publisher,
                decisions=decisions,
                screenpop=ScreenPopService(decisions),
                handoff=HandoffService(decisions, settings.handoff),
                webhooks=WebhookService(decisions, stores.replays, settings.webhooks, connectors),
                inbound=InboundWebhooks(decisions, stores.replays, settings.webhooks),
                stripe=StripeService(publisher, settings.webhooks),
                intake=EventIntake(publisher, settings.api, settings.stream),
                customers=customers,
                portfolio=portfolio,
                reloads=reloads,
                connectors=connectors,
                console_state=console_state,
                console=ConsoleService(stores.background, portfolio, customers, AuditReader(stores.background)),
                policy_admin=admin,
            )
            if settings.api.settle_heap:
                settle_heap()  # everything a worker keeps is loaded by now
            try:
                yield
            finally:
                app.state.services = None

    return lifespan
