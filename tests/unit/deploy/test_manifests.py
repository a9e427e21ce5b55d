"""Deployment files, checked statically: every alert has a unit test, Compose against the Compose spec, Kubernetes manifests against bundled schemas (strict), yamllint, Dockerfile, dashboard datasource. No schema is fetched from the network."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "router.json"


def _run(*argv: str, cwd: Path | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{output}"
    return output


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _venv_tool(name: str) -> str:
    """A console script of the test environment (dev extras), else one on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is missing: it comes with the project's dev extras (pip install -e '.[dev]')"
    return found


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


def test_compose_has_no_dev_mode_and_requires_the_secrets() -> None:
    env = _load_yaml(DEPLOY / "compose.yaml")["x-router-env"]
    # the API listens on 0.0.0.0 behind the published port: the public dev key must not work there
    assert env["ROUTER_AUTH_DEV_MODE"] == "false"
    for name in ("ROUTER_AUTH_KEYS", "ROUTER_IDENTITY_HASH_KEY"):
        assert re.fullmatch(rf"\$\{{{name}:\?[^}}]+\}}", env[name]), f"{name} must be required (${{{name}:?...}})"
    assert "ROUTER_API_HOST=0.0.0.0" in (DEPLOY / "Dockerfile").read_text()


def test_the_kubernetes_secret_holds_only_placeholders_that_the_service_refuses() -> None:
    from router.api.auth import ConfigError, parse_keys
    from router.settings import Settings, unsafe_reasons

    docs = yaml.safe_load_all((DEPLOY / "k8s" / "secret.yaml").read_text())
    (secret,) = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "router-secrets"]
    data = secret["stringData"]
    settings = Settings.from_env(data)
    problems = " ".join(unsafe_reasons(settings, binds_api=True))
    assert "ROUTER_IDENTITY_HASH_KEY" in problems and "ROUTER_WEBHOOKS_ZENDESK_SECRET" in problems
    for entry in data["ROUTER_AUTH_KEYS"].split(","):
        try:
            parse_keys(entry)
        except ConfigError as exc:
            assert "placeholder" in str(exc)
        else:
            raise AssertionError(f"API key {entry.split(':')[0]} of the placeholder Secret would be accepted")
