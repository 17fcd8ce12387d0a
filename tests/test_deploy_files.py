"""The deployment files agree with the schemas and with sandlot (pure, fast: the normal suite).

deploy/kubernetes/ must pass the Kubernetes schemas (kubernetes-validate, strict: unknown fields refused),
compose.yaml must be a compose file podman-compose accepts, and both must keep the promises docs/deploy.md
makes: every pod and container has more time to stop than sandlot's drain, every sandlot node is scraped,
every workload has resource requests and a PodDisruptionBudget. The images themselves are built and run by
the deploy tier (tests/deploy/, ``pytest -m deploy``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandlot.config import SERVER_DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "compose.yaml"
COMPOSE_PROMETHEUS = ROOT / "deploy" / "compose" / "prometheus.yml"
BIN = Path(sys.executable).parent


def _manifests() -> list[dict[str, Any]]:
    return [doc for path in sorted(KUBERNETES.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def _validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--quiet", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, f"a duration in seconds: {duration!r}"
    return float(match.group(1))


def _drain_deadline_s() -> float:
    config = next(doc for doc in _manifests() if doc["kind"] == "ConfigMap")
    return float(config["data"].get("SANDLOT_DRAIN_DEADLINE_S", SERVER_DEFAULTS.drain_deadline_s))


def test_kubernetes_manifests_pass_the_schemas() -> None:
    checked = _validate(*sorted(KUBERNETES.glob("*.yaml")))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_schema_check_refuses_an_unknown_field(tmp_path: Path) -> None:
    worker = yaml.safe_load_all((KUBERNETES / "worker.yaml").read_text())
    deployment = next(doc for doc in worker if doc["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 60  # a typo the API server would drop
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(deployment))
    assert _validate(bad).returncode != 0


def test_every_sandlot_pod_outlives_the_drain_and_requests_resources() -> None:
    deadline = _drain_deadline_s()
    workloads = [doc for doc in _manifests() if doc["kind"] == "Deployment"]
    assert {doc["metadata"]["name"] for doc in workloads} == {"sandlot-api", "sandlot-worker"}
    budgets = [doc for doc in _manifests() if doc["kind"] == "PodDisruptionBudget"]
    for workload in workloads:
        pod = workload["spec"]["template"]
        name = workload["metadata"]["name"]
        assert pod["spec"]["terminationGracePeriodSeconds"] > deadline, name
        for container in pod["spec"]["containers"]:
            assert {"cpu", "memory"} <= container["resources"]["requests"].keys(), name
            assert container["securityContext"] == {"privileged": True}, name  # as docs/deploy.md says
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", name
        ports = {p["containerPort"] for c in pod["spec"]["containers"] for p in c["ports"]}
        assert int(annotations["prometheus.io/port"]) in ports, name
        labels = pod["metadata"]["labels"]
        assert any(b["spec"]["selector"]["matchLabels"].items() <= labels.items() for b in budgets), name


def test_compose_file_is_accepted_by_podman_compose() -> None:
    checked = subprocess.run(
        [str(BIN / "podman-compose"), "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert set(yaml.safe_load(checked.stdout)["services"]) == {
        "api",
        "worker-1",
        "worker-2",
        "redis",
        "prometheus",
        "grafana",
    }


def test_compose_drains_scrapes_every_node_and_publishes_one_public_port() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    sandlot = {name: s for name, s in services.items() if s["image"].startswith("${SANDLOT_IMAGE")}
    assert set(sandlot) == {"api", "worker-1", "worker-2"}
    targets = set(yaml.safe_load(COMPOSE_PROMETHEUS.read_text())["scrape_configs"][0]["static_configs"][0]["targets"])
    for name, service in sandlot.items():
        assert _seconds(service["stop_grace_period"]) > SERVER_DEFAULTS.drain_deadline_s, name
        port = service["environment"].get("SANDLOT_WORKER_METRICS_PORT", SERVER_DEFAULTS.http_port)
        assert f"{name}:{port}" in targets, name
    assert "--appendonly" in services["redis"]["command"]
    public = [p for s in services.values() for p in s.get("ports", []) if not p.startswith("127.0.0.1:")]
    assert public == ["${SANDLOT_PORT:-8080}:8080"]
    mounted = [v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if v.startswith("./")]
    assert mounted and all((ROOT / m).exists() for m in mounted), mounted


def test_compose_prometheus_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    checked = subprocess.run(
        [promtool, "check", "config", str(COMPOSE_PROMETHEUS)], capture_output=True, text=True, timeout=30, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
