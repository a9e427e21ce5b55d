"""``router connect``: the process that follows helpdesks and writes decisions back.

Why a process of its own, like ``router consume``, and not a task inside the API: a write-back is
a few calls to a helpdesk that may be slow, rate-limited or down for minutes, and the API's
workers share their cores with sub-millisecond decisions. Webhooks therefore only queue the
write-back in the outbox (:mod:`router.state.outbox`); this process takes it from there. Several
``router connect`` processes share the work through the outbox's consumer group (each write-back
goes to one of them; one that dies leaves its write-backs to the others after
``ROUTER_CONNECTORS_RECLAIM_AFTER_S``), and they follow RT together without doubling a ticket:
the watermark moves by compare-and-set.

A write-back that fails is tried again later: after the helpdesk's ``Retry-After`` when it sent
one, else after an exponentially growing delay with jitter (``ROUTER_CONNECTORS_BACKOFF_BASE_S``
doubling up to ``..._BACKOFF_MAX_S``). After ``ROUTER_CONNECTORS_MAX_ATTEMPTS`` failures, or at
once when the helpdesk refused it (4xx), it is dead-lettered with the cause; ``router connect
--requeue-dead`` puts dead letters back. When the helpdesk as a whole cannot take requests
(unreachable, timing out, 502/503/504, 429), the connector pauses: nothing of it is read or
tried until the pause ends (its ``Retry-After``, else the same growing delay), the one write-back
that found out waits in the outbox without losing an attempt, and the first one tried after the
pause is the probe. An outage of any length therefore dead-letters nothing; it shows as a
growing outbox and a ``failing`` connector in ``GET /v1/connectors``.

For the on-call person, the health server's ``/metrics`` carries, per connector, the outbox's
depth, dead letters and the age of its oldest write-back (published every 2 s, also while every
helpdesk is paused), whether this process holds the helpdesk's write-backs back
(``router_connector_circuit_open``), and every failed attempt by cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import time
from collections.abc import AsyncIterator

import msgspec
from redis.exceptions import ResponseError

from router.connectors.base import Connector, Permanent, Retry, WriteBack, WriteBackError
from router.connectors.config import ConnectorConfigError, ConnectorsConfig, load_connectors
from router.connectors.freshdesk import FreshdeskConnector
from router.connectors.rt import RtConnector
from router.connectors.service import ConnectorService, encode_job
from router.connectors.zendesk import ZendeskConnector
from router.core.identity import IdentityHasher
from router.errors import REDIS_FAULTS
from router.ingest.health import HealthServer
from router.ops import metrics
from router.ops.logs import setup_logging
from router.serving.decisions import DecisionService
from router.serving.live import Live
from router.settings import ConnectorSettings, Settings, require_safe
from router.state.audit import AuditWriter
from router.state.keys import Keys
from router.state.outbox import Delivery, Outbox
from router.state.store import StateStore, connect_redis

__all__ = ["ConnectWorker", "Landed", "build_connectors", "connect_stack", "requeue_dead", "run_connect"]

log = logging.getLogger("router.connectors")

_READ_BLOCK_MS = 200
_STATUS_EVERY_S = 2.0
_POLL_BACKOFF_MAX_S = 10.0
_DECISION_REDIS_TIMEOUT_MS = 1000
"""A followed ticket's decision may wait for Redis longer than a request's: nobody is on hold."""
_job_dec = msgspec.msgpack.Decoder(WriteBack)
_enc = msgspec.msgpack.Encoder()


class Landed(msgspec.Struct, frozen=True, array_like=True):
    """One landed write-back, as the outbox's ``landed`` stream keeps it."""

    ticket: str
    decision_id: str
    decided_at: float
    landed_at: float
    attempts: int
    written: bool
    """False when the decision's note was already on the ticket (a repeated delivery)."""


_landed_dec = msgspec.msgpack.Decoder(Landed)


class _Decided(msgspec.Struct):
    decided_at: float


_decided_dec = msgspec.msgpack.Decoder(_Decided)


def _decided_at(raw: bytes) -> float | None:
    """A queued write-back's decision time, read without decoding the rest of it."""
    try:
        return _decided_dec.decode(raw).decided_at
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def decode_landed(raw: bytes) -> Landed:
    return _landed_dec.decode(raw)


def build_connectors(config: ConnectorsConfig, settings: ConnectorSettings) -> dict[str, Connector]:
    """One connector per helpdesk in the connector file, with its credentials from the settings."""
    connectors: dict[str, Connector] = {}
    timeout = settings.http_timeout_s
    if config.rt is not None:
        connectors["rt"] = RtConnector(config.rt, settings.rt_token, timeout)
    if config.zendesk is not None:
        connectors["zendesk"] = ZendeskConnector(
            config.zendesk, settings.zendesk_email, settings.zendesk_token, timeout
        )
    if config.freshdesk is not None:
        connectors["freshdesk"] = FreshdeskConnector(config.freshdesk, settings.freshdesk_api_key, timeout)
    return connectors


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, seconds))


class ConnectWorker:
    """Follows RT and drains the outbox of every connected helpdesk until ``stop`` is set."""

    def __init__(
        self,
        outbox: Outbox,
        connectors: dict[str, Connector],
        service: ConnectorService,
        settings: ConnectorSettings,
        consumer: str | None = None,
    ) -> None:
        self.outbox = outbox
        self.connectors = connectors
        self.service = service
        self.settings = settings
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{os.urandom(2).hex()}"
        self.ready = False
        """Set once the outbox groups exist and the connectors were checked."""
        self._redis_failing = False
        self._paused_until: dict[str, float] = {}
        self._outage: dict[str, int] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Write back and follow until ``stop``; every loop ends at its next turn and is awaited."""
        await self._start()
        loops = [asyncio.create_task(self._write_loop(stop), name="writeback")]
        rt = self.connectors.get("rt")
        if isinstance(rt, RtConnector):
            loops.append(asyncio.create_task(self._follow_loop(rt, stop), name="follow-rt"))
        try:
            await asyncio.gather(*loops)
        finally:
            stop.set()
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)

    async def _start(self) -> None:
        for name, connector in self.connectors.items():
            metrics.CIRCUIT_OPEN.labels(name).set(0)
            await self.outbox.ensure_group(name)
            try:
                problems = await connector.probe()
            except WriteBackError as exc:
                problems = [f"could not check the configuration: {exc.cause}"]
            for problem in problems:
                log.error("%s connector: %s", name, problem)
        self.ready = True

    # -- writing back ----------------------------------------------------------------------------

    async def _write_loop(self, stop: asyncio.Event) -> None:
        names = list(self.connectors)
        next_reclaim = next_status = 0.0
        while not stop.is_set():
            try:
                now = time.time()
                if now >= next_status:  # also while every helpdesk is paused: that is when operators look
                    next_status = now + _STATUS_EVERY_S
                    await self._publish_depths()
                active = [n for n in names if self._paused_until.get(n, 0.0) <= now]
                if not active:  # every helpdesk is down: wait for the first pause to end
                    await _sleep(stop, min(0.2, min(self._paused_until.values()) - now))
                    continue
                for name in active:
                    await self.outbox.promote(name, now)
                deliveries: list[Delivery] = []
                if now >= next_reclaim:
                    next_reclaim = now + max(1.0, self.settings.reclaim_after_s / 4)
                    idle_ms = int(self.settings.reclaim_after_s * 1000)
                    for name in active:
                        deliveries += await self.outbox.reclaim(self.consumer, name, idle_ms, self.settings.concurrency)
                if not deliveries:
                    deliveries = await self.outbox.read(
                        self.consumer, active, max(1, self.settings.concurrency), _READ_BLOCK_MS
                    )
                if deliveries:
                    await asyncio.gather(*(self._handle(d) for d in deliveries))
                self._redis_back()
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                for name in names:  # the stream was deleted (Redis lost its data): start over
                    await self.outbox.ensure_group(name)
            except REDIS_FAULTS as exc:
                self._redis_down(exc)
                await _sleep(stop, 1.0)

    async def _handle(self, d: Delivery) -> None:
        connector = self.connectors[d.connector]  # only connected helpdesks' outboxes are read
        try:
            job = _job_dec.decode(d.job)
        except (msgspec.DecodeError, msgspec.ValidationError):
            metrics.WRITEBACKS.labels(d.connector, "dead_lettered").inc()
            metrics.WRITEBACK_FAILURES.labels(d.connector, "undecodable").inc()
            await self.outbox.dead(d, d.job, time.time(), "undecodable write-back")
            return
        # Nobody can have written a write-back on its first delivery: no need to look for its note.
        first = not d.taken_over and job.attempts == 0 and job.last_error is None
        t0 = time.perf_counter()
        try:
            written = await connector.write_back(job, check=not first)
        except Permanent as exc:
            metrics.WRITEBACK_FAILURES.labels(d.connector, exc.kind).inc()
            self._answered(d.connector)
            await self._dead(d, job, exc.cause)
        except Retry as exc:
            metrics.WRITEBACK_FAILURES.labels(d.connector, exc.kind).inc()
            if exc.helpdesk_wide:
                await self._paused(d, job, exc.cause, exc.after_s)
            else:
                self._answered(d.connector)
                await self._failed(d, job, exc.cause, exc.after_s)
        except Exception as exc:  # a bug or an answer we did not expect: retried, never a crash of the loop
            log.warning(
                "%s write-back of ticket %s failed unexpectedly: %s", d.connector, job.ticket, type(exc).__name__
            )
            metrics.WRITEBACK_FAILURES.labels(d.connector, "unexpected").inc()
            await self._failed(d, job, f"unexpected {type(exc).__name__}", None)
        else:
            now = time.time()
            record = Landed(job.ticket, job.decision_id, job.decided_at, now, job.attempts + 1, written)
            await self.outbox.landed(d, _enc.encode(record), now)
            metrics.WRITEBACKS.labels(d.connector, "landed" if written else "duplicate").inc()
            self._answered(d.connector)
            if written:
                metrics.WRITEBACK_LAG.labels(d.connector).observe(now - job.decided_at)
        finally:
            metrics.WRITEBACK_SECONDS.labels(d.connector).observe(time.perf_counter() - t0)

    async def _failed(self, d: Delivery, job: WriteBack, cause: str, after_s: float | None) -> None:
        attempts = job.attempts + 1
        job = msgspec.structs.replace(job, attempts=attempts, last_error=cause)
        if attempts >= self.settings.max_attempts:
            await self._dead(d, job, f"{cause} (gave up after {attempts} attempts)")
            return
        delay = after_s if after_s is not None else self.backoff_s(attempts)
        now = time.time()
        await self.outbox.later(d, encode_job(job), now + delay, now, cause)
        metrics.WRITEBACKS.labels(d.connector, "retried").inc()
        log.info(
            "%s write-back of ticket %s: %s; attempt %d in %.1f s", d.connector, job.ticket, cause, attempts + 1, delay
        )

    async def _paused(self, d: Delivery, job: WriteBack, cause: str, after_s: float | None) -> None:
        """The helpdesk cannot take requests: pause the connector; this write-back keeps its attempts."""
        now = time.time()
        if now >= self._paused_until.get(d.connector, 0.0):  # the first to find out since the last pause
            self._outage[d.connector] = self._outage.get(d.connector, 0) + 1
            metrics.CIRCUIT_OPEN.labels(d.connector).set(1)
        outage = self._outage.get(d.connector, 1)
        pause = after_s if after_s is not None else self.backoff_s(outage)
        self._paused_until[d.connector] = max(self._paused_until.get(d.connector, 0.0), now + pause)
        await self.outbox.later(d, encode_job(msgspec.structs.replace(job, last_error=cause)), now + pause, now, cause)
        metrics.WRITEBACKS.labels(d.connector, "retried").inc()
        if outage == 1:
            log.warning(
                "%s: helpdesk unavailable (%s); write-backs paused, next try in %.1f s", d.connector, cause, pause
            )

    async def _dead(self, d: Delivery, job: WriteBack, cause: str) -> None:
        job = msgspec.structs.replace(job, last_error=cause)
        await self.outbox.dead(d, encode_job(job), time.time(), cause)
        metrics.WRITEBACKS.labels(d.connector, "dead_lettered").inc()
        log.error("%s write-back of ticket %s dead-lettered: %s", d.connector, job.ticket, cause)

    def _answered(self, connector: str) -> None:
        """The helpdesk answered a request (whatever it said): an outage is over, the circuit closes."""
        if self._outage.pop(connector, 0):
            log.info("%s: helpdesk available again, write-backs resumed", connector)
        metrics.CIRCUIT_OPEN.labels(connector).set(0)

    def backoff_s(self, attempts: int) -> float:
        """Delay before attempt ``attempts + 1``: base x 2^(attempts-1), capped, with equal jitter."""
        s = self.settings
        ceiling: float = min(s.backoff_max_s, s.backoff_base_s * 2.0 ** min(attempts - 1, 30))
        return ceiling / 2 + random.random() * ceiling / 2

    async def _publish_depths(self) -> None:
        """The outbox gauges of every connector, paused or not (the outbox is in Redis, not the helpdesk)."""
        now = time.time()
        for name in self.connectors:
            status = await self.outbox.status(name)
            metrics.OUTBOX_DEPTH.labels(name).set(status.queued + status.delayed)
            metrics.OUTBOX_DEAD_LETTERS.labels(name).set(status.dead_letters)
            oldest = await self.outbox.oldest(name, _decided_at)
            metrics.OUTBOX_OLDEST.labels(name).set(max(0.0, now - oldest) if oldest is not None else 0.0)

    @property
    def healthy(self) -> tuple[bool, str]:
        """Readiness of ``router connect``: started, and the outbox (Redis) answering."""
        if not self.ready:
            return False, "starting"
        return (False, "outbox unavailable (Redis)") if self._redis_failing else (True, "ready")

    def _redis_down(self, exc: BaseException) -> None:
        if not self._redis_failing:
            log.warning("outbox unavailable (Redis %s); retrying every second", type(exc).__name__)
        self._redis_failing = True

    def _redis_back(self) -> None:
        if self._redis_failing:
            log.info("outbox available again")
        self._redis_failing = False

    # -- following RT ----------------------------------------------------------------------------

    async def _follow_loop(self, rt: RtConnector, stop: asyncio.Event) -> None:
        failures = 0
        interval = rt.config.poll_interval_s
        while not stop.is_set():
            try:
                more = await self.follow_once(rt)
            except WriteBackError as exc:
                metrics.CONNECTOR_POLLS.labels(rt.name, "failed").inc()
                if not failures:
                    log.warning("rt: following new tickets failed: %s", exc.cause)
                failures += 1
                with contextlib.suppress(*REDIS_FAULTS):
                    await self.outbox.note_poll(rt.name, time.time(), exc.cause)
                more = False
            except REDIS_FAULTS as exc:
                self._redis_down(exc)
                failures += 1
                more = False
            else:
                if failures:
                    log.info("rt: following new tickets again")
                failures = 0
                metrics.CONNECTOR_POLLS.labels(rt.name, "ok").inc()
            if not more:
                await _sleep(stop, min(_POLL_BACKOFF_MAX_S, interval * 2 ** min(failures, 8)))

    async def follow_once(self, rt: RtConnector) -> bool:
        """One search for new RT tickets; their decisions are queued with the new watermark. True: more wait."""
        name = rt.name
        mark = await self.outbox.mark(name)
        if mark is None:
            start = 0 if rt.config.route_existing else await rt.latest_ticket()
            await self.outbox.follow(name, None, str(start), [])
            log.info("rt: following tickets after #%d", start)
            return True
        tickets, new_mark, more = await rt.tickets_after(int(mark))
        jobs: list[bytes] = []
        for inbound in tickets:
            decision = await self.service.decide(inbound)
            if decision.degraded_cause == "redis_unavailable":
                raise Retry("customer data unavailable (Redis): these tickets are routed on the next poll")
            jobs.append(encode_job(self.service.job(name, inbound, decision)))
        if new_mark != int(mark):
            moved = await self.outbox.follow(name, mark, str(new_mark), jobs)
            metrics.CONNECTOR_INBOUND.labels(name, "queued").inc(len(jobs) if moved else 0)
        await self.outbox.note_poll(name, time.time(), None)
        return more


# -- the process -------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def connect_stack(settings: Settings) -> AsyncIterator[ConnectWorker]:
    """Everything ``router connect`` runs on, opened in order and closed in reverse."""
    require_safe(settings, binds_api=False)  # like the consumer: a placeholder identity key never hashes a requester
    try:
        config = load_connectors(settings.connectors.config_path)
    except ConnectorConfigError as exc:
        raise SystemExit(f"invalid configuration: {exc}") from None
    if not config.names:
        raise SystemExit("no helpdesk connected: set ROUTER_CONNECTORS_CONFIG_PATH to a connector file")
    hasher = IdentityHasher.from_settings(settings.identity)
    client = connect_redis(settings.redis, timeout_s=5.0)
    reader_client = connect_redis(settings.redis, timeout_s=None)
    store = StateStore(client, settings.redis.prefix, hasher)
    reader = StateStore(reader_client, settings.redis.prefix, hasher)
    connectors = build_connectors(config, settings.connectors)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        stack.push_async_callback(reader_client.aclose)
        for connector in connectors.values():
            stack.push_async_callback(connector.aclose)
        live = Live.load(
            store, model_path=settings.model.path, policy_path=settings.policy.path, business=settings.model.business
        )
        await live.start()
        stack.push_async_callback(live.stop)
        audit = AuditWriter(store, retention_s=settings.redis.audit_retention_days * 86_400)
        await audit.start()
        stack.push_async_callback(audit.stop)
        redis = msgspec.structs.replace(
            settings.redis, timeout_ms=max(settings.redis.timeout_ms, _DECISION_REDIS_TIMEOUT_MS)
        )
        decisions = DecisionService(live, reader, audit, redis, settings.model)
        outbox = Outbox(client, store.keys)
        service = ConnectorService(decisions, outbox, config, settings.connectors)
        worker = ConnectWorker(outbox, connectors, service, settings.connectors)
        health = HealthServer(settings.stream.health_host, settings.connectors.health_port, lambda: worker.healthy)
        await health.start()
        stack.push_async_callback(health.stop)
        yield worker


async def run_connect(settings: Settings) -> None:
    """Run ``router connect`` until SIGINT/SIGTERM."""
    setup_logging(settings.api.log_level)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with connect_stack(settings) as worker:
        await worker.run(stop)


async def requeue_dead(settings: Settings) -> dict[str, int]:
    """Put every dead letter back into its outbox with a fresh attempt count (``--requeue-dead``)."""
    config = load_connectors(settings.connectors.config_path)
    client = connect_redis(settings.redis, timeout_s=5.0)
    outbox = Outbox(client, Keys(settings.redis.prefix))
    moved: dict[str, int] = {}
    try:
        for name in config.names:
            moved[name] = 0
            start = "-"
            while letters := await outbox.dead_letters(name, start):
                for entry_id, raw, _cause in letters:
                    try:
                        job = msgspec.structs.replace(
                            _job_dec.decode(raw), attempts=0
                        )  # last_error kept: it is checked
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        continue  # not a write-back: left for a person to look at
                    moved[name] += await outbox.requeue(name, entry_id, encode_job(job))
                start = "(" + letters[-1][0]
    finally:
        await client.aclose()
    return moved
