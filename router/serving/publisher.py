"""The API's Kafka producer: admin actions become events on the events topic.

Outcome feedback and erasure requests are not written to Redis by the API: they are
produced to the events topic, keyed by customer, so the consumer applies them exactly once
through the same reducer as every other event (and training sees outcomes as labels).
Acks from all in-sync replicas; idempotence stays off (see :func:`router.ops.kafka.producer_config`).

The API must start and answer decisions without Kafka, so a producer that cannot connect at
start-up is retried on the next publish instead of failing the process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from router.errors import Unavailable
from router.ops.kafka import producer_config
from router.settings import KafkaSettings
from schemas.events import CustomerEvent, event_encoder

__all__ = ["EventPublisher"]

log = logging.getLogger("router.serving.publisher")


class EventPublisher:
    """One producer per worker; :meth:`publish` waits for the broker's acknowledgement."""

    def __init__(self, kafka: KafkaSettings, *, timeout_s: float = 10.0) -> None:
        self.kafka = kafka
        self.timeout_s = timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Connect if possible; a broker that is down now is retried on first use."""
        try:
            await self._ensure()
        except Unavailable as exc:
            log.warning("Kafka producer not started (%s); will retry on first publish", exc.message)

    async def _ensure(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is not None:
                return self._producer
            if not self.kafka.bootstrap:
                raise Unavailable("no Kafka bootstrap servers configured (ROUTER_KAFKA_BOOTSTRAP)")
            producer = AIOKafkaProducer(**producer_config(self.kafka), client_id="router-api")
            try:
                await asyncio.wait_for(producer.start(), self.timeout_s)
            except (KafkaError, OSError, TimeoutError) as exc:
                await producer.stop()
                raise Unavailable(f"Kafka is unreachable ({type(exc).__name__})") from None
            self._producer = producer
            return producer

    async def publish(self, event: CustomerEvent) -> None:
        """Produce ``event`` keyed by its customer and wait until the broker acknowledged it."""
        producer = await self._ensure()
        try:
            await asyncio.wait_for(
                producer.send_and_wait(
                    self.kafka.events_topic, value=event_encoder.encode(event), key=event.customer_id.encode()
                ),
                self.timeout_s,
            )
        except (KafkaError, OSError, TimeoutError) as exc:
            raise Unavailable(f"Kafka did not acknowledge the event ({type(exc).__name__})") from None

    async def publish_many(self, events: Sequence[CustomerEvent]) -> None:
        """Produce ``events`` in order, each keyed by its customer; return once the broker acknowledged all.

        Not atomic: after a failure some may be in Kafka already. Resending them is safe, the
        consumer skips an ``event_id`` it has applied.
        """
        producer = await self._ensure()
        topic = self.kafka.events_topic
        try:
            async with asyncio.timeout(self.timeout_s):
                # send() only queues (in order, batched per partition); the futures resolve on the acks.
                acks = [
                    await producer.send(topic, value=event_encoder.encode(e), key=e.customer_id.encode())
                    for e in events
                ]
                await asyncio.gather(*acks)
        except (KafkaError, OSError, TimeoutError) as exc:
            raise Unavailable(
                f"Kafka did not acknowledge the events ({type(exc).__name__}); sending them again is safe",
                headers={"Retry-After": "5"},
            ) from None

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()
