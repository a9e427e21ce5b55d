"""Operations, proven on the real tools.

- Request metrics from the ASGI middleware: route templates, status classes, request ids.
- The alert rules pass ``promtool check rules`` / ``promtool test rules``, and every alert
  has a unit test in which it fires.
- A live scrape: the API (two uvicorn workers) and a consumer run as processes, take some
  traffic, and Debian's Prometheus (installed by ``deploy/install-test-tools.sh``)
  scrapes them with the project's rule files loaded. Every PromQL expression of the
  dashboard and of the recording rules must return data through Prometheus's HTTP API.
  Alert conditions are legitimately empty while nothing is wrong, so for them every
  series selector they use must return data (and the whole expression must evaluate).
  Grafana's ``$__rate_interval`` becomes 10s: with a 1 s scrape interval that is what
  Grafana computes for a dashboard range of a few hours, and it spans ~10 samples.
- The Compose file validates against the Compose specification schema
  (check-jsonschema's bundled copy), the Kubernetes manifests against the Kubernetes
  OpenAPI schemas bundled in kubernetes-validate (strict: unknown fields fail), and all
  YAML passes yamllint. No schema is fetched from the network.
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
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from router.connectors.base import WriteBack
from router.connectors.service import encode_job
from router.devstack.infra import ManagedProcess, free_port
from router.ops.metrics import prepare_multiprocess
from router.settings import Settings, to_env
from schemas.events import CustomerEvent, CustomerProfile, OrderPlaced, SubscriptionChanged, Usage
from tests.conftest import SettingsFactory
from tests.support.connectors import connect_process, enqueue, landed
from tests.support.helpdesks import FakeZendesk
from tests.support.helpers import produce

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
RULE_FILES = [PROM / "recording.yml", PROM / "alerts.yml"]
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "router.json"
RATE_INTERVAL = "10s"
_API_KEY = "ops-test-secret-0123456789abcdef"
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="session")
def prom_tools() -> tuple[str, str]:
    """``(prometheus, promtool)``, installed from Debian by the project's script if missing."""
    if not (shutil.which("prometheus") and shutil.which("promtool")):
        subprocess.run(["bash", str(DEPLOY / "install-test-tools.sh")], check=True, timeout=600)
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    assert prometheus and promtool, "deploy/install-test-tools.sh did not provide prometheus and promtool"
    return prometheus, promtool


def _run(*argv: str, cwd: Path | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{output}"
    return output


# --- request metrics middleware -------------------------------------------------------------


# --- rules ------------------------------------------------------------------------------------------


def test_promtool_checks_and_unit_tests_pass(prom_tools: tuple[str, str]) -> None:
    _, promtool = prom_tools
    _run(promtool, "check", "rules", *map(str, RULE_FILES))
    _run(promtool, "check", "config", str(PROM / "prometheus.yml"))
    out = _run(promtool, "test", "rules", "alerts.test.yml", cwd=PROM)
    assert "SUCCESS" in out


# --- deployment files -----------------------------------------------------------------------------


# --- live scrape ------------------------------------------------------------------------------------


def _spawn(settings: Settings, command: str, log: Path, **extra: str) -> ManagedProcess:
    env = {**os.environ, **to_env(settings), **extra}
    return ManagedProcess(command, [sys.executable, "-m", "router", command], log_path=log, env=env, cwd=ROOT)


def _customers(n: int) -> list[CustomerEvent]:
    events: list[CustomerEvent] = []
    for i in range(n):
        cid = f"OPS{i:03d}"
        t = NOW - timedelta(days=60 + i)
        events += [
            CustomerProfile(event_id=f"{cid}-p", customer_id=cid, occurred_at=t, segment="smb", plan="pro",
                            phones=[f"+49 30 55{i:04d}"]),
            SubscriptionChanged(event_id=f"{cid}-s", customer_id=cid, occurred_at=t, change="new", plan="pro",
                                mrr_delta=float(50 + 10 * i)),
            OrderPlaced(event_id=f"{cid}-o", customer_id=cid, occurred_at=t + timedelta(days=2), order_id="o1",
                        amount=float(100 * (i + 1))),
            Usage(event_id=f"{cid}-u", customer_id=cid, occurred_at=NOW - timedelta(days=1), logins=3 + i,
                  features_used=2),
        ]  # fmt: skip
    return events


class _Prometheus:
    def __init__(self, base: str) -> None:
        self.client = httpx.Client(base_url=base, timeout=10)

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = self.client.get("/api/v1/query", params={"query": expr})
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr!r}: {body}"
        data = body["data"]
        if data["resultType"] in {"scalar", "string"}:
            return [{"value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result


LiveStack = tuple[Settings, int, Path, _Prometheus, list[ManagedProcess], tuple[int, FakeZendesk]]


@pytest.fixture
def live_stack(settings: SettingsFactory, prom_tools: tuple[str, str], tmp_path: Path) -> Iterator[LiveStack]:
    prometheus, _ = prom_tools
    sections: dict[str, dict[str, Any]] = {"api": {"workers": 2}}
    if "auth" in Settings.__struct_fields__:
        sections["auth"] = {"keys": f"ops-test:helpdesk+telephony+chatbot:{_API_KEY}"}
    # `router connect` writing back to the Zendesk stand-in, with its own health and metrics port.
    zendesk = FakeZendesk("agent@example.com", "zendesk-api-token").start()
    connect_port = free_port()
    (tmp_path / "connectors.toml").write_text(f'[zendesk]\nurl = "{zendesk.url}"\ndefault_group = 1\n')
    sections["connectors"] = {
        "config_path": str(tmp_path / "connectors.toml"), "zendesk_email": "agent@example.com",
        "zendesk_token": "zendesk-api-token", "health_port": connect_port,
    }  # fmt: skip
    s = settings(**sections)
    health_port = free_port()
    prom_port = free_port()
    multiproc = tmp_path / "metrics"
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "rule_files": [str(p) for p in RULE_FILES],
        "scrape_configs": [
            {"job_name": "router-api", "static_configs": [{"targets": [f"127.0.0.1:{s.api.port}"]}]},
            {"job_name": "router-consumer", "static_configs": [{"targets": [f"127.0.0.1:{health_port}"]}]},
            {"job_name": "router-connect", "static_configs": [{"targets": [f"127.0.0.1:{connect_port}"]}]},
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    procs = [
        _spawn(s, "consume", tmp_path / "consumer.log", ROUTER_STREAM_HEALTH_PORT=str(health_port)),
        _spawn(s, "serve", tmp_path / "api.log", PROMETHEUS_MULTIPROC_DIR=str(multiproc)),
        ManagedProcess(
            "prometheus",
            [
                prometheus,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            log_path=tmp_path / "prometheus.log",
        ),
    ]
    prom = _Prometheus(f"http://127.0.0.1:{prom_port}")
    try:
        with connect_process(s, tmp_path / "connect.log"):
            yield s, health_port, multiproc, prom, procs, (connect_port, zendesk)
    finally:
        prom.client.close()
        for p in procs:
            p.terminate()
        for p in procs:
            p.stop(10)
        zendesk.close()


def _wait(what: str, check: Any, procs: list[ManagedProcess], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.TransportError, ValueError, KeyError, AssertionError):
            pass
        for p in procs:
            assert p.running, f"{p.name} exited with {p.poll()}:\n{p.tail(40)}"
        time.sleep(0.2)
    tails = "\n\n".join(f"--- {p.name}\n{p.tail(30)}" for p in procs)
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def _selectors(expr: str) -> list[str]:
    """Series selectors of ``expr``: our metric names (and ``up``) with their label matchers."""
    found = re.finditer(r"(?<![\w:])(router[_:][A-Za-z0-9_:]*|up)(\{[^}]*\})?(?![\w(])", expr)
    return sorted({m.group(0) for m in found})


def _dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [
        (p["title"], t["expr"].replace("$__rate_interval", RATE_INTERVAL))
        for p in dash["panels"]
        for t in p.get("targets", [])
    ]


def _rules() -> list[dict[str, Any]]:
    return [r for f in RULE_FILES for g in _load_yaml(f)["groups"] for r in g["rules"]]


def test_dashboard_and_rules_query_live_metrics(live_stack: LiveStack) -> None:
    s, health_port, multiproc, prom, procs, (connect_port, zendesk) = live_stack
    api = httpx.Client(base_url=f"http://127.0.0.1:{s.api.port}", timeout=5, headers={"X-API-Key": _API_KEY})
    consumer = httpx.Client(base_url=f"http://127.0.0.1:{health_port}", timeout=5)
    connect = httpx.Client(base_url=f"http://127.0.0.1:{connect_port}", timeout=5)
    try:
        _wait("API ready", lambda: api.get("/health/ready").status_code == 200, procs)
        _wait("consumer ready", lambda: consumer.get("/health/ready").status_code == 200, procs)
        _wait("router connect ready", lambda: connect.get("/health/ready").status_code == 200, procs)

        # one write-back lands in the Zendesk stand-in, one is refused (a ticket it does not know)
        zendesk.add_ticket(7001)
        for ticket in ("7001", "7002"):
            assert enqueue(s, "zendesk", ticket, encode_job(_writeback(ticket)))
        _wait("a landed write-back", lambda: [x.ticket for x in landed(s, "zendesk")] == ["7001"], procs, timeout=30)

        # events: a small population, one record the schema rejects, one that is not JSON
        asyncio.run(produce(s, [*_customers(12), (b"OPS000", b'{"type": "nope"}'), (b"OPS001", b"{not json")]))

        # Traffic on fresh connections, so both workers serve some of it.
        classify = 0

        def post(body: object) -> httpx.Response:
            nonlocal classify
            classify += 1
            return api.post("/v1/classify", json=body, headers={"Connection": "close"})

        def known() -> bool:
            r = post({"customer": {"customer_id": "OPS011"}, "channel": "phone", "category": "billing"})
            return r.status_code == 200 and r.json()["customer_known"] is True

        _wait("the consumer to apply the events", known, procs, timeout=45)
        for i in range(12):
            assert post({"customer": {"customer_id": f"OPS{i:03d}"}, "channel": "chat"}).status_code == 200
        assert post({"customer": {"phone": "+49 30 550003"}, "channel": "phone"}).status_code == 200
        assert post({"customer": {"customer_id": "nobody-known"}, "channel": "email"}).json()["customer_known"] is False
        assert post({"customer": {"customer_id": "x"}, "channel": "pigeon"}).status_code == 400
        assert post({"customer": {}}).status_code == 400
        traffic_done = time.time()

        # several uvicorn workers, one total: every scrape reports all classify requests
        worker_pids = {p.stem.rsplit("_", 1)[-1] for p in multiproc.glob("*.db")}
        assert len(worker_pids) >= 3, f"expected parent + 2 workers writing metrics, got {worker_pids}"

        def scraped_after_traffic() -> bool:
            stamps = prom.query("timestamp(up)")
            up = prom.query("up")
            return (
                len(stamps) == 3
                and all(float(x["value"][1]) > traffic_done + 2 for x in stamps)
                and all(x["value"][1] == "1" for x in up)
            )

        _wait("scrapes after the traffic", scraped_after_traffic, procs, timeout=30)
        # recording rules need one evaluation (every 1 s) after the series have two samples
        records = [r["record"] for r in _rules() if "record" in r]
        with contextlib.suppress(AssertionError):
            _wait("recording rules", lambda: all(prom.query(r) for r in records), procs, timeout=15)
        for _ in range(3):  # whichever worker answers the scrape
            text = api.get("/metrics", headers={"Connection": "close"}).text
            assert _total(text, "router_http_requests_total", 'route="/v1/classify"') == classify
        total = prom.query('sum(router_http_requests_total{job="router-api",route="/v1/classify"})')
        assert float(total[0]["value"][1]) == classify

        # every dashboard query and every recording rule returns data
        empty: list[str] = []
        for title, expr in _dashboard_exprs():
            if not prom.query(expr):
                empty.append(f"dashboard {title!r}: {expr}")
            empty += [f"dashboard {title!r}: selector {sel}" for sel in _selectors(expr) if not prom.query(sel)]
        for rule in _rules():
            expr = rule["expr"]
            if "record" in rule:
                for q in (expr, rule["record"]):
                    if not prom.query(q):
                        empty.append(f"recording rule {rule['record']}: {q}")
            else:
                prom.query(expr)  # evaluates (empty while nothing is wrong) ...
                sels = _selectors(expr)
                assert sels, rule["alert"]
                # ... but every series it watches exists
                empty += [f"alert {rule['alert']}: selector {sel}" for sel in sels if not prom.query(sel)]
        assert not empty, "queries without data:\n" + "\n".join(empty)

        # the figures a user reads are right, not just present
        known_tiers = prom.query('sum by (tier) (router_decisions_total{job="router-api"})')
        assert sum(float(x["value"][1]) for x in known_tiers) == classify - 2  # minus the two 400s
        assert prom.query('router_consumer_dead_lettered_total{reason="undecodable"} == 1')
        assert prom.query('router_consumer_dead_lettered_total{reason="schema_invalid"} == 1')
        assert prom.query('router_model_info{job="router-api"} == 1')
        assert prom.query('sum(router_http_requests_total{route="/v1/classify",status="4xx"}) == 2')
        assert not prom.query(
            'ALERTS{alertname=~"RouterModelNotLoaded|RouterConsumerDown|RouterApiDown|RouterConnectDown"}'
        )
        # ... and those of router connect
        assert prom.query(
            'router_connector_writebacks_total{job="router-connect",connector="zendesk",result="landed"} == 1'
        )
        assert prom.query(
            'router_connector_writeback_failures_total{job="router-connect",connector="zendesk",cause="refused"} == 1'
        )
        assert prom.query('router_connector_dead_letters{job="router-connect",connector="zendesk"} == 1')
        assert prom.query('router_connector_circuit_open{job="router-connect",connector="zendesk"} == 0')
        assert zendesk.problems == []
    finally:
        api.close()
        consumer.close()
        connect.close()

    # the logs of both processes are JSON lines and carry no phone number in clear
    for proc in procs[:2]:
        lines = [ln for ln in proc.log_path.read_text().splitlines() if ln.strip()]
        assert lines, proc.name
        for line in lines:
            entry = json.loads(line)
            assert {"ts", "level", "logger", "msg"} <= set(entry), line
        assert "550003" not in proc.log_path.read_text()


def _writeback(ticket: str) -> WriteBack:
    return WriteBack(
        connector="zendesk", ticket=ticket, decision_id=f"d-ops-{ticket}", tier="VIP", queue="vip",
        role="senior_advisor", priority="high", due_at=datetime.now(UTC) + timedelta(hours=2), clock="24x7, always",
        actions=(), reasons=("High value customer",), customer_known=True, degraded=False, decided_at=time.time(),
    )  # fmt: skip


def _total(exposition: str, name: str, matcher: str) -> float:
    total = 0.0
    for line in exposition.splitlines():
        if line.startswith(name + "{") and matcher in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_install_script_leaves_no_service_running(prom_tools: tuple[str, str]) -> None:
    # The fixture ran (or found) the installer; the packaged service must not be running.
    ps = subprocess.run(["ps", "-eo", "user:32,comm"], capture_output=True, text=True, timeout=10, check=True)
    service = [ln for ln in ps.stdout.splitlines() if ln.split() == ["prometheus", "prometheus"]]
    assert not service, f"a packaged Prometheus is running: {service}"


def test_multiprocess_directory_is_prepared_before_workers_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert prepare_multiprocess(1) is None  # one process keeps its metrics in memory
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ

    created = prepare_multiprocess(2)  # several workers: a private directory, exported
    assert created is not None and created.is_dir()
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(created)

    # a directory given by the operator loses the files of earlier processes, keeps ours
    given = tmp_path / "given"
    given.mkdir()
    stale, own = given / "counter_1.db", given / f"counter_{os.getpid()}.db"
    stale.write_bytes(b"x")
    own.write_bytes(b"x")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(given))
    assert prepare_multiprocess(4) == given
    assert not stale.exists() and own.exists()
