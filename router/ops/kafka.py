"""Kafka topic administration and the client configuration every process shares."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError, for_code

from router.settings import KafkaSettings

__all__ = [
    "MIN_INSYNC_REPLICAS",
    "consumer_config",
    "ensure_topics",
    "producer_config",
    "topic_configs",
    "topic_partitions",
]

log = logging.getLogger(__name__)


def producer_config(kafka: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for ``AIOKafkaProducer``: acks from all in-sync replicas, small batches.

    Idempotence stays off: the embedded Tansu broker does not support it, and the
    consumer's fold is idempotent per event id anyway.
    """
    return {
        "bootstrap_servers": kafka.bootstrap,
        "acks": "all",
        "linger_ms": 5,
        "enable_idempotence": False,
    }


def consumer_config(kafka: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments for ``AIOKafkaConsumer``: explicit group, manual commits, from the start.

    Auto-commit is off so committed offsets never run ahead of the state written to Redis.
    """
    return {
        "bootstrap_servers": kafka.bootstrap,
        "group_id": kafka.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
    }


MIN_INSYNC_REPLICAS = 2
"""``min.insync.replicas`` of topics created with a replication factor of 3 or more: with the
producers' ``acks=all`` a write is acknowledged only once two replicas have it, so losing one
broker loses no acknowledged event (and one broker down still accepts writes)."""


def topic_configs(kafka: KafkaSettings) -> dict[str, str]:
    """Configs every topic is created with: ``min.insync.replicas`` once there are replicas to count.

    With fewer than 3 replicas it stays the broker's default (1): 2 of 2 would stop every write
    while one broker restarts, and a single broker cannot have 2 in-sync replicas at all.
    """
    if kafka.replication_factor >= 3:
        return {"min.insync.replicas": str(MIN_INSYNC_REPLICAS)}
    return {}


def _wanted_topics(kafka: KafkaSettings) -> list[NewTopic]:
    rf = kafka.replication_factor
    configs = topic_configs(kafka)
    return [
        NewTopic(kafka.events_topic, num_partitions=kafka.partitions, replication_factor=rf, topic_configs=configs),
        # Dead letters and alerts are low volume; one partition keeps them in order.
        NewTopic(kafka.dead_letter_topic, num_partitions=1, replication_factor=rf, topic_configs=configs),
        NewTopic(kafka.alerts_topic, num_partitions=1, replication_factor=rf, topic_configs=configs),
    ]


async def _start_admin(kafka: KafkaSettings, deadline: float) -> AIOKafkaAdminClient:
    # A broker that was started a moment ago may accept connections before it answers
    # metadata; retry until the deadline instead of failing `router dev` on a race.
    delay = 0.1
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap, client_id="router-admin")
        try:
            await admin.start()
            return admin
        except KafkaError as exc:
            await admin.close()
            if time.monotonic() + delay > deadline:
                raise KafkaConnectionError(f"Kafka at {kafka.bootstrap} did not answer: {exc}") from exc
            log.info("waiting for Kafka at %s: %s", kafka.bootstrap, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


async def ensure_topics(kafka: KafkaSettings, *, timeout_s: float = 30.0) -> None:
    """Create the events, dead-letter and alerts topics if missing; idempotent.

    New topics get :func:`topic_configs` (``min.insync.replicas=2`` at a replication factor of 3
    or more). Existing topics are left as they are (neither partition counts nor configs change).
    Retries while the broker starts up, for at most ``timeout_s`` seconds.
    """
    deadline = time.monotonic() + timeout_s
    admin = await _start_admin(kafka, deadline)
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in _wanted_topics(kafka) if t.name not in existing]
        if not missing:
            return
        response = await admin.create_topics(missing)
        for topic_error in response.topic_errors:
            name, code = topic_error[0], topic_error[1]
            if code == 0:
                log.info("created topic %s", name)
                continue
            error = for_code(code)
            # Another process (a second consumer, `router topics`) may have won the race.
            if error is TopicAlreadyExistsError:
                continue
            message = topic_error[2] if len(topic_error) > 2 else None
            raise error(f"creating topic {name!r}: {message or error.description}")
    finally:
        await admin.close()


async def topic_partitions(kafka: KafkaSettings, topic: str) -> int:
    """Number of partitions of ``topic`` (0 if it does not exist)."""
    admin = await _start_admin(kafka, time.monotonic() + 10.0)
    try:
        # Tansu auto-creates a topic that a metadata request names, so look before asking.
        if topic not in await admin.list_topics():
            return 0
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    for entry in described:
        if entry["topic"] == topic and entry["error_code"] == 0:
            return len(entry["partitions"])
    return 0
