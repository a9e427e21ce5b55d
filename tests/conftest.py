"""Real services for the tests: an embedded Kafka-protocol broker and a private Redis.

Both are started once per test session on free ports and stopped at its end (their
processes also die with the test run if it is killed). Each call of the ``settings``
factory gets its own topics, consumer group and Redis key prefix, so tests never see
each other's data. A service that cannot start fails the tests loudly; nothing is
skipped and nothing is mocked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import os
import re
import secrets
import subprocess
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

import msgspec
import pytest
import redis.asyncio

from router.devstack.infra import (
    Broker,
    RedisServer,
    RedisServerError,
    free_port,
    redis_answers,
    start_broker,
    start_redis,
)
from router.ops.kafka import ensure_topics
from router.settings import IdentitySettings, Settings
from tests.support.rt_server import RTServer, rt_installed

T = TypeVar("T")

_SESSION = uuid.uuid4().hex[:6]
TEST_IDENTITY = IdentitySettings(hash_key=secrets.token_urlsafe(32))
"""The identity hash key of every test's settings: a real (random) one, as outside dev mode."""
_ROOT = Path(__file__).resolve().parent.parent
_redis_servers: list[RedisServer] = []


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a private loop in a worker thread.

    Works from sync tests and from inside a running event loop (async tests) alike.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


# --- Services ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The started broker itself (for tests that need its process or log)."""
    log_path = tmp_path_factory.mktemp("broker") / "broker.log"
    broker = start_broker(log_path=log_path)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def broker(kafka_broker: Broker) -> str:
    """Bootstrap address (``127.0.0.1:PORT``) of an embedded Tansu broker for this session."""
    return kafka_broker.bootstrap


class _ExternalRedis:
    """A Redis this session does not own: usable, but never stopped (fault tests fail)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.running = True

    def stop(self, timeout: float = 5.0) -> None:
        raise RuntimeError("this session uses a shared Redis (no redis-server binary): cannot stop it")

    def start(self, timeout: float = 10.0) -> _ExternalRedis:
        return self


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer | _ExternalRedis]:
    """A private redis-server on a free port: ``url``, ``stop()``, ``start()`` (same port).

    Falls back to ``REDIS_URL`` / ``redis://127.0.0.1:6379`` only if no redis-server
    binary exists at all; the unique key prefixes of ``settings`` keep that safe.
    """
    try:
        server = start_redis(dir=tmp_path_factory.mktemp("redis"))
    except RedisServerError as exc:
        for url in (os.environ.get("REDIS_URL"), "redis://127.0.0.1:6379/0"):
            if url and redis_answers(url):
                yield _ExternalRedis(url)
                return
        raise RuntimeError(f"no private redis-server and no shared Redis answers: {exc}") from exc
    _redis_servers.append(server)
    try:
        yield server
    finally:
        _redis_servers.remove(server)
        server.close()


@pytest.fixture(autouse=True)
def _redis_back_up() -> Iterator[None]:
    """Restart the session's Redis if a fault test stopped it and did not bring it back."""
    yield
    for server in _redis_servers:
        if not server.running:
            server.start()


@pytest.fixture(scope="session")
def rt_server() -> Iterator[RTServer]:
    """A private Request Tracker 5 with router's queues and custom fields (deploy/integrations/rt-initialdata.pl).

    Debian's packages are installed by the project's own ``deploy/install-rt.sh`` when missing
    (about a minute the first time); the instance has its own SQLite database and port.
    """
    if not rt_installed():
        subprocess.run(["bash", str(_ROOT / "deploy" / "install-rt.sh")], check=True, timeout=900)
    server = RTServer.start(initialdata=[_ROOT / "deploy" / "integrations" / "rt-initialdata.pl"])
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def rt_token(rt_server: RTServer) -> str:
    """An RT auth token of root, as an RT administrator creates one for router."""
    return rt_server.create_token()


# --- Settings and clients ----------------------------------------------------------------


class SettingsFactory(Protocol):
    def __call__(self, **sections: Mapping[str, Any] | msgspec.Struct) -> Settings:
        """Settings on the session's services; ``kafka={"partitions": 1}`` overrides fields."""
        ...


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")[:60] or "test"


@pytest.fixture
def settings(
    request: pytest.FixtureRequest, broker: str, redis_server: RedisServer | _ExternalRedis
) -> SettingsFactory:
    """Factory of :class:`Settings` pointing at the session broker and Redis.

    Every call gets unique topic names, consumer group and Redis key prefix, and its
    topics are created before it returns. Keyword arguments override fields per section,
    as a mapping (``stream={"batch_max": 10}``) or a whole struct.
    """
    counter = itertools.count()

    def make(**sections: Mapping[str, Any] | msgspec.Struct) -> Settings:
        token = f"{_slug(request.node.name)}-{_SESSION}-{next(counter)}-{uuid.uuid4().hex[:6]}"
        base = Settings()
        result = msgspec.structs.replace(
            base,
            kafka=msgspec.structs.replace(
                base.kafka,
                bootstrap=broker,
                events_topic=f"{token}.events",
                dead_letter_topic=f"{token}.dlq",
                alerts_topic=f"{token}.alerts",
                group_id=f"{token}.group",
                # Tansu completes a group join only after about one session timeout; the
                # 10 s default would add ~5 s to every consumer start.
                session_timeout_ms=3000,
            ),
            redis=msgspec.structs.replace(base.redis, url=redis_server.url, prefix=f"test:{token}"),
            api=msgspec.structs.replace(base.api, port=free_port()),
            # 0 = no consumer health server, so consumers in tests never fight over a port.
            stream=msgspec.structs.replace(base.stream, health_port=0),
            identity=TEST_IDENTITY,
            # No next-best-action control group: tests expect the policy's actions (tests of the control
            # group set a share of their own).
            model=msgspec.structs.replace(base.model, nba_control_share=0.0),
        )
        for section, value in sections.items():
            if section not in Settings.__struct_fields__:
                raise TypeError(f"unknown settings section {section!r}")
            current = getattr(result, section)
            replaced = value if isinstance(value, msgspec.Struct) else msgspec.structs.replace(current, **value)
            result = msgspec.structs.replace(result, **{section: replaced})
        run_sync(ensure_topics(result.kafka))
        return result

    return make


@pytest.fixture
async def redis_client(redis_server: RedisServer | _ExternalRedis) -> AsyncIterator[redis.asyncio.Redis]:
    """An async Redis client on the session's Redis; closed after the test."""
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()
