"""What an on-call person sees of ``router connect`` while a helpdesk is down, read from its /metrics.

``router connect`` runs as its own process against real Redis and the Zendesk stand-in
(``tests/support/helpdesks.py``); write-backs are queued as the inbound side queues them. The
stand-in is made to answer 503 with ``Retry-After``: the connector pauses, and while it is paused
the outbox gauges keep moving (depth, the age of the oldest write-back), the circuit gauge reads 1,
and the failed attempt is counted by cause. When the helpdesk answers again, all of it goes back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.connectors.base import WriteBack
from router.connectors.service import encode_job
from router.devstack.infra import free_port
from router.settings import Settings
from router.state.keys import Keys
from router.state.outbox import GROUP
from router.state.store import connect_redis
from schemas.api import Action
from tests.conftest import SettingsFactory, run_sync
from tests.support.api_support import api_settings
from tests.support.connectors import ConnectProcess, connect_process, enqueue, landed, outbox_status, wait_for
from tests.support.helpdesks import FakeZendesk

ZD_EMAIL, ZD_TOKEN = "agent@example.com", "zendesk-api-token"
PAUSE_S = 8


def _job(ticket: int, n: int, decided_at: float | None = None) -> WriteBack:
    return WriteBack(
        connector="zendesk", ticket=str(ticket), decision_id=f"d-metrics-{n}", tier="VIP", queue="vip",
        role="senior_advisor", priority="high", due_at=datetime.now(UTC) + timedelta(hours=2),
        clock="24x7, always", actions=(Action("retention_offer", "Offer the retention discount"),),
        reasons=("High value customer",), customer_known=True, degraded=False,
        decided_at=time.time() if decided_at is None else decided_at,
    )  # fmt: skip


class _Metrics(dict[str, float]):
    """The process's exposition: ``name{labels}`` (labels in any order) -> value."""

    def __getitem__(self, key: str) -> float:
        name, _, labels = key.partition("{")
        return super().__getitem__(name + "{" + ",".join(sorted(labels.rstrip("}").split(","))) + "}")


def _metrics(port: int) -> _Metrics:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    found = _Metrics()
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" in line:
            series, value = line.rsplit(" ", 1)
            name, _, labels = series.partition("{")
            dict.__setitem__(found, name + "{" + ",".join(sorted(labels.rstrip("}").split(","))) + "}", float(value))
    return found


Stack = tuple[Settings, FakeZendesk, ConnectProcess, int]


@pytest.fixture
def stack(settings: SettingsFactory, tmp_path: Path) -> Iterator[Stack]:
    zd = FakeZendesk(ZD_EMAIL, ZD_TOKEN).start()
    config = tmp_path / "connectors.toml"
    config.write_text(f'[zendesk]\nurl = "{zd.url}"\ndefault_group = 1\n')
    port = free_port()
    s = api_settings(
        settings,
        connectors={"config_path": str(config), "zendesk_email": ZD_EMAIL, "zendesk_token": ZD_TOKEN,
                    "backoff_base_s": 0.2, "backoff_max_s": 1.0, "health_port": port},
    )  # fmt: skip
    try:
        with connect_process(s, tmp_path / "connect.log") as proc:
            wait_for("router connect ready", lambda: _ready(port) or not proc.alive(), 60, every=0.2)
            assert proc.alive(), proc.log.read_text()[-3000:]
            yield s, zd, proc, port
    finally:
        zd.close()


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.timeout(120)
def test_outbox_age_circuit_and_failure_causes_move_while_the_helpdesk_is_down(stack: Stack) -> None:
    s, zd, _, port = stack
    c = 'connector="zendesk"'
    wait_for("the first outbox gauges", lambda: f"router_connector_outbox_oldest_seconds{{{c}}}" in _metrics(port), 5)
    m = _metrics(port)
    assert m[f"router_connector_circuit_open{{{c}}}"] == 0
    assert m[f"router_connector_outbox_oldest_seconds{{{c}}}"] == 0
    assert m[f'router_connector_writeback_failures_total{{{c},cause="unavailable"}}'] == 0

    # A ticket Zendesk does not know: refused (404), dead-lettered at once, counted as "refused".
    assert enqueue(s, "zendesk", "404", encode_job(_job(404, 0)))
    wait_for(
        "a refused write-back",
        lambda: _metrics(port)[f'router_connector_writeback_failures_total{{{c},cause="refused"}}'] == 1,
        15,
    )
    wait_for("the dead-letter gauge", lambda: _metrics(port)[f"router_connector_dead_letters{{{c}}}"] == 1, 10)
    assert _metrics(port)[f"router_connector_circuit_open{{{c}}}"] == 0  # Zendesk answered: no outage

    # Zendesk in maintenance: 503 with Retry-After. The connector pauses for PAUSE_S.
    for number in (1, 2):
        zd.add_ticket(number)
    zd.fault(503, times=10_000, retry_after=str(PAUSE_S))
    down_at = time.time()
    assert enqueue(s, "zendesk", "1", encode_job(_job(1, 1, decided_at=down_at)))
    wait_for("the circuit to open", lambda: _metrics(port)[f"router_connector_circuit_open{{{c}}}"] == 1, 15)
    m = _metrics(port)
    assert m[f'router_connector_writeback_failures_total{{{c},cause="unavailable"}}'] == 1
    assert m[f'router_connector_writebacks_total{{{c},result="retried"}}'] == 1

    # While paused, nothing is tried, and the gauges still move: a new write-back shows in the depth,
    # and the oldest one's age grows with the clock.
    paused_at = time.monotonic()
    tried = len(zd.requests())
    assert enqueue(s, "zendesk", "2", encode_job(_job(2, 2)))
    wait_for(
        "the depth to count the new write-back", lambda: _metrics(port)[f"router_connector_outbox_depth{{{c}}}"] == 2, 5
    )
    first = _metrics(port)[f"router_connector_outbox_oldest_seconds{{{c}}}"]
    time.sleep(3)
    m = _metrics(port)
    assert m[f"router_connector_outbox_oldest_seconds{{{c}}}"] >= first + 2, (first, m)
    assert m[f"router_connector_outbox_oldest_seconds{{{c}}}"] >= time.time() - down_at - 2.5
    assert m[f"router_connector_circuit_open{{{c}}}"] == 1
    assert m[f"router_connector_dead_letters{{{c}}}"] == 1
    assert time.monotonic() - paused_at < PAUSE_S - 1 and len(zd.requests()) == tried, (
        "the gauges were read during the pause"
    )

    # Zendesk is back: both land, the circuit closes, the outbox is empty again.
    zd.heal()
    wait_for("both write-backs", lambda: {x.ticket for x in landed(s, "zendesk")} >= {"1", "2"}, PAUSE_S + 15)
    wait_for(
        "the gauges to settle",
        lambda: (
            (m := _metrics(port))[f"router_connector_circuit_open{{{c}}}"] == 0
            and m[f"router_connector_outbox_depth{{{c}}}"] == 0
            and m[f"router_connector_outbox_oldest_seconds{{{c}}}"] == 0
        ),
        10,
    )
    m = _metrics(port)
    assert m[f'router_connector_writeback_failures_total{{{c},cause="unavailable"}}'] == 1  # one probe per pause
    assert m[f'router_connector_writebacks_total{{{c},result="landed"}}'] == 2
    assert zd.problems == []


def _held_by(s: Settings, pid: int) -> int:
    """Write-backs delivered to the ``router connect`` process ``pid`` and not settled (XPENDING)."""

    async def ask() -> int:
        client = connect_redis(s.redis, timeout_s=5.0)
        try:
            summary: Any = await client.xpending(Keys(s.redis.prefix).outbox("zendesk"), GROUP)
        finally:
            await client.aclose()
        consumers = summary.get("consumers") or []
        return sum(int(c["pending"]) for c in consumers if f"-{pid}-" in _str(c["name"]))

    return run_sync(ask())


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.mark.timeout(120)
def test_two_replicas_share_the_outbox_and_one_killed_mid_write_loses_and_doubles_nothing(
    settings: SettingsFactory, tmp_path: Path
) -> None:
    """What makes ``replicas: 2`` in deploy/k8s/connect.yaml safe, shown on two real processes.

    Zendesk is made slow to answer its updates (after applying them), so when one process is killed
    it holds write-backs whose note is already on the ticket: the other takes them over, finds the
    note and writes nothing; the ones it held before writing are written by the other, once.
    """
    zd = FakeZendesk(ZD_EMAIL, ZD_TOKEN).start()
    tickets = range(1, 41)
    for number in tickets:
        zd.add_ticket(number)
    config = tmp_path / "connectors.toml"
    config.write_text(f'[zendesk]\nurl = "{zd.url}"\ndefault_group = 1\n')
    concurrency = 4
    s = api_settings(
        settings,
        connectors={"config_path": str(config), "zendesk_email": ZD_EMAIL, "zendesk_token": ZD_TOKEN,
                    "reclaim_after_s": 2.0, "concurrency": concurrency, "health_port": 0},
    )  # fmt: skip
    first = ConnectProcess(s, tmp_path / "connect-a.log").start()
    second = ConnectProcess(s, tmp_path / "connect-b.log").start()

    def written_not_landed() -> set[int]:
        done = {x.ticket for x in landed(s, "zendesk")}
        return {n for n in tickets if zd.notes[n] and str(n) not in done}

    try:
        for n in tickets:
            assert enqueue(s, "zendesk", str(n), encode_job(_job(n, n)))
        wait_for("some write-backs landed", lambda: len(landed(s, "zendesk")) >= 8, 30)
        zd.delay_only, zd.delay_s = "PUT", 3.0
        # More applied-but-unanswered updates than one process holds: some are the first process's.
        wait_for("updates applied and not answered", lambda: len(written_not_landed()) > concurrency, 15, every=0.01)
        assert first.proc is not None and _held_by(s, first.proc.pid) > 0
        first.kill()  # SIGKILL: whatever it held stays delivered and unsettled, for the other to take over
        zd.delay_s = 0.0
        wait_for("every write-back", lambda: {x.ticket for x in landed(s, "zendesk")} >= {str(n) for n in tickets}, 60)
        assert second.alive(), second.log.read_text()[-2000:]
    finally:
        first.stop()
        second.stop()
        zd.close()
    notes = {n: len(zd.notes[n]) for n in tickets}
    assert set(notes.values()) == {1}, notes  # each decision's note once, whoever wrote it
    taken_over = [x.ticket for x in landed(s, "zendesk") if not x.written]
    assert taken_over, "no write-back of the killed process was found already written"
    status = outbox_status(s, "zendesk")
    assert status.queued == status.in_flight == status.delayed == status.dead_letters == 0, status
    assert zd.problems == []
