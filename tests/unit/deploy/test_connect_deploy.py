"""``router connect``'s deployment files against the code: settings names, the health server, the connector file.

The manifest, the Compose service and the Prometheus job must name settings that exist, read the
credentials the way :meth:`Settings.from_env` reads ``*_FILE`` variables, probe paths the health
server answers, and every metric the dashboard and the rules select must be one the code exports.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import yaml

import router.connectors.worker  # noqa: F401 - registers the metrics `router connect` exports
from router.connectors.config import load_connectors
from router.devstack.infra import free_port
from router.ingest.health import HealthServer
from router.settings import ConnectorSettings, Settings

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROM = DEPLOY / "prometheus"


def _docs(*files: str) -> dict[str, dict[str, Any]]:
    docs = [d for f in files for d in yaml.safe_load_all((K8S / f).read_text()) if d]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def _setting_names() -> tuple[set[str], set[str]]:
    """Every ``ROUTER_<SECTION>_<FIELD>`` variable, and the ``..._FILE`` ones (secrets only)."""
    names: set[str] = set()
    files: set[str] = set()
    for section in Settings.__struct_fields__:
        kind = type(getattr(Settings(), section))
        for field in kind.__struct_fields__:
            name = f"ROUTER_{section}_{field}".upper()
            names.add(name)
            if field in getattr(kind, "secrets", ()):
                files.add(f"{name}_FILE")
    return names, files


def _connect_container() -> tuple[dict[str, Any], dict[str, Any]]:
    deployment = _docs("connect.yaml")["Deployment/router-connect"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    return pod, container


def _get(port: int, path: str) -> tuple[int, bytes]:
    async def go() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
        writer.close()
        return int(data.split()[1]), data.split(b"\r\n\r\n", 1)[1]

    return asyncio.run(go())


def test_the_connect_deployment_is_two_replicas_with_a_budget_and_the_real_health_port_and_paths() -> None:
    docs = _docs("connect.yaml")
    deployment = docs["Deployment/router-connect"]
    assert deployment["spec"]["replicas"] == 2  # safe: the outbox's consumer group and takeover (see the file)
    pdb = docs["PodDisruptionBudget/router-connect"]["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    pod, container = _connect_container()
    assert container["args"] == ["connect"]
    env = {e["name"]: e for e in container["env"]}
    (port,) = container["ports"]
    assert (
        port["containerPort"] == int(env["ROUTER_CONNECTORS_HEALTH_PORT"]["value"]) == ConnectorSettings().health_port
    )
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port["containerPort"])
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    live, ready = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
    assert live["port"] == ready["port"] == port["name"]

    # The paths the probes use are the ones the process's health server answers (and nothing else is).
    free = free_port()
    server = HealthServer("127.0.0.1", free, lambda: (False, "starting"))

    async def run() -> list[tuple[int, bytes]]:
        await server.start()
        try:
            return [await asyncio.to_thread(_get, free, p) for p in (live["path"], ready["path"], "/metrics", "/nope")]
        finally:
            await server.stop()

    answers = asyncio.run(run())
    assert answers[0] == (200, b"ok\n")
    assert answers[1] == (503, b"starting\n")  # not ready until the outbox groups exist
    assert answers[2][0] == 200 and b"router_connector_outbox_oldest_seconds" in answers[2][1]
    assert answers[3][0] == 404


def test_the_connect_manifest_names_real_settings_and_reads_credentials_from_the_secret_as_files(
    tmp_path: Path,
) -> None:
    names, file_names = _setting_names()
    pod, container = _connect_container()
    env = {e["name"]: e for e in container["env"]}
    for name in env:
        if name.startswith("ROUTER_"):
            assert name in names | file_names, f"{name} is not a setting (router/settings.py)"
    files = [n for n in env if n.endswith("_FILE")]
    assert {f[: -len("_FILE")] for f in files} == {
        f"ROUTER_CONNECTORS_{s}".upper() for s in ("rt_token", "zendesk_token", "freshdesk_api_key")
    }
    refs = {next(iter(e.values()))["name"] for e in container["envFrom"]}
    assert refs == {"router-config", "router-secrets"}

    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    secret_name = volumes["credentials"]["secret"]["secretName"]
    secret = _docs("secret.yaml")[f"Secret/{secret_name}"]["stringData"]
    # Every *_FILE points into the mounted Secret, at a key the placeholder Secret lists.
    for name in files:
        path = Path(env[name]["value"])
        assert str(path.parent) == mounts["credentials"], name
        assert path.name in secret, f"{name}: key {path.name} is missing from the Secret {secret_name}"
    # None of them is in router-secrets as a variable too (set X or X_FILE, not both: the process would exit).
    shared = _docs("secret.yaml")["Secret/router-secrets"]["stringData"]
    assert not {f[: -len("_FILE")] for f in files} & set(shared)

    # The connector file: the ConfigMap's path key is where the volume puts the file, and it loads.
    config_ref = env["ROUTER_CONNECTORS_CONFIG_PATH"]["valueFrom"]["configMapKeyRef"]
    config_map = _docs("connect.yaml")[f"ConfigMap/{config_ref['name']}"]["data"]
    (item,) = volumes["connectors"]["configMap"]["items"]
    assert volumes["connectors"]["configMap"]["name"] == config_ref["name"]
    assert config_map[config_ref["key"]] == f"{mounts['connectors']}/{item['path']}"
    toml = tmp_path / item["path"]
    toml.write_text(config_map[item["key"]])
    assert load_connectors(str(toml)).names

    # Settings.from_env reads the pod's environment as it will be: the credentials from the files.
    for key, value in secret.items():
        (tmp_path / key).write_text(value + "\n")
    pod_env = {n: (str(tmp_path / Path(e["value"]).name) if n in files else e.get("value", "")) for n, e in env.items()}
    pod_env["ROUTER_CONNECTORS_CONFIG_PATH"] = str(toml)
    settings = Settings.from_env(pod_env)
    assert settings.connectors.rt_token == secret["rt-token"]
    assert settings.connectors.zendesk_token == secret["zendesk-token"]
    assert settings.connectors.freshdesk_api_key == secret["freshdesk-api-key"]
    assert "CHANGE-ME" not in repr(settings)  # masked


def test_the_api_reads_the_same_connector_file_only_when_its_configmap_exists() -> None:
    pod = _docs("api.yaml")["Deployment/router-api"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    ref = env["ROUTER_CONNECTORS_CONFIG_PATH"]["valueFrom"]["configMapKeyRef"]
    assert ref["optional"] is True and ref["name"] == "router-connectors"
    volume = next(v for v in pod["spec"]["volumes"] if v.get("configMap", {}).get("name") == "router-connectors")
    assert volume["configMap"]["optional"] is True
    _, connect = _connect_container()
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert mount["mountPath"] == next(m["mountPath"] for m in connect["volumeMounts"] if m["name"] == "connectors")


def _target(volume: str) -> str:
    """``source:target[:ro]`` -> target (the source may hold ``${VAR:-default}``)."""
    parts = volume.rsplit(":", 2)
    return parts[-2] if parts[-1] in ("ro", "rw") else volume.rsplit(":", 1)[1]


def test_compose_runs_connect_like_kubernetes_and_prometheus_scrapes_it() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    service = compose["services"]["connect"]
    assert service["command"] == ["connect"] and service["profiles"] == ["connectors"]
    env = service["environment"]
    names, _ = _setting_names()
    assert {n for n in env if n.startswith("ROUTER_")} <= names
    _, container = _connect_container()
    port = container["ports"][0]["containerPort"]
    assert int(env["ROUTER_CONNECTORS_HEALTH_PORT"]) == port
    assert env["HEALTHCHECK_URL"] == f"http://127.0.0.1:{port}{container['livenessProbe']['httpGet']['path']}"
    path = env["ROUTER_CONNECTORS_CONFIG_PATH"]
    assert path in {_target(v) for v in service["volumes"]}
    assert path in {_target(v) for v in compose["services"]["api"]["volumes"]}  # the API can read it too
    assert str(port) in (DEPLOY / "Dockerfile").read_text().split("EXPOSE", 1)[1].splitlines()[0]

    scrape = {j["job_name"]: j for j in yaml.safe_load((PROM / "prometheus.yml").read_text())["scrape_configs"]}
    (dns,) = scrape["router-connect"]["dns_sd_configs"]
    assert dns["names"] == ["connect"] and dns["port"] == port


_NAME = re.compile(r"(?<![\w:])(router_[a-z0-9_]+)")


def _exported() -> set[str]:
    """Every sample name the code's metrics produce (counters' _total, histograms' _bucket/_sum/_count)."""
    from prometheus_client import REGISTRY

    names: set[str] = set()
    for family in REGISTRY.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + s for s in suffixes}
    return names


def test_every_metric_the_dashboard_and_the_rules_select_is_exported() -> None:
    exprs = [
        r["expr"]
        for f in ("alerts.yml", "recording.yml")
        for g in yaml.safe_load((PROM / f).read_text())["groups"]
        for r in g["rules"]
    ]
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "router.json").read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in _NAME.findall(e)}
    connector_metrics = {m for m in used if m.startswith("router_connector_")}
    assert {
        "router_connector_outbox_oldest_seconds",
        "router_connector_circuit_open",
        "router_connector_writeback_failures_total",
        "router_connector_outbox_depth",
        "router_connector_dead_letters",
        "router_connector_polls_total",
    } <= connector_metrics
    missing = used - _exported()
    assert not missing, f"selected by the dashboard or rules but exported by no code: {sorted(missing)}"


def test_router_connect_refuses_the_placeholder_secret_before_connecting_to_anything() -> None:
    from router.connectors.worker import connect_stack

    shared = _docs("secret.yaml")["Secret/router-secrets"]["stringData"]
    settings = Settings.from_env({**shared, "ROUTER_AUTH_DEV_MODE": "false"})

    async def start() -> None:
        async with connect_stack(settings):
            raise AssertionError("started with a placeholder identity key")

    try:
        asyncio.run(start())
    except SystemExit as exc:
        assert "ROUTER_IDENTITY_HASH_KEY is a placeholder" in str(exc)
    else:
        raise AssertionError("no SystemExit")
