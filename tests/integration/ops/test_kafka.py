"""Topic creation against the real (Tansu) broker: replication settings reach the topics."""

from __future__ import annotations

import uuid

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from router.ops.kafka import ensure_topics
from router.settings import KafkaSettings


async def _configs(bootstrap: str, topics: list[str]) -> dict[str, dict[str, str]]:
    """Topic -> configs set on it (DescribeConfigs, as ``kafka-configs --describe`` shows them)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
    finally:
        await admin.close()
    found: dict[str, dict[str, str]] = {}
    for response in responses:
        for error_code, _, _, name, entries in response.resources:
            assert error_code == 0, name
            found[name] = {entry[0]: entry[1] for entry in entries}
    return found


def _kafka(broker: str, replication_factor: int) -> KafkaSettings:
    token = f"isr-{replication_factor}-{uuid.uuid4().hex[:8]}"
    return KafkaSettings(bootstrap=broker, events_topic=f"{token}.events", dead_letter_topic=f"{token}.dlq",
                         alerts_topic=f"{token}.alerts", partitions=2, replication_factor=replication_factor)  # fmt: skip


async def test_topics_with_three_replicas_require_two_in_sync(broker: str) -> None:
    # Tansu accepts a replication factor of 3 on one broker (its storage does the durability),
    # so the request the production cluster gets can be checked here.
    kafka = _kafka(broker, 3)
    await ensure_topics(kafka)
    topics = [kafka.events_topic, kafka.dead_letter_topic, kafka.alerts_topic]
    configs = await _configs(broker, topics)
    assert {t: configs[t].get("min.insync.replicas") for t in topics} == dict.fromkeys(topics, "2")


async def test_a_single_replica_keeps_the_broker_default(broker: str) -> None:
    kafka = _kafka(broker, 1)
    await ensure_topics(kafka)
    configs = await _configs(broker, [kafka.events_topic, kafka.dead_letter_topic, kafka.alerts_topic])
    assert all("min.insync.replicas" not in c for c in configs.values()), configs
