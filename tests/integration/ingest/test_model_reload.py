"""A model (or policy) reload reaches the state consumer, not just the API worker that got it.

Real processes on a real broker and Redis: ``router consume`` and two ``router serve`` workers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import msgspec
import pytest

from router.churn.model import ChurnModel
from router.core.features import features
from router.core.scoring import assess
from router.devstack.infra import ManagedProcess, free_port
from router.policy import load_policy
from router.settings import PolicySettings, Settings, to_env
from router.state.records import Announcement, CustomerRecord
from schemas.events import CustomerEvent, TicketOpened, Usage
from tests.conftest import SettingsFactory, run_sync
from tests.support.api_support import NOW, api_settings, auth, population
from tests.support.helpers import produce, state_store
from tests.support.models import candidate_model, copy_committed


@contextlib.contextmanager
def _process(name: str, argv: list[str], s: Settings, log: Path) -> Iterator[ManagedProcess]:
    proc = ManagedProcess(name, [sys.executable, "-m", "router", *argv], log_path=log, env={**os.environ, **to_env(s)})
    try:
        yield proc
    finally:
        proc.stop(10)


@contextlib.contextmanager
def _api(s: Settings, log: Path) -> Iterator[httpx.Client]:
    with _process("api", ["serve"], s, log) as proc:
        client = httpx.Client(base_url=f"http://{s.api.host}:{s.api.port}", timeout=5)
        try:
            _until(lambda: _ok(client), f"API did not become ready:\n{proc.tail(30)}")
            yield client
        finally:
            client.close()


def _ok(client: httpx.Client) -> bool:
    with contextlib.suppress(httpx.TransportError):
        return client.get("/health/ready").status_code == 200
    return False


def _until(condition: Callable[[], bool], message: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


def _applied(s: Settings) -> int:
    async def read() -> int:
        async with state_store(s) as store:
            return sum((await store.stored_offsets(s.kafka.group_id, s.kafka.events_topic)).values())

    return run_sync(read())


def _record(s: Settings, customer_id: str) -> CustomerRecord:
    async def read() -> CustomerRecord:
        async with state_store(s) as store:
            return await store.read_customer(store.customer_key(customer_id))

    return run_sync(read())


def _feed(s: Settings, events: list[CustomerEvent], total: int) -> None:
    run_sync(produce(s, events))
    _until(lambda: _applied(s) >= total, "the consumer did not apply the events")


def _usage(cid: str, n: int) -> Usage:
    return Usage(event_id=f"{cid}-late-{n}", customer_id=cid, occurred_at=NOW + timedelta(minutes=n), logins=1)


def test_an_admin_reload_reaches_every_api_worker_and_the_consumer(settings: SettingsFactory, tmp_path: Path) -> None:
    a = api_settings(settings, model={"follow_s": 0.2})
    b = msgspec.structs.replace(a, api=msgspec.structs.replace(a.api, port=free_port()))
    events = population(10)
    run_sync(produce(a, events))
    v1 = ChurnModel.load(a.model.path)
    v2_path = candidate_model(tmp_path / "v2")
    v2 = ChurnModel.load(v2_path)
    with (
        _process("consume", ["consume"], a, tmp_path / "consumer.log") as consumer,
        _api(a, tmp_path / "api-a.log") as api_a,
        _api(b, tmp_path / "api-b.log") as api_b,
    ):
        _until(lambda: _applied(a) >= len(events), f"consumer did not catch up:\n{consumer.tail(20)}")
        assert _record(a, "S001").scores.model_id == v1.model_id  # type: ignore[union-attr]

        r = api_a.post("/v1/admin/model/reload", json={"path": str(v2_path)}, headers=auth("admin"))
        assert r.status_code == 200 and r.json()["version"] == "churn-v2", r.text
        # The other worker follows the announcement; it never got a request.
        _until(lambda: api_b.get("/health/ready").json()["checks"]["model"] == "loaded churn-v2", "B kept churn-v1", 10)
        # So does the consumer: what it writes next is scored by churn-v2 (once it followed: events
        # reach it within milliseconds, the announcement within follow_s).
        _until(
            lambda: "replaced by churn-v2" in consumer.tail(100), f"consumer kept churn-v1:\n{consumer.tail(20)}", 10
        )
        _feed(a, [_usage("S001", 1)], len(events) + 1)
        rec = _record(a, "S001")
        assert rec.scores is not None and rec.snapshot is not None
        assert rec.scores.model_id == v2.model_id != v1.model_id
        assert rec.scores.churn == v2.predict_one(features(rec.snapshot, rec.scores.as_of))
        d = api_b.post("/v1/classify", json={"customer": {"customer_id": "S001"}}, headers=auth("helpdesk")).json()
        assert d["model_version"] == "churn-v2"

        # A policy reload brings the consumer the new cost-to-serve prices.
        dear = tmp_path / "dear.toml"
        dear.write_text(
            Path(PolicySettings().path)
            .read_text()
            .replace("phone = 9.0", "phone = 90.0")
            .replace('version = "2026-11-25.1"', 'version = "2026-11-25.2"')
        )
        r = api_a.post("/v1/admin/policy/reload", json={"path": str(dear)}, headers=auth("admin"))
        assert r.status_code == 200 and r.json()["version"] == "2026-11-25.2", r.text
        time.sleep(1.0)  # > follow_s: the consumer has read the announcement
        ticket = TicketOpened(event_id="S001-tk", customer_id="S001", occurred_at=NOW + timedelta(minutes=2),
                              ticket_id="tk", channel="phone")  # fmt: skip
        _feed(a, [ticket], len(events) + 2)
    rec = _record(a, "S001")
    assert rec.scores is not None and rec.snapshot is not None
    row = features(rec.snapshot, rec.scores.as_of)
    new, old = (
        assess(rec.snapshot, row, rec.scores.churn, a.model, load_policy(p).service_prices).clv.support_cost_per_year
        for p in (dear, PolicySettings().path)
    )
    assert rec.scores.support_cost == pytest.approx(new) and new == pytest.approx(10 * old)


def test_the_consumer_reloads_on_sighup_and_refuses_a_file_that_is_not_the_announced_one(
    settings: SettingsFactory, tmp_path: Path
) -> None:
    configured = copy_committed(tmp_path / "live")
    s = settings(model={"path": str(configured), "follow_s": 0.2})
    events = population(3)
    run_sync(produce(s, events))
    v1 = ChurnModel.load(configured)
    v2_path = candidate_model(tmp_path / "v2")
    v2 = ChurnModel.load(v2_path)
    with _process("consume", ["consume"], s, tmp_path / "consumer.log") as consumer:
        _until(lambda: _applied(s) >= len(events), f"consumer did not catch up:\n{consumer.tail(20)}")

        # An announcement whose file is not what it claims: the consumer keeps its model and says why.
        async def announce() -> None:
            async with state_store(s) as store:
                await store.announce("model", Announcement(path=str(v2_path), sha256="0" * 64, version="churn-v2",
                                                           at=time.time(), by="test"))  # fmt: skip

        run_sync(announce())
        _until(lambda: "not the announced file" in consumer.log_path.read_text(), "refusal not logged", 10)
        _feed(s, [_usage("S001", 1)], len(events) + 1)
        assert _record(s, "S001").scores.model_id == v1.model_id  # type: ignore[union-attr]

        # Operations deploy the new files under the configured name and send SIGHUP.
        shutil.copy(v2_path, configured)
        shutil.copy(v2_path.with_suffix(".json"), configured.with_suffix(".json"))
        assert consumer.pid is not None
        os.kill(consumer.pid, signal.SIGHUP)
        _until(lambda: "replaced by churn-v2" in consumer.log_path.read_text(), f"no reload:\n{consumer.tail(20)}", 10)
        _feed(s, [_usage("S001", 2)], len(events) + 2)
        assert consumer.running
    assert _record(s, "S001").scores.model_id == v2.model_id  # type: ignore[union-attr]
