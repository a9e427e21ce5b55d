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
from typing import Annotated, Any

import httpx
import pytest
import yaml
from litestar import Litestar, MediaType, Response, get
from litestar.params import PathParameter
from litestar.testing import TestClient
from prometheus_client import REGISTRY

from router.api.middleware import RequestMetricsMiddleware
from router.devstack.infra import ManagedProcess, free_port
from router.ops.metrics import prepare_multiprocess
from router.settings import Settings, to_env
from schemas.events import CustomerEvent, CustomerProfile, OrderPlaced, SubscriptionChanged, Usage
from tests.conftest import SettingsFactory
from tests.helpers import produce

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
RULE_FILES = [PROM / "recording.yml", PROM / "alerts.yml"]
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "router.json"
RATE_INTERVAL = "10s"
_API_KEY = "ops-test-secret-0123456789abcdef"
NOW = datetime.now(UTC).replace(microsecond=0)


def _venv_tool(name: str) -> str:
    """A console script of the test environment (dev extras), else one on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is missing: it comes with the project's dev extras (pip install -e '.[dev]')"
    return found


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


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_requests_are_counted_by_route_template_and_status_class() -> None:
    @get("/items/{item_id:int}", sync_to_thread=False)
    def item(item_id: Annotated[int, PathParameter()]) -> dict[str, int]:
        if item_id == 0:
            raise RuntimeError("boom")
        return {"id": item_id}

    @get("/teapot", sync_to_thread=False)
    def teapot() -> Response[str]:
        return Response("short and stout", status_code=418, media_type=MediaType.TEXT)

    app = Litestar([item, teapot], middleware=[RequestMetricsMiddleware])
    route = "/items/{item_id}"
    before = {s: _sample("router_http_requests_total", route=route, status=s) for s in ("2xx", "4xx", "5xx")}
    seconds_before = _sample("router_http_request_duration_seconds_count", route=route)
    with TestClient(app, raise_server_exceptions=False) as client:
        for i in (1, 2, 3):
            assert client.get(f"/items/{i}").status_code == 200
        assert client.get("/items/0").status_code == 500
        assert client.get("/teapot").status_code == 418
        echoed = client.get("/items/7", headers={"X-Request-ID": "caller-id-42"})
        invented = client.get("/items/8", headers={"X-Request-ID": "<script>"})
        assert client.get("/nowhere").status_code == 404

    assert _sample("router_http_requests_total", route=route, status="2xx") - before["2xx"] == 5
    assert _sample("router_http_requests_total", route=route, status="5xx") - before["5xx"] == 1
    # every status class exists from the first request on, so error ratios have series at 0
    assert REGISTRY.get_sample_value("router_http_requests_total", {"route": route, "status": "4xx"}) is not None
    assert _sample("router_http_requests_total", route="/teapot", status="4xx") >= 1
    assert _sample("router_http_request_duration_seconds_count", route=route) - seconds_before == 6
    # the raw path (with the id in it) is never a label value
    exposed = {s.labels.get("route") for m in REGISTRY.collect() for s in m.samples if s.name.startswith("router_http")}
    assert not any(r and re.search(r"/items/\d", r) for r in exposed)
    assert "/nowhere" not in exposed  # unmatched paths are not routes
    assert echoed.headers["x-request-id"] == "caller-id-42"
    assert re.fullmatch(r"[0-9a-f]{16}", invented.headers["x-request-id"])


def test_wrapping_the_whole_app_counts_unmatched_paths() -> None:
    @get("/ok", sync_to_thread=False)
    def ok() -> str:
        return "ok"

    app = RequestMetricsMiddleware(Litestar([ok]))
    before = _sample("router_http_requests_total", route="unmatched", status="4xx")
    with TestClient(app) as client:  # type: ignore[arg-type]
        assert client.get("/ok").status_code == 200
        assert client.get("/missing").status_code == 404
    assert _sample("router_http_requests_total", route="unmatched", status="4xx") - before == 1


# --- rules ------------------------------------------------------------------------------------------


def test_promtool_checks_and_unit_tests_pass(prom_tools: tuple[str, str]) -> None:
    _, promtool = prom_tools
    _run(promtool, "check", "rules", *map(str, RULE_FILES))
    _run(promtool, "check", "config", str(PROM / "prometheus.yml"))
    out = _run(promtool, "test", "rules", "alerts.test.yml", cwd=PROM)
    assert "SUCCESS" in out


def test_every_alert_has_a_unit_test_in_which_it_fires() -> None:
    alerts = {r["alert"] for g in _load_yaml(PROM / "alerts.yml")["groups"] for r in g["rules"] if "alert" in r}
    tests = _load_yaml(PROM / "alerts.test.yml")["tests"]
    fired = {c["alertname"] for t in tests for c in t.get("alert_rule_test", []) if c.get("exp_alerts")}
    quiet = {c["alertname"] for t in tests for c in t.get("alert_rule_test", []) if not c.get("exp_alerts")}
    assert len(alerts) >= 10
    assert alerts <= fired, f"alerts never shown to fire: {sorted(alerts - fired)}"
    assert alerts <= quiet, f"alerts never shown to stay quiet: {sorted(alerts - quiet)}"
    for group in _load_yaml(PROM / "alerts.yml")["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"page", "ticket", "warning"}, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]


# --- deployment files -----------------------------------------------------------------------------


def test_compose_file_follows_the_compose_spec() -> None:
    compose = DEPLOY / "compose.yaml"
    _run(_venv_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(compose))
    spec = _load_yaml(compose)
    services = spec["services"]
    assert {"kafka", "redis", "topics", "api", "consumer", "prometheus", "grafana"} <= set(services)
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    for name in ("kafka", "redis", "api", "consumer"):
        assert "healthcheck" in services[name] or name in {"api", "consumer"}, name
    mounts = " ".join(services["grafana"]["volumes"])
    assert "./grafana/dashboards:/var/lib/grafana/dashboards" in mounts
    provider = _load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "router.yml")
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    assert "./prometheus:/etc/prometheus" in " ".join(services["prometheus"]["volumes"])


def test_compose_validation_rejects_a_broken_file(tmp_path: Path) -> None:
    spec = _load_yaml(DEPLOY / "compose.yaml")
    spec["services"]["api"]["restart"] = ["sometimes"]
    broken = tmp_path / "compose.yaml"
    broken.write_text(yaml.safe_dump(spec))
    done = subprocess.run(
        [_venv_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0


def test_kubernetes_manifests_are_valid_and_complete() -> None:
    manifests = sorted((DEPLOY / "k8s").glob("*.yaml"))
    _run(_venv_tool("kubernetes-validate"), "--strict", "--quiet", *map(str, manifests))
    docs = [d for m in manifests for d in yaml.safe_load_all(m.read_text()) if d]
    by_kind: dict[str, dict[str, Any]] = {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}
    for name in ("router-api", "router-consumer"):
        pod = by_kind[f"Deployment/{name}"]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            assert {"livenessProbe", "readinessProbe"} <= set(container), name
            assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
            refs = {next(iter(e.values()))["name"] for e in container["envFrom"]}
            assert refs == {"router-config", "router-secrets"}
        assert f"PodDisruptionBudget/{name}" in by_kind
    assert by_kind["HorizontalPodAutoscaler/router-api"]["spec"]["scaleTargetRef"]["name"] == "router-api"
    assert "ConfigMap/router-config" in by_kind and "Secret/router-secrets" in by_kind


def test_kubernetes_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "api.yaml").read_text()))
    docs[0]["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"httpGet": {"path": "/", "port": 1}}
    broken = tmp_path / "api.yaml"
    broken.write_text(yaml.safe_dump_all(docs))
    done = subprocess.run(
        [_venv_tool("kubernetes-validate"), "--strict", "--quiet", str(broken)], capture_output=True, timeout=60
    )
    assert done.returncode != 0


def test_yaml_is_lint_clean() -> None:
    config = (
        "{extends: default, rules: {line-length: {max: 140}, document-start: disable, truthy: {check-keys: false}}}"
    )
    _run(_venv_tool("yamllint"), "--strict", "-d", config, str(DEPLOY))


def test_dockerfile_is_small_non_root_and_health_checked() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(stages) >= 2 and all("slim" in s for s in stages), "multi-stage on a slim base"
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0")), "runs as a non-root user"
    assert re.search(r"^HEALTHCHECK\s", text, re.M)
    assert "[dev]" not in text and "[train]" not in text
    ignore = [ln for ln in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines() if not ln.startswith("#")]
    assert ignore[0] == "**", "the build context is an allow-list"
    for line in re.findall(r"^COPY\s+(?!--from)(.+)$", text, re.M):
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), f"COPY source {source} is not in the repository"
            assert {f"!{source}", f"!{source}/**"} & set(ignore), f"{source} is not in the build context"


def test_dashboard_refers_to_the_provisioned_datasource() -> None:
    dash = json.loads(DASHBOARD.read_text())
    uid = _load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"][0]["uid"]
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len(panels) >= 20
    titles = {p["title"] for p in panels}
    assert {"Tier mix over time", "Churn alerts emitted", "Lag per partition"} <= titles
    for p in panels:
        assert p["datasource"]["uid"] == uid, p["title"]
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


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


@pytest.fixture
def live_stack(
    settings: SettingsFactory, prom_tools: tuple[str, str], tmp_path: Path
) -> Iterator[tuple[Settings, int, Path, _Prometheus, list[ManagedProcess]]]:
    prometheus, _ = prom_tools
    sections: dict[str, dict[str, Any]] = {"api": {"workers": 2}}
    if "auth" in Settings.__struct_fields__:
        sections["auth"] = {"keys": f"ops-test:helpdesk+telephony+chatbot:{_API_KEY}"}
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
        yield s, health_port, multiproc, prom, procs
    finally:
        prom.client.close()
        for p in procs:
            p.terminate()
        for p in procs:
            p.stop(10)


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


def test_dashboard_and_rules_query_live_metrics(
    live_stack: tuple[Settings, int, Path, _Prometheus, list[ManagedProcess]],
) -> None:
    s, health_port, multiproc, prom, procs = live_stack
    api = httpx.Client(base_url=f"http://127.0.0.1:{s.api.port}", timeout=5, headers={"X-API-Key": _API_KEY})
    consumer = httpx.Client(base_url=f"http://127.0.0.1:{health_port}", timeout=5)
    try:
        _wait("API ready", lambda: api.get("/health/ready").status_code == 200, procs)
        _wait("consumer ready", lambda: consumer.get("/health/ready").status_code == 200, procs)

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
                len(stamps) == 2
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
        assert not prom.query('ALERTS{alertname=~"RouterModelNotLoaded|RouterConsumerDown|RouterApiDown"}')
    finally:
        api.close()
        consumer.close()

    # the logs of both processes are JSON lines and carry no phone number in clear
    for proc in procs[:2]:
        lines = [ln for ln in proc.log_path.read_text().splitlines() if ln.strip()]
        assert lines, proc.name
        for line in lines:
            entry = json.loads(line)
            assert {"ts", "level", "logger", "msg"} <= set(entry), line
        assert "550003" not in proc.log_path.read_text()


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
