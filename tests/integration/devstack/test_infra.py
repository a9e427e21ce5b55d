"""The test services themselves: the broker does consumer groups and commits, Redis restarts."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import psutil
import pytest
import redis.asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from router.devstack.infra import (
    BrokerError,
    ManagedProcess,
    RedisServer,
    ensure_redis,
    free_port,
    redis_answers,
    start_broker,
)
from router.ops.kafka import consumer_config, ensure_topics, producer_config, topic_partitions

if TYPE_CHECKING:
    from tests.conftest import SettingsFactory

# Tansu completes a group join only after about one session timeout (5 s first join and
# ~18 s rejoin with aiokafka's 10 s default), so group tests use a short one.
FAST_GROUP = {"session_timeout_ms": 1000, "heartbeat_interval_ms": 200}


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Processes still running; zombies count as gone (init here reaps orphans lazily)."""
    running = []
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                running.append(p)
        except psutil.NoSuchProcess:
            pass
    return running


async def test_committed_offset_survives_consumer_restart(settings: SettingsFactory) -> None:
    s = settings(kafka={"partitions": 1})
    topic = s.kafka.events_topic
    tp = TopicPartition(topic, 0)
    producer = AIOKafkaProducer(**producer_config(s.kafka))
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic, f"m{i}".encode(), key=b"C000001")
    finally:
        await producer.stop()

    first = AIOKafkaConsumer(topic, **consumer_config(s.kafka), **FAST_GROUP)
    await first.start()
    try:
        seen: list[Any] = []
        while len(seen) < 6:
            seen.append(await first.getone())
        assert [m.value for m in seen] == [f"m{i}".encode() for i in range(6)]
        # Commit what was processed, not what was fetched: the next owner resumes at 6.
        await first.commit({tp: seen[-1].offset + 1})
    finally:
        await first.stop()

    second = AIOKafkaConsumer(topic, **consumer_config(s.kafka), **FAST_GROUP)
    await second.start()
    try:
        assert await second.committed(tp) == 6
        resumed = await second.getone()
        assert (resumed.offset, resumed.value) == (6, b"m6")
    finally:
        await second.stop()


async def test_ensure_topics_is_idempotent(settings: SettingsFactory) -> None:
    s = settings(kafka={"partitions": 3})  # the factory already created them once
    await ensure_topics(s.kafka)
    assert await topic_partitions(s.kafka, s.kafka.events_topic) == 3
    assert await topic_partitions(s.kafka, s.kafka.dead_letter_topic) == 1
    assert await topic_partitions(s.kafka, s.kafka.alerts_topic) == 1
    assert await topic_partitions(s.kafka, s.kafka.events_topic + ".missing") == 0


async def test_redis_restarts_on_the_same_port(redis_server: RedisServer, redis_client: redis.asyncio.Redis) -> None:
    assert await redis_client.ping()
    await redis_client.set("infra-test", "1")
    url = redis_server.url

    redis_server.stop()
    assert not redis_answers(url)
    with pytest.raises(redis.ConnectionError):
        await redis_client.ping()

    redis_server.start()
    assert redis_server.url == url
    # The same client reconnects by itself; the data is gone (no persistence).
    assert await redis_client.ping()
    assert await redis_client.get("infra-test") is None


def test_ensure_redis_uses_an_answering_url_else_starts_one(redis_server: RedisServer) -> None:
    assert ensure_redis(redis_server.url) == (redis_server.url, None)
    url, private = ensure_redis(f"redis://127.0.0.1:{free_port()}/2")
    assert private is not None
    try:
        assert url == f"redis://127.0.0.1:{private.port}/2"
        assert redis_answers(url)
    finally:
        private.close()
    assert not private.running


def test_stop_kills_the_whole_process_group() -> None:
    proc = ManagedProcess("sleepers", ["sh", "-c", "sleep 300 & sleep 300 & wait"])
    deadline = time.monotonic() + 5
    while len(psutil.Process(proc.pid).children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    assert len(family) == 3
    started = time.monotonic()
    proc.stop(timeout=2)
    assert time.monotonic() - started < 1.0  # all of them took SIGTERM; no SIGKILL wait
    assert alive(family) == []


def test_stop_kills_what_ignores_sigterm() -> None:
    # An ignored signal stays ignored across exec, so the grandchild ignores TERM too.
    proc = ManagedProcess("stubborn", ["sh", "-c", "trap '' TERM; sleep 300 & wait"])
    time.sleep(0.2)
    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    started = time.monotonic()
    code = proc.stop(timeout=0.5)
    assert time.monotonic() - started >= 0.5
    assert code == -9
    assert alive(family) == []


def test_start_broker_fails_clearly() -> None:
    with pytest.raises(BrokerError, match="not an executable"):
        start_broker(binary="/nonexistent/tansu")
    with pytest.raises(BrokerError, match="exited with code 1"):
        start_broker(binary="/bin/false")
