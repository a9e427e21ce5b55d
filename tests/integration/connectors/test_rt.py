"""Request Tracker 5, live: tickets created through RT's REST2 API are routed and written back.

A private RT (``rt_server``, Debian's request-tracker5, installed by ``deploy/install-rt.sh``) with
router's queues and custom fields; a population in Redis built by the real consumer; ``router
connect`` as its own process following RT. The test talks to RT the way a helpdesk user's tools
do, through REST2 with an RT auth token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.connectors.base import WriteBack
from router.connectors.config import RtConfig
from router.connectors.rt import RtConnector
from router.connectors.service import encode_job
from router.devstack.infra import free_port
from router.settings import Settings
from schemas.api import Action
from tests.conftest import SettingsFactory
from tests.support.api_support import VIP_EMAIL, api_settings, populate, population
from tests.support.connectors import ConnectProcess, enqueue, landed, outbox_status, wait_for
from tests.support.rt_server import RTServer

CONFIG = """
[rt]
url = "{url}"
poll_interval_s = 0.25
default_queue = "Support"

[rt.queues]
vip = "VIP"
tech_senior = "VIP"
retention = "VIP"
priority = "Premium"
support = "Support"
"""


@pytest.fixture
def rt(rt_server: RTServer, rt_token: str) -> Iterator[httpx.Client]:
    """RT's REST2 API as the helpdesk's own users and tools use it."""
    if not rt_server.ping():  # a test that stopped RT and failed before starting it again
        rt_server.start_server()
    with httpx.Client(base_url=rt_server.rest2_url, headers={"Authorization": f"token {rt_token}"}, timeout=30) as c:
        yield c


def connect_settings(make: SettingsFactory, rt_server: RTServer, token: str, tmp_path: Path, **extra: Any) -> Settings:
    config = tmp_path / "connectors.toml"
    config.write_text(CONFIG.format(url=rt_server.base_url))
    return api_settings(make, connectors={"config_path": str(config), "rt_token": token, "health_port": 0, **extra})


def create_ticket(rt: httpx.Client, requestor: str, subject: str = "Printer on fire") -> int:
    r = rt.post(
        "/ticket",
        json={"Queue": "Support", "Subject": subject, "Requestor": requestor,
              "Content": "Our printer is on fire, please help.", "ContentType": "text/plain"},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def router_comments(rt: httpx.Client, ticket: int) -> list[str]:
    """Subjects (= markers) of router's comments on ``ticket``."""
    r = rt.get(f"/ticket/{ticket}/history", params={"fields": "Type,Data", "per_page": 100})
    assert r.status_code == 200, r.text
    return [h["Data"].strip() for h in r.json()["items"] if h["Type"] == "Comment" and "router-decision" in h["Data"]]


def comment_bodies(rt: httpx.Client, ticket: int) -> list[str]:
    r = rt.get(f"/ticket/{ticket}/attachments", params={"fields": "Subject,Content", "per_page": 100})
    return [a.get("Content") or "" for a in r.json()["items"] if "router-decision" in (a.get("Subject") or "")]


def ticket(rt: httpx.Client, number: int) -> dict[str, Any]:
    r = rt.get(f"/ticket/{number}", params={"fields[Queue]": "Name"})
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    doc["cf"] = {c["name"]: c["values"] for c in doc["CustomFields"]}
    return doc


def started(s: Settings, proc: ConnectProcess) -> None:
    """``router connect`` follows RT (its watermark is set): tickets created from now on are routed."""
    wait_for("router connect to follow RT", lambda: not proc.alive() or outbox_status(s, "rt").mark is not None, 60)
    assert proc.alive(), proc.log.read_text()[-3000:]


def test_vip_and_unknown_requesters_are_routed_in_rt_within_two_seconds(
    settings: SettingsFactory, rt_server: RTServer, rt_token: str, rt: httpx.Client, tmp_path: Path
) -> None:
    s = connect_settings(settings, rt_server, rt_token, tmp_path)
    asyncio.run(populate(s, population()))
    proc = ConnectProcess(s, tmp_path / "connect.log").start()
    tickets: list[int] = []
    try:
        started(s, proc)
        for requestor in (VIP_EMAIL.lower(), "stranger@nowhere.example"):
            number = create_ticket(rt, requestor)
            created = time.time()  # RT answered 201: the ticket exists
            done = wait_for(
                f"ticket {number}'s write-back",
                lambda: [x for x in landed(s, "rt") if x.ticket == str(number)],  # noqa: B023
                15,
            )
            # within 2 s of the ticket's creation, as the issue asks
            assert done[0].landed_at - created < 2.0, (done[0], created)
            tickets.append(number)
    finally:
        proc.stop()
    vip, stranger = tickets

    t = ticket(rt, vip)
    assert t["Queue"]["Name"] == "VIP"
    assert t["Priority"] == "80"  # VIP: at least "high" (rt.priorities: high = 80)
    assert t["cf"]["Router tier"] == ["VIP"] and t["cf"]["Router next action"]
    created = datetime.fromisoformat(t["Created"].replace("Z", "+00:00"))
    due = datetime.fromisoformat(t["Due"].replace("Z", "+00:00"))
    assert due - created == timedelta(hours=2), (created, due)  # VIP: 2 h, calendar clock, from creation
    (mark,) = router_comments(rt, vip)
    (note,) = comment_bodies(rt, vip)
    assert mark in note and "tier VIP (known customer)" in note and "Why:" in note

    u = ticket(rt, stranger)
    assert u["Queue"]["Name"] == "Support" and u["Priority"] == "50"  # the policy's default: Standard, normal
    assert u["cf"]["Router tier"] == ["Standard"]
    (note,) = comment_bodies(rt, stranger)
    assert "customer not known to router: default routing" in note
    assert datetime.fromisoformat(u["Due"].replace("Z", "+00:00")) > datetime.now(UTC) + timedelta(hours=20)

    # Internal: the requesters were mailed RT's autoreply, never router's note (tiers are internal).
    mail = "".join(p.read_text(errors="replace") for p in (rt_server.workdir / "var").glob("*.mbox"))
    assert "router-decision" not in mail and "Router tier" not in mail
    log = (tmp_path / "connect.log").read_text()
    assert "boss@example.com" not in log.lower() and "stranger@" not in log and rt_token not in log


def _reroute(ticket: int, n: int) -> WriteBack:
    """A later decision for an existing ticket (the customer moved up a tier), as the inbound side queues it."""
    return WriteBack(
        connector="rt", ticket=str(ticket), decision_id=f"d-outage-{n}", tier="Premium", queue="priority",
        role="experienced_agent", priority="normal", due_at=datetime.now(UTC) + timedelta(hours=8),
        clock="business_hours, de_office", actions=(Action("upsell_opportunity", "Mention the plan that fits"),),
        reasons=("Customer moved up to Premium",), customer_known=True, degraded=False, decided_at=time.time(),
    )  # fmt: skip


def _metric(port: int, name: str, labels: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    line = next(x for x in text.splitlines() if x.startswith(f"{name}{{{labels}}}"))
    return float(line.split()[-1])


@pytest.mark.timeout(240)
def test_rt_down_for_30_seconds_loses_no_writeback_and_lands_each_once(
    settings: SettingsFactory, rt_server: RTServer, rt_token: str, rt: httpx.Client, tmp_path: Path
) -> None:
    port = free_port()
    s = connect_settings(
        settings, rt_server, rt_token, tmp_path,
        backoff_base_s=0.5, backoff_max_s=4.0, reclaim_after_s=3.0, health_port=port,
    )  # fmt: skip
    log = tmp_path / "connect.log"
    proc = ConnectProcess(s, log).start()
    try:
        started(s, proc)
        before = [create_ticket(rt, f"before{i}@nowhere.example") for i in range(2)]
        wait_for("the first write-backs", lambda: {x.ticket for x in landed(s, "rt")} >= {str(t) for t in before}, 15)

        # Tickets created right before RT goes down: their write-backs may be anywhere when it stops.
        late = [create_ticket(rt, f"late{i}@nowhere.example") for i in range(3)]
        rt_server.stop()
        down_at = time.monotonic()
        # While RT is down, new decisions for the first tickets wait in the outbox.
        reroutes = [_reroute(t, i) for i, t in enumerate(before)]
        for job in reroutes:
            assert enqueue(s, "rt", job.ticket, encode_job(job))
        failing = wait_for("a failed attempt", lambda: (st := outbox_status(s, "rt")).failure and st, 20)
        assert "unreachable" in (failing.failure or ""), failing
        assert _metric(port, "router_connector_writebacks_total", 'connector="rt",result="retried"') >= 1

        # router connect crashes meanwhile; its replacement takes the outbox over.
        time.sleep(5)
        proc.kill()
        proc = ConnectProcess(s, log).start()
        time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
        landed_while_down = {x.decision_id for x in landed(s, "rt")}
        assert not landed_while_down & {j.decision_id for j in reroutes}
        status = outbox_status(s, "rt")
        assert status.queued + status.delayed >= len(reroutes) and status.dead_letters == 0, status

        rt_server.start_server()
        expected = {str(t) for t in late} | {j.decision_id for j in reroutes}

        def all_landed() -> bool:
            seen = landed(s, "rt")
            return expected <= {x.ticket for x in seen} | {x.decision_id for x in seen}

        wait_for("every write-back after RT is back", all_landed, 60, every=0.2)
        wait_for("an empty outbox", lambda: (st := outbox_status(s, "rt")).queued + st.delayed == 0, 10)
        assert outbox_status(s, "rt").dead_letters == 0
    finally:
        if not rt_server.ping():
            rt_server.start_server()
        proc.stop()

    # Exactly once: one note per (ticket, decision), none lost, none doubled.
    for t in late:
        assert len(router_comments(rt, t)) == 1, (t, router_comments(rt, t))
    for t, job in zip(before, reroutes, strict=True):
        notes = router_comments(rt, t)
        assert len(notes) == 2 == len(set(notes)) and any(job.decision_id in n for n in notes), notes
        after = ticket(rt, t)
        assert after["Queue"]["Name"] == "Premium" and after["cf"]["Router tier"] == ["Premium"]


def test_write_back_twice_writes_once_and_probe_names_what_rt_lacks(
    rt_server: RTServer, rt_token: str, rt: httpx.Client
) -> None:
    number = create_ticket(rt, "twice@nowhere.example")
    job = _reroute(number, 99)
    config = RtConfig(url=rt_server.base_url, queues={"priority": "Premium", "vip": "NoSuchQueue"})

    async def twice() -> tuple[bool, bool, list[str]]:
        connector = RtConnector(config, rt_token, 10.0)
        try:
            return await connector.write_back(job), await connector.write_back(job), await connector.probe()
        finally:
            await connector.aclose()

    first, second, problems = asyncio.run(twice())
    assert (first, second) == (True, False)  # a repeated delivery finds its marker and writes nothing
    assert len(router_comments(rt, number)) == 1
    assert problems == ["RT queue 'NoSuchQueue' does not exist"]
