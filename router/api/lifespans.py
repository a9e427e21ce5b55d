"""Resources of the API process, each owning one lifespan: open, yield, close in ``finally``.

They live on typed app state (:class:`AppResources`), built in :func:`router.api.app.create_app`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar

from router.churn.model import ChurnModel
from router.core.identity import IdentityHasher
from router.errors import REDIS_FAULTS
from router.ops import logs, metrics
from router.ops.heap import settle_heap
from router.policy import load_policy
from router.serving.customers import CustomerService
from router.serving.decisions import DecisionService
from router.serving.handoff import HandoffService
from router.serving.portfolio import PortfolioService
from router.serving.publisher import EventPublisher
from router.serving.reloads import AdminService
from router.serving.screenpop import ScreenPopService
from router.serving.webhooks import REPLAY_TIMEOUT_S, WebhookService
from router.settings import Settings
from router.state.audit import AuditWriter
from router.state.store import StateStore, connect

__all__ = ["Readiness", "lifespans", "metrics_payload"]

log = logging.getLogger("router.api")
BACKGROUND_TIMEOUT_S = 10.0
_READY_FAULTS: tuple[type[Exception], ...] = (*REDIS_FAULTS, AssertionError)


class Readiness:
    """Ready means ready: model and policy loaded, Redis answering."""

    def __init__(self) -> None:
        self.store: StateStore | None = None
        self.service: DecisionService | None = None

    async def check(self) -> tuple[bool, dict[str, str]]:
        checks: dict[str, str] = {}
        service = self.service
        checks["model"] = f"loaded {service.model.version}" if service and service.model else "not loaded"
        checks["policy"] = f"loaded {service.policy.version}" if service else "not loaded"
        try:
            assert self.store is not None
            await self.store.client.ping()
            checks["redis"] = "ok"
        except _READY_FAULTS as exc:
            checks["redis"] = f"unavailable ({type(exc).__name__})"
        ok = bool(service and service.model) and checks["redis"] == "ok"
        return ok, checks


def metrics_payload() -> bytes:
    """Prometheus exposition, summed over the worker processes in multiprocess mode."""
    return logs.metrics_payload()


def lifespans(settings: Settings) -> list[Any]:
    """Lifespan context managers in the order they must open."""

    @contextlib.asynccontextmanager
    async def redis_store(app: Litestar) -> AsyncIterator[None]:
        hasher = IdentityHasher(settings.identity.hash_key.encode(), settings.identity.default_region)
        client = connect(settings.redis.url, cluster=settings.redis.cluster, timeout_s=settings.redis.timeout_ms / 1000)
        store = StateStore(client, settings.redis.prefix, hasher)
        # Population-wide reads (CLV histogram, portfolio) take far longer than a request's budget.
        slow = connect(settings.redis.url, cluster=settings.redis.cluster, timeout_s=BACKGROUND_TIMEOUT_S)
        # The decision's own read: its caller bounds the whole lookup with one asyncio timeout, so the
        # client needs no socket timeout of its own (redis-py's costs a task and a timer per command).
        reader = connect(settings.redis.url, cluster=settings.redis.cluster, timeout_s=None)
        app.state.store = store
        app.state.background_store = StateStore(slow, settings.redis.prefix, hasher)
        app.state.reader_store = StateStore(reader, settings.redis.prefix, hasher)
        app.state.readiness.store = store
        try:
            yield
        finally:
            await client.aclose()
            await slow.aclose()
            await reader.aclose()

    @contextlib.asynccontextmanager
    async def webhook_replay_cache(app: Litestar) -> AsyncIterator[None]:
        # Its own client: a replay check's budget is seconds, not the request path's milliseconds
        # (one that times out cannot tell whether its SET NX landed).
        client = connect(settings.redis.url, cluster=settings.redis.cluster, timeout_s=REPLAY_TIMEOUT_S)
        app.state.replay_cache = client
        try:
            yield
        finally:
            await client.aclose()

    @contextlib.asynccontextmanager
    async def decision_service(app: Litestar) -> AsyncIterator[None]:
        model: ChurnModel | None
        try:
            model = ChurnModel.load(settings.model.path)
            metrics.MODEL_INFO.info({"version": model.version, "path": settings.model.path})
        except Exception as exc:  # ModelError, or a card malformed in a way the loader trips over
            log.error("churn model not loaded, decisions are rule-based and marked degraded: %s", exc)
            model = None
        policy = load_policy(settings.policy.path)
        metrics.POLICY_INFO.info({"version": policy.version})
        store: StateStore = app.state.store
        audit = AuditWriter(store.client, settings.redis.prefix)
        service = DecisionService(
            settings, store, model, policy, audit, app.state.background_store, app.state.reader_store
        )
        await audit.start()
        await service.start()
        app.state.decisions = service
        app.state.readiness.service = service
        try:
            yield
        finally:
            await service.stop()
            await audit.stop()

    @contextlib.asynccontextmanager
    async def event_publisher(app: Litestar) -> AsyncIterator[None]:
        publisher = EventPublisher(settings.kafka)
        await publisher.start()
        app.state.publisher = publisher
        try:
            yield
        finally:
            await publisher.stop()

    @contextlib.asynccontextmanager
    async def services(app: Litestar) -> AsyncIterator[None]:
        # Plain objects over the resources above: nothing to close, so they share one lifespan.
        decisions: DecisionService = app.state.decisions
        state = app.state
        state.screenpop = ScreenPopService(decisions)
        state.handoff = HandoffService(decisions, settings.handoff)
        state.webhooks = WebhookService(decisions, state.replay_cache, settings.webhooks, settings.redis.prefix)
        state.customers = CustomerService(decisions, decisions.audit, state.publisher)
        state.portfolio = PortfolioService(decisions)
        state.admin = AdminService(decisions, decisions.audit)
        hup = _install_sighup(state.admin.on_sighup)
        if settings.api.settle_heap:
            settle_heap()  # everything a worker keeps is loaded by now
        try:
            yield
        finally:
            if hup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    return [redis_store, webhook_replay_cache, decision_service, event_publisher, services]


def _install_sighup(handler: Any) -> bool:
    """Reload policy and model on SIGHUP, where this process may own signals (not in tests' threads)."""
    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, handler)
    except (ValueError, RuntimeError, NotImplementedError):
        return False
    return True
