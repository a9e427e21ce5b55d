"""Which Kafka client families work with `router dev`'s embedded broker (Tansu).

Each family produces three messages to a topic of its own and consumes them back through a
consumer group, in a child process under a timeout. What the README says rests on this:

* aiokafka, kafka-python and librdkafka >= 2.2 (the confluent-kafka wheel bundles 2.16) work;
* Debian bookworm's kcat, linked to librdkafka 2.0.2, fails at the very first request with
  ``ApiVersionRequest failed: Local: Read underflow``: librdkafka < 2.2.0 skips one byte too few
  per tagged field (fixed in 2.2.0, librdkafka PR #4278) and Tansu's ApiVersions v3 answer
  carries four tagged fields (valid, but more than Apache Kafka sends);
* the same kcat binary works once it loads a newer librdkafka (``LD_LIBRARY_PATH``).

An outcome that changes (say, Debian ships a fixed librdkafka) fails the test: update the README.
kcat comes from the project's script (``deploy/install-kcat.sh``) when it is missing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from router.ops.kafka import ensure_topics
from router.settings import KafkaSettings
from tests.conftest import run_sync
from tests.support.kafka_clients import FAMILIES, kcat_librdkafka, payloads

ROOT = Path(__file__).resolve().parents[3]
TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def kcat() -> None:
    subprocess.run(["bash", str(ROOT / "deploy" / "install-kcat.sh")], check=True, timeout=600)


def _expected_to_work(family: str) -> bool:
    if family == "kcat":  # works only once the system's librdkafka has the fix
        version = kcat_librdkafka()
        assert version is not None, "deploy/install-kcat.sh did not provide kcat"
        return version >= (2, 2)
    return True


def _run(family: str, bootstrap: str) -> dict[str, object]:
    topic = f"clients-{family.replace('+', '-')}-{uuid.uuid4().hex[:8]}"
    run_sync(ensure_topics(KafkaSettings(bootstrap=bootstrap, events_topic=topic, dead_letter_topic=f"{topic}.dlq",
                                         alerts_topic=f"{topic}.alerts", partitions=1)))  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.kafka_clients", family, bootstrap, topic, f"{topic}.group"],
        capture_output=True, text=True, timeout=TIMEOUT_S, cwd=ROOT,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"{family} worker exited {done.returncode}: {done.stderr[-1000:]}"
    result: dict[str, object] = json.loads(lines[-1])
    result["want"] = [p.decode() for p in payloads(topic)]
    return result


@pytest.mark.parametrize("family", list(FAMILIES))
def test_client_family_against_the_embedded_broker(family: str, broker: str, request: pytest.FixtureRequest) -> None:
    if family.startswith("kcat"):
        request.getfixturevalue("kcat")
    result = _run(family, broker)
    if _expected_to_work(family):
        assert result["ok"], f"{family} no longer works with the embedded broker: {result.get('error')}"
        assert sorted(result["got"]) == result["want"], result  # type: ignore[arg-type]
    else:
        assert not result["ok"], f"{family} works now: update the README's paragraph on Kafka clients"
        # and it fails the documented way, at the handshake
        assert "ApiVersionRequest failed" in str(result["error"]) and "Read underflow" in str(result["error"]), result
