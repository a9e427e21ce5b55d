"""Foreign Kafka clients against a broker: each family produces a few messages, then consumes them
back through a consumer group (subscribe, join, sync, fetch, commit).

Run one family in a child process (a hung client cannot hang the test run):

    python -m tests.support.kafka_clients <family> <bootstrap> <topic> <group>

prints one JSON line: ``{"ok": true, "got": [...]}`` or ``{"ok": false, "error": "..."}``.
Families: ``aiokafka``, ``kafka-python``, ``confluent-kafka`` (the wheel's bundled librdkafka),
``kcat`` (the system's, Debian: librdkafka 2.0.2), ``kcat+wheel-librdkafka`` (the same kcat binary
loading the confluent-kafka wheel's librdkafka through ``LD_LIBRARY_PATH``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["FAMILIES", "MESSAGES", "bundled_librdkafka_dir", "kcat_librdkafka", "payloads"]

MESSAGES = 3
SESSION_TIMEOUT_MS = 6000
"""Tansu completes a group join after about half the session timeout; librdkafka's and kafka-python's
default (45 s) would make each group consume take ~23 s."""


def payloads(topic: str) -> list[bytes]:
    return [f"{topic}-{i}".encode() for i in range(MESSAGES)]


def _aiokafka(bootstrap: str, topic: str, group: str) -> list[bytes]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    async def go() -> list[bytes]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for p in payloads(topic):
                await producer.send_and_wait(topic, p, key=b"k")
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                                    session_timeout_ms=SESSION_TIMEOUT_MS)  # fmt: skip
        await consumer.start()
        got: list[bytes] = []
        try:
            while len(got) < MESSAGES:
                batch = await consumer.getmany(timeout_ms=1000)
                got += [m.value for records in batch.values() for m in records if m.value is not None]
            await consumer.commit()
        finally:
            await consumer.stop()
        return got

    return asyncio.run(go())


def _kafka_python(bootstrap: str, topic: str, group: str) -> list[bytes]:
    from kafka import KafkaConsumer, KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        for p in payloads(topic):
            producer.send(topic, p, key=b"k").get(timeout=15)
    finally:
        producer.close(timeout=5)
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                             consumer_timeout_ms=30000, session_timeout_ms=SESSION_TIMEOUT_MS)  # fmt: skip
    got: list[bytes] = []
    try:
        for message in consumer:
            got.append(message.value)
            if len(got) >= MESSAGES:
                break
        consumer.commit()
    finally:
        consumer.close()
    return got


def _confluent_kafka(bootstrap: str, topic: str, group: str) -> list[bytes]:
    from confluent_kafka import Consumer, KafkaException, Producer

    errors: list[str] = []
    failed: list[str] = []
    producer = Producer({"bootstrap.servers": bootstrap, "error_cb": lambda e: errors.append(str(e)),
                         "message.timeout.ms": 15000})  # fmt: skip
    for p in payloads(topic):
        producer.produce(topic, p, key=b"k", on_delivery=lambda err, _m: failed.append(str(err)) if err else None)
    left = producer.flush(20)
    if left or failed:
        raise RuntimeError(f"produce failed: {left} undelivered, errors {failed or errors}")
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                         "session.timeout.ms": SESSION_TIMEOUT_MS, "error_cb": lambda e: errors.append(str(e))})  # fmt: skip
    consumer.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + 45
    try:
        while len(got) < MESSAGES and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            if message.error():
                raise KafkaException(message.error())
            got.append(message.value())
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    if len(got) < MESSAGES:
        raise RuntimeError(f"consumed {len(got)} of {MESSAGES}; client errors: {errors[-3:]}")
    return got


def bundled_librdkafka_dir() -> str:
    """A directory whose ``librdkafka.so.1`` is the confluent-kafka wheel's librdkafka (>= 2.2)."""
    import confluent_kafka

    libs = Path(confluent_kafka.__file__).resolve().parent.parent / "confluent_kafka.libs"
    found = sorted(libs.glob("librdkafka*.so*"))
    if not found:
        raise RuntimeError(f"no librdkafka in {libs}")
    shim = Path(tempfile.gettempdir()) / f"router-librdkafka-{confluent_kafka.libversion()[0]}"
    shim.mkdir(exist_ok=True)
    link = shim / "librdkafka.so.1"
    if not link.exists():
        with contextlib.suppress(FileExistsError):
            link.symlink_to(found[0])
    return str(shim)


def kcat_librdkafka(env: dict[str, str] | None = None) -> tuple[int, int] | None:
    """(major, minor) of the librdkafka the system's kcat loads (None: no kcat)."""
    kcat = shutil.which("kcat")
    if not kcat:
        return None
    out = subprocess.run([kcat, "-V"], capture_output=True, text=True, timeout=10, env=env).stdout
    m = re.search(r"librdkafka (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _kcat(bootstrap: str, topic: str, group: str, env: dict[str, str] | None) -> list[bytes]:
    kcat = shutil.which("kcat")
    if not kcat:
        raise RuntimeError("kcat is not installed (deploy/install-kcat.sh)")
    data = b"".join(p + b"\n" for p in payloads(topic))
    produced = subprocess.run([kcat, "-P", "-b", bootstrap, "-t", topic], input=data, capture_output=True,
                              timeout=30, env=env)  # fmt: skip
    if produced.returncode != 0:
        raise RuntimeError(f"kcat -P exited {produced.returncode}: {_first_error(produced.stderr)}")
    consumed = subprocess.run(
        [kcat, "-b", bootstrap, "-G", group, "-X", "auto.offset.reset=earliest",
         "-X", f"session.timeout.ms={SESSION_TIMEOUT_MS}", "-e", "-f", "%s\n", topic],
        capture_output=True, timeout=45, env=env,
    )  # fmt: skip
    if consumed.returncode != 0:
        raise RuntimeError(f"kcat -G exited {consumed.returncode}: {_first_error(consumed.stderr)}")
    return [line for line in consumed.stdout.split(b"\n") if line]


def _first_error(stderr: bytes) -> str:
    text = stderr.decode(errors="replace")
    lines = [line for line in text.splitlines() if "ERROR" in line or "FAIL" in line]
    return (lines[0] if lines else text.strip()[-300:])[:300]


def _kcat_system(bootstrap: str, topic: str, group: str) -> list[bytes]:
    return _kcat(bootstrap, topic, group, None)


def _kcat_new_librdkafka(bootstrap: str, topic: str, group: str) -> list[bytes]:
    return _kcat(bootstrap, topic, group, {**os.environ, "LD_LIBRARY_PATH": bundled_librdkafka_dir()})


FAMILIES: dict[str, Callable[[str, str, str], list[bytes]]] = {
    "aiokafka": _aiokafka,
    "kafka-python": _kafka_python,
    "confluent-kafka": _confluent_kafka,
    "kcat": _kcat_system,
    "kcat+wheel-librdkafka": _kcat_new_librdkafka,
}


if __name__ == "__main__":
    family, bootstrap, topic, group = sys.argv[1:5]
    try:
        got = FAMILIES[family](bootstrap, topic, group)
        print(json.dumps({"ok": True, "got": [g.decode(errors="replace") for g in got]}))
    except Exception as exc:
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}))
