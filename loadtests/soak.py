"""Soak: mixed constant-rate load for a set time; memory, errors and lag over time.

Run (not in CI): ``python -m loadtests.soak --minutes 30``; the test suite runs a short
version (``tests/test_soak.py``, about 45 s).

On a private broker and Redis (or the ones given), it starts one ``router consume`` and
one ``router serve`` process and, for the whole duration:

* produces customer events at a constant rate (``--events-per-s``) over a population of
  ``--customers``, each event stamped with the time it is sent;
* sends classify requests at a constant rate (``--requests-per-s``) from a bounded pool
  of client tasks: by customer id, by phone number and for unknown customers;
* every ``--interval`` seconds samples RSS of the API and consumer process trees, Redis
  ``used_memory``, requests, errors, 5xx, latency percentiles and consumer lag.

At the end it waits (bounded) for the lag to drain, prints the samples as a table and a
JSON summary (also written to ``--out``), and exits non-zero if any request failed, the
lag did not return to 0, or the API's or consumer's RSS grew by more than ``--max-growth-mb``
between the end of the warm-up (first quarter) and the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psutil
import redis
from aiokafka import AIOKafkaProducer

from router.devstack.infra import ManagedProcess, free_port, start_broker, start_redis
from router.ops.kafka import ensure_topics, producer_config
from router.settings import Settings, to_env
from router.state.store import StateStore, connect_redis

__all__ = ["Sample", "SoakConfig", "SoakReport", "run_soak"]

_KEY = "soak-every-scope-0123456789"
_enc = msgspec.json.Encoder()


@dataclass(frozen=True)
class SoakConfig:
    seconds: float = 1800.0
    events_per_s: float = 300.0
    requests_per_s: float = 100.0
    customers: int = 2_000
    interval_s: float = 5.0
    clients: int = 8
    """Concurrent HTTP client tasks (bounds the requests in flight)."""
    max_growth_mb: float = 64.0
    seed: int = 2026


@dataclass
class Sample:
    t_s: float
    api_rss_mb: float
    consumer_rss_mb: float
    redis_used_mb: float
    requests: int
    errors: int
    server_errors: int
    p50_ms: float
    p99_ms: float
    events: int
    lag: int


@dataclass
class SoakReport:
    config: dict[str, Any]
    samples: list[Sample] = field(default_factory=list)
    requests: int = 0
    errors: int = 0
    server_errors: int = 0
    events: int = 0
    final_lag: int = -1
    api_growth_mb: float = 0.0
    consumer_growth_mb: float = 0.0
    redis_growth_mb: float = 0.0
    error_examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems()

    def problems(self) -> list[str]:
        bound = self.config["max_growth_mb"]
        out = []
        if self.errors:
            out.append(f"{self.errors} failed requests ({self.server_errors} 5xx), e.g. {self.error_examples[:3]}")
        if self.final_lag != 0:
            out.append(f"consumer lag {self.final_lag} at the end")
        if self.api_growth_mb > bound:
            out.append(f"API RSS grew {self.api_growth_mb:.1f} MB after warm-up (bound {bound} MB)")
        if self.consumer_growth_mb > bound:
            out.append(f"consumer RSS grew {self.consumer_growth_mb:.1f} MB after warm-up (bound {bound} MB)")
        return out


# --- load generators ---------------------------------------------------------------------------


class _Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.errors = 0
        self.server_errors = 0
        self.latencies: list[float] = []
        self.examples: list[str] = []
        self.events = 0

    def take_latencies(self) -> list[float]:
        with self.lock:
            out, self.latencies = self.latencies, []
        return out


def _phone(i: int) -> str:
    return f"+49 30 {7_000_000 + i}"


def _event(rnd: random.Random, i: int, customers: int) -> tuple[bytes, bytes]:
    c = rnd.randrange(customers)
    cid = f"SK{c:06d}"
    now = datetime.now(UTC).isoformat()
    r = rnd.random()
    body: dict[str, Any]
    if i < customers:  # everyone gets a profile and a subscription first
        cid = f"SK{i:06d}"
        body = {"type": "customer_profile", "segment": "smb", "phones": [_phone(i)], "acquisition_cost": 100.0}
    elif r < 0.55:
        body = {"type": "usage", "logins": rnd.randint(0, 9), "features_used": rnd.randint(0, 5)}
    elif r < 0.8:
        body = {"type": "order_placed", "order_id": f"o{i}", "amount": rnd.randint(5, 500)}
    elif r < 0.9:
        body = {"type": "payment", "invoice_id": f"i{i}", "amount": 49.0, "status": "paid"}
    else:
        body = {"type": "ticket_opened", "ticket_id": f"t{i}"}
    body.update(event_id=f"sk-{i}", customer_id=cid, occurred_at=now)
    return cid.encode(), _enc.encode(body)


async def _produce(settings: Settings, cfg: SoakConfig, stop: threading.Event, counters: _Counters) -> None:
    rnd = random.Random(cfg.seed)
    producer = AIOKafkaProducer(**producer_config(settings.kafka))
    await producer.start()
    try:
        tick = 0.05
        per_tick = cfg.events_per_s * tick
        due = 0.0
        i = 0
        start = time.monotonic()
        while not stop.is_set():
            due += per_tick
            futures = []
            while due >= 1.0:
                key, value = _event(rnd, i, cfg.customers)
                futures.append(await producer.send(settings.kafka.events_topic, value, key=key))
                i += 1
                due -= 1.0
            for f in await asyncio.gather(*futures, return_exceptions=True):
                if not isinstance(f, BaseException):
                    with counters.lock:
                        counters.events += 1
            # constant rate: sleep to the next tick on the wall clock, whatever the send took
            elapsed = time.monotonic() - start
            await asyncio.sleep(max(0.0, (int(elapsed / tick) + 1) * tick - elapsed))
    finally:
        await producer.stop()


async def _http_load(base_url: str, cfg: SoakConfig, stop: threading.Event, counters: _Counters) -> None:
    rnd = random.Random(cfg.seed + 1)
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=cfg.clients * 4)

    async def client_task(client: httpx.AsyncClient) -> None:
        while True:
            body = await queue.get()
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/classify", json=body)
                ok, status, text = r.status_code == 200, r.status_code, r.text[:200]
            except httpx.HTTPError as exc:
                ok, status, text = False, 0, type(exc).__name__
            seconds = time.perf_counter() - t0
            with counters.lock:
                counters.requests += 1
                counters.latencies.append(seconds)
                if not ok:
                    counters.errors += 1
                    counters.server_errors += status >= 500
                    if len(counters.examples) < 10:
                        counters.examples.append(f"{status} {text}")
            queue.task_done()

    headers = {"X-API-Key": _KEY}
    limits = httpx.Limits(max_connections=cfg.clients, max_keepalive_connections=cfg.clients)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=5, limits=limits) as client:
        tasks = [asyncio.create_task(client_task(client)) for _ in range(cfg.clients)]
        try:
            interval = 1.0 / cfg.requests_per_s
            start = time.monotonic()
            n = 0
            while not stop.is_set():
                c = rnd.randrange(cfg.customers)
                r = rnd.random()
                if r < 0.6:
                    body: dict[str, Any] = {"customer": {"customer_id": f"SK{c:06d}"}, "channel": "email"}
                elif r < 0.9:
                    body = {"customer": {"phone": _phone(c)}, "channel": "phone", "category": "technical"}
                else:
                    body = {"customer": {"customer_id": f"NOPE{n}"}, "channel": "chat"}
                await queue.put(body)  # blocks when the clients fall behind: bounded in flight
                n += 1
                await asyncio.sleep(max(0.0, start + n * interval - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(queue.join(), 10)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _in_thread(coro_factory: Any) -> threading.Thread:
    thread = threading.Thread(target=lambda: asyncio.run(coro_factory()), daemon=True)
    thread.start()
    return thread


# --- sampling ------------------------------------------------------------------------------------


def _rss_mb(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs) / 2**20
    except psutil.Error:
        return 0.0


async def _stored(settings: Settings) -> int:
    client = connect_redis(settings.redis, timeout_s=None)
    try:
        store = StateStore(client, settings.redis.prefix, _hasher(settings))
        return sum((await store.stored_offsets(settings.kafka.group_id, settings.kafka.events_topic)).values())
    finally:
        await client.aclose()


def _hasher(settings: Settings) -> Any:
    from router.core.identity import IdentityHasher

    return IdentityHasher.from_settings(settings.identity)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


# --- the run -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _processes(settings: Settings, log_dir: Path) -> Iterator[tuple[ManagedProcess, ManagedProcess, str]]:
    env = {**os.environ, **to_env(settings), "ROUTER_API_LOG_LEVEL": "warning"}
    consumer = ManagedProcess(
        "soak-consumer", [sys.executable, "-m", "router", "consume"], log_path=log_dir / "consumer.log", env=env
    )
    api = ManagedProcess("soak-api", [sys.executable, "-m", "router", "serve"], log_path=log_dir / "api.log", env=env)
    base = f"http://{settings.api.host}:{settings.api.port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                    break
            for p in (consumer, api):
                if not p.running:
                    raise RuntimeError(f"{p.name} exited:\n{p.tail(30)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"API not ready within 60 s:\n{api.tail(30)}")
            time.sleep(0.2)
        yield api, consumer, base
    finally:
        api.stop(10)
        consumer.stop(10)


def run_soak(settings: Settings, cfg: SoakConfig, log_dir: Path, *, echo: bool = True) -> SoakReport:
    """Run the soak against ``settings``' broker and Redis; the caller owns those services."""
    settings = msgspec.structs.replace(
        settings,
        auth=msgspec.structs.replace(
            settings.auth, keys=f"soak:helpdesk+telephony+chatbot+ops+admin:{_KEY}", rate_per_s=1e6, burst=1_000_000
        ),
        stream=msgspec.structs.replace(settings.stream, health_port=0),
    )
    asyncio.run(ensure_topics(settings.kafka))
    report = SoakReport(config=asdict(cfg))
    counters = _Counters()
    stop = threading.Event()
    rds = redis.Redis.from_url(settings.redis.url)
    with _processes(settings, log_dir) as (api, consumer, base):
        producer = _in_thread(lambda: _produce(settings, cfg, stop, counters))
        http = _in_thread(lambda: _http_load(base, cfg, stop, counters))
        start = time.monotonic()
        try:
            if echo:
                print(f"{'t_s':>6} {'api_mb':>7} {'cons_mb':>7} {'redis_mb':>8} {'reqs':>7} {'errs':>5} "
                      f"{'5xx':>4} {'p50_ms':>7} {'p99_ms':>7} {'events':>8} {'lag':>6}", flush=True)  # fmt: skip
            while True:
                left = cfg.seconds - (time.monotonic() - start)
                time.sleep(max(0.0, min(cfg.interval_s, left)))
                lat = counters.take_latencies()
                with counters.lock:
                    requests, errors, server_errors, events = (
                        counters.requests, counters.errors, counters.server_errors, counters.events
                    )  # fmt: skip
                sample = Sample(
                    t_s=round(time.monotonic() - start, 1),
                    api_rss_mb=round(_rss_mb(api.pid), 1),
                    consumer_rss_mb=round(_rss_mb(consumer.pid), 1),
                    redis_used_mb=round(int(rds.info("memory")["used_memory"]) / 2**20, 1),
                    requests=requests,
                    errors=errors,
                    server_errors=server_errors,
                    p50_ms=round(_percentile(lat, 0.5), 2),
                    p99_ms=round(_percentile(lat, 0.99), 2),
                    events=events,
                    lag=max(0, events - asyncio.run(_stored(settings))),
                )
                report.samples.append(sample)
                if echo:
                    s = sample
                    print(f"{s.t_s:>6} {s.api_rss_mb:>7} {s.consumer_rss_mb:>7} {s.redis_used_mb:>8} {s.requests:>7} "
                          f"{s.errors:>5} {s.server_errors:>4} {s.p50_ms:>7} {s.p99_ms:>7} {s.events:>8} {s.lag:>6}",
                          flush=True)  # fmt: skip
                for p in (api, consumer):
                    if not p.running:
                        raise RuntimeError(f"{p.name} died during the soak:\n{p.tail(30)}")
                if left <= cfg.interval_s:
                    break
        finally:
            stop.set()
            producer.join(30)
            http.join(30)
        # the consumer drains what was produced (bounded)
        deadline = time.monotonic() + 60
        lag = counters.events - asyncio.run(_stored(settings))
        while lag > 0 and time.monotonic() < deadline:
            time.sleep(0.5)
            lag = counters.events - asyncio.run(_stored(settings))
        report.final_lag = max(0, lag)
    rds.close()
    report.requests, report.errors = counters.requests, counters.errors
    report.server_errors, report.events = counters.server_errors, counters.events
    report.error_examples = counters.examples
    warm = report.samples[max(0, len(report.samples) // 4 - 1)] if report.samples else None
    last = report.samples[-1] if report.samples else None
    if warm and last:
        report.api_growth_mb = round(last.api_rss_mb - warm.api_rss_mb, 1)
        report.consumer_growth_mb = round(last.consumer_rss_mb - warm.consumer_rss_mb, 1)
        report.redis_growth_mb = round(last.redis_used_mb - warm.redis_used_mb, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help="duration in minutes (default 30)")
    length.add_argument("--seconds", type=float, help="duration in seconds")
    parser.add_argument("--events-per-s", type=float, default=SoakConfig.events_per_s)
    parser.add_argument("--requests-per-s", type=float, default=SoakConfig.requests_per_s)
    parser.add_argument("--customers", type=int, default=SoakConfig.customers)
    parser.add_argument(
        "--interval", type=float, default=None, help="seconds between samples (default: 5, or 30 for >= 10 min)"
    )
    parser.add_argument("--max-growth-mb", type=float, default=SoakConfig.max_growth_mb)
    parser.add_argument("--out", type=Path, default=Path("artifacts/soak.json"))
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else 60.0 * (args.minutes if args.minutes is not None else 30.0)
    interval = args.interval or (30.0 if seconds >= 600 else 5.0)
    cfg = SoakConfig(seconds=seconds, events_per_s=args.events_per_s, requests_per_s=args.requests_per_s,
                     customers=args.customers, interval_s=interval, max_growth_mb=args.max_growth_mb)  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="router-soak-"))
    broker = start_broker(log_path=work / "broker.log")
    redis_server = start_redis(dir=work / "redis")
    try:
        base = Settings()
        settings = msgspec.structs.replace(
            base,
            kafka=msgspec.structs.replace(
                base.kafka, bootstrap=broker.bootstrap, partitions=4, session_timeout_ms=3000
            ),
            redis=msgspec.structs.replace(base.redis, url=redis_server.url, prefix="soak"),
            api=msgspec.structs.replace(base.api, port=free_port()),
            # a private Redis for this run: a random identity key (the built-in one is refused outside dev mode)
            identity=msgspec.structs.replace(base.identity, hash_key=secrets.token_urlsafe(32)),
        )
        print(
            f"soak for {seconds:.0f} s: {cfg.events_per_s:g} events/s, {cfg.requests_per_s:g} requests/s; logs in {work}"
        )
        report = run_soak(settings, cfg, work)
    finally:
        redis_server.close()
        broker.stop()
    summary = {k: v for k, v in asdict(report).items() if k != "samples"}
    summary["problems"] = report.problems()
    print(json.dumps(summary, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**summary, "samples": [asdict(s) for s in report.samples]}, indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
