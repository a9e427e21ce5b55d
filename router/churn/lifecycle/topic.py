"""The events topic read from its beginning into a JSON Lines archive (``router retrain --from-topic``).

Partition by partition, until a fetch past the end offset seen at the start returns nothing (the
embedded Tansu broker reports an end offset short of its last batch's records, so that offset is a
floor, not the stop). A customer's events share a partition (the topic is keyed by customer), so
each customer's events keep their order in the archive, which is all the training replay needs. Records that do not decode as events (the ones
the consumer dead-letters) are counted and left out.
"""

from __future__ import annotations

import msgspec

from router.settings import KafkaSettings
from schemas.events import event_decoder

__all__ = ["archive_topic"]


async def archive_topic(kafka: KafkaSettings, out: str, *, progress: bool = False) -> tuple[int, int]:
    """Write every event of ``kafka.events_topic`` to ``out``; return (events written, records skipped)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")  # fmt: skip
    await consumer.start()
    written = skipped = 0
    try:
        partitions = sorted(consumer.partitions_for_topic(kafka.events_topic) or set())
        if not partitions:
            await consumer.force_metadata_update()
            partitions = sorted(consumer.partitions_for_topic(kafka.events_topic) or set())
        if not partitions:
            raise ValueError(f"topic {kafka.events_topic} does not exist on {kafka.bootstrap}")
        tps = [TopicPartition(kafka.events_topic, p) for p in partitions]
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        total = sum(ends[tp] - starts[tp] for tp in tps)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=total, desc="reading the topic", unit=" records", unit_scale=True, disable=None)
        with open(out, "wb") as fh:  # noqa: ASYNC230 - a one-shot command: nothing else runs on this loop
            for tp in tps:
                if ends[tp] <= starts[tp]:
                    continue
                consumer.assign([tp])
                consumer.seek(tp, starts[tp])
                while True:
                    batches = await consumer.getmany(tp, timeout_ms=500, max_records=5000)
                    records = batches.get(tp, [])
                    if not records:
                        if await consumer.position(tp) >= ends[tp]:
                            break  # drained (a fetch that returns nothing once the start's end offset is passed)
                        continue
                    for record in records:
                        try:
                            event_decoder.decode(record.value or b"")
                        except (msgspec.ValidationError, msgspec.DecodeError):
                            skipped += 1
                        else:
                            fh.write((record.value or b"").rstrip(b"\n") + b"\n")
                            written += 1
                    if bar is not None:
                        bar.update(len(records))
        if bar is not None:
            bar.close()
    finally:
        await consumer.stop()
    return written, skipped
