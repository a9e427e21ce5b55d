"""What each connector sends to its helpdesk, how failures are classified, the connector file. Pure, no I/O
(HTTP answers come from httpx's in-memory transport)."""

from __future__ import annotations

import asyncio
import email.utils
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from router.connectors.base import Connector, Permanent, Retry, WriteBack, marker, note_text, retry_after_s
from router.connectors.config import ConnectorConfigError, FreshdeskConfig, RtConfig, ZendeskConfig, load_connectors
from router.connectors.freshdesk import FreshdeskConnector
from router.connectors.rt import RtConnector, rt_due
from router.connectors.worker import ConnectWorker
from router.connectors.zendesk import ZendeskConnector
from router.settings import ConnectorSettings
from schemas.api import Action

ROOT = Path(__file__).resolve().parents[3]
DUE = datetime(2026, 12, 7, 9, 30, tzinfo=UTC)


def job(**changes: object) -> WriteBack:
    base = WriteBack(
        connector="x", ticket="42", decision_id="d-1", tier="VIP", queue="vip", role="senior_advisor", priority="high",
        due_at=DUE, clock="calendar, 24x7", actions=(Action("retention_offer", "Offer a fitting plan"),),
        reasons=("Top 3 % customer by value", "Churn risk high (81 %)"), customer_known=True, degraded=False,
        decided_at=time.time(),
    )  # fmt: skip
    return WriteBack(**{**{f: getattr(base, f) for f in base.__struct_fields__}, **changes})  # type: ignore[arg-type]


def test_the_note_says_why_and_ends_with_the_marker() -> None:
    text = note_text(job())
    assert text.endswith(marker(job())) and marker(job()) == "[router-decision:42:d-1]"
    assert "tier VIP (known customer)" in text and "First response due 2026-12-07 09:30 UTC (calendar, 24x7)" in text
    assert "- Churn risk high (81 %)" in text and "- Offer a fitting plan" in text and "degraded" not in text
    assert "degraded mode" in note_text(job(degraded=True))


def test_rt_update_maps_queue_priority_due_and_fields() -> None:
    rt = RtConnector(RtConfig(url="http://rt.example", queues={"vip": "VIP"}, default_queue=None), "t", 1.0)
    assert rt.update_of(job()) == {
        "Priority": 80, "Due": "2026-12-07 09:30:00", "Queue": "VIP",
        "CustomFields": {"Router tier": "VIP", "Router next action": "retention_offer"},
    }  # fmt: skip
    unmapped = rt.update_of(job(queue="billing", actions=()))
    assert "Queue" not in unmapped and unmapped["CustomFields"] == {"Router tier": "VIP"}
    assert rt_due(datetime(2026, 1, 1, 12, 0, tzinfo=UTC) + timedelta(hours=1)) == "2026-01-01 13:00:00"
    # RT's numeric priority back to a severity: 0 is RT's "not set"
    assert [rt._severity(v) for v in ("0", "20", "55", "80", "100", "x")] == [
        None,
        "low",
        "normal",
        "high",
        "urgent",
        None,
    ]


def test_rt_ticket_from_rest2() -> None:
    rt = RtConnector(RtConfig(url="http://rt.example", categories={"Billing": "billing"}), "t", 1.0)
    item = {"id": "7", "Priority": "0", "Created": "2026-12-06T04:01:37Z",
            "Requestor": [{"EmailAddress": "a@b.example"}, {"EmailAddress": ""}]}  # fmt: skip
    inbound = rt.inbound_of(7, "Billing", item)
    assert inbound.ticket == "7" and inbound.category == "billing" and inbound.priority is None
    assert [r.email for r in inbound.customers] == ["a@b.example"]
    assert inbound.received_at == datetime(2026, 12, 6, 4, 1, 37, tzinfo=UTC)


def test_zendesk_update_keeps_the_tickets_own_tags_and_guards_collisions() -> None:
    zd = ZendeskConnector(
        ZendeskConfig(url="https://x.zendesk.com", groups={"vip": 7}, tier_field_id=3), "a@b.c", "t", 1.0
    )
    update = zd.update_of(job(), {"tags": ["crm_gold", "router_tier_premium", "router_role_agent"], "updated_at": "T1"})
    assert update["tags"] == [
        "crm_gold",
        "router_tier_vip",
        "router_role_senior_advisor",
        "router_action_retention_offer",
    ]
    assert (
        update["group_id"] == 7
        and update["priority"] == "high"
        and update["custom_fields"] == [{"id": 3, "value": "vip"}]
    )
    assert update["comment"] == {"body": note_text(job()), "public": False}
    assert update["safe_update"] is True and update["updated_stamp"] == "T1"
    assert "group_id" not in zd.update_of(job(queue="nowhere"), {}) and "safe_update" not in zd.update_of(job(), {})
    assert zd.client.headers["authorization"].startswith("Basic ")
    assert (
        ZendeskConnector(ZendeskConfig(url="https://x.zendesk.com"), "", "oauth", 1.0).client.headers["authorization"]
        == "Bearer oauth"
    )


def test_freshdesk_update_moves_resolution_only_when_it_would_come_first() -> None:
    fd = FreshdeskConnector(
        FreshdeskConfig(url="https://x.freshdesk.com", groups={"vip": 5}, tier_field="cf_tier"), "k", 1.0
    )
    later = fd.update_of(job(), {"tags": ["a"], "due_by": "2026-12-09T00:00:00Z"})
    assert later == {"priority": 3, "group_id": 5, "fr_due_by": "2026-12-07T09:30:00Z",
                     "tags": ["a", "router_tier_vip", "router_role_senior_advisor", "router_action_retention_offer"],
                     "custom_fields": {"cf_tier": "VIP"}}  # fmt: skip
    sooner = fd.update_of(job(), {"due_by": "2026-12-07T08:00:00Z"})
    assert sooner["due_by"] == sooner["fr_due_by"] == "2026-12-07T09:30:00Z"


class _Fixed(Connector):
    name = "fixed"

    async def write_back(self, job: WriteBack) -> bool:
        return True


def _classify(response: httpx.Response | Exception) -> Retry | Permanent | None:
    def answer(request: httpx.Request) -> httpx.Response:
        if isinstance(response, Exception):
            raise response
        return response

    async def call() -> Retry | Permanent | None:
        connector = _Fixed(httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://h"))
        try:
            await connector.request("PUT", "/api/v2/tickets/42")
        except (Retry, Permanent) as exc:
            return exc
        finally:
            await connector.aclose()
        return None

    return asyncio.run(call())


def test_failures_are_classified_retry_helpdesk_wide_or_permanent() -> None:
    limited = _classify(httpx.Response(429, headers={"Retry-After": "7"}))
    assert isinstance(limited, Retry) and limited.helpdesk_wide and limited.after_s == 7.0
    assert limited.cause == "PUT /api/v2/tickets/{id}: HTTP 429"  # no ticket number: low cardinality
    down = _classify(httpx.ConnectError("refused"))
    assert isinstance(down, Retry) and down.helpdesk_wide and "unreachable" in down.cause
    assert isinstance(slow := _classify(httpx.ReadTimeout("slow")), Retry) and slow.helpdesk_wide
    for status in (502, 503, 504):
        assert isinstance(r := _classify(httpx.Response(status)), Retry) and r.helpdesk_wide
    for status in (409, 500, 408):
        assert isinstance(r := _classify(httpx.Response(status)), Retry) and not r.helpdesk_wide
    for status in (400, 401, 403, 404, 422):
        assert isinstance(_classify(httpx.Response(status)), Permanent)
    assert _classify(httpx.Response(200)) is None


def test_every_failure_has_a_metric_cause_from_the_fixed_list() -> None:
    from router.connectors.base import FAILURE_KINDS
    from router.ops.metrics import WRITEBACK_FAILURE_CAUSES

    cases: dict[str, httpx.Response | Exception] = {
        "rate_limited": httpx.Response(429),
        "unavailable": httpx.Response(503),
        "unreachable": httpx.ConnectError("refused"),
        "timeout": httpx.ReadTimeout("slow"),
        "conflict": httpx.Response(409),
        "server_error": httpx.Response(500),
        "refused": httpx.Response(404),
    }
    for kind, response in cases.items():
        failure = _classify(response)
        assert failure is not None and failure.kind == kind, (kind, failure)
    assert Retry("GET /x: unreadable answer").kind == "unreadable"
    assert set(FAILURE_KINDS) <= set(WRITEBACK_FAILURE_CAUSES)  # every cause label exists at 0 from the start


def test_retry_after_seconds_or_http_date_capped() -> None:
    now = time.time()
    assert retry_after_s("3") == 3.0 and retry_after_s(" 1.5 ") == 1.5
    assert retry_after_s("-4") == 0.0 and retry_after_s("999999") == 3600.0
    assert retry_after_s(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert retry_after_s("soon") is None and retry_after_s(None) is None and retry_after_s("nan") is None


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    worker = ConnectWorker(None, {}, None, ConnectorSettings(backoff_base_s=1.0, backoff_max_s=60.0))  # type: ignore[arg-type]
    for attempts, ceiling in ((1, 1.0), (2, 2.0), (4, 8.0), (7, 60.0), (40, 60.0)):
        delays = [worker.backoff_s(attempts) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempts, min(delays), max(delays))


def test_connector_file_example_loads_and_mistakes_name_their_place(tmp_path: Path) -> None:
    example = load_connectors(str(ROOT / "deploy" / "integrations" / "connectors.toml"))
    assert example.names == ["rt", "zendesk", "freshdesk"]
    assert load_connectors("").names == []
    bad = tmp_path / "c.toml"
    for text, says in (
        (
            '[zendesk]\nurl = "https://x.zendesk.com"\ndefault_group = "one"\n',
            "got `str` - at `$.zendesk.default_group`",
        ),
        ('[zendesk]\nurl = "https://x.zendesk.com"\n[zendesk.groups]\nvip = "one"\n', "$.zendesk.groups"),
        ('[rt]\nurl = "https://rt"\ncolour = "blue"\n', "colour"),
        ('[freshdesk]\nurl = "ftp://x.example.com"\n', "freshdesk.url"),
        ('[rt]\nurl = "https://rt.example"\npoll_interval_s = 0\n', "poll_interval_s"),
        ('tier_priority = { VIP = "asap" }\n', "tier_priority"),
    ):
        bad.write_text(text)
        with pytest.raises(ConnectorConfigError) as err:
            load_connectors(str(bad))
        assert says in str(err.value), str(err.value)
    with pytest.raises(ConnectorConfigError):
        load_connectors(str(tmp_path / "missing.toml"))
