"""The metrics as a real Prometheus sees them, and the deploy/ files that ship for it.

A ``sandlot serve`` process runs five executions (three ok, one runtime error,
one timeout); then the Debian package's ``/usr/bin/prometheus`` scrapes it with
the job from ``deploy/prometheus.yml`` (only the target and a 1 s interval
changed), and its query API must report exactly those counts. The Grafana
dashboard's every query must name metrics the server exposes and evaluate to
data on that Prometheus. Both processes are stopped by PID and their
directories removed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.nodes import Node, free_ports
from tests.test_serve_process import assert_nothing_left, execution, running_server, sweep

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "sandlot-dashboard.json"
PROMETHEUS = Path("/usr/bin/prometheus")
DEPLOY_TARGET = "127.0.0.1:8080"

SCRAPE_WAIT_S = 30.0  # Prometheus's own start-up plus its first scrapes
QUERY_POLL_S = 0.5
PROMETHEUS_STOP_S = 10.0

# Every metric the server exports, as the dashboard must query it (histograms through their buckets).
EXPORTED = {
    "engine_execution_latency_seconds_bucket",
    "engine_sandbox_timeouts_total",
    "engine_sandbox_oom_kills_total",
    "engine_active_workers_count",
    "sandlot_executions_total",
    "sandlot_box_wait_seconds_bucket",
    "sandlot_requests_total",
    "sandlot_queue_depth",
    "sandlot_pool_boxes",
    "sandlot_sessions_active",
}
RUNS = [  # (code, limits, expected status)
    ("print('ok')\n", None, "ok"),
    ("print('ok')\n", None, "ok"),
    ("print('ok')\n", None, "ok"),
    ("raise SystemExit(3)\n", None, "runtime_error"),
    ("while True:\n    pass\n", {"time_limit": 0.5}, "timeout"),
]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(name="served", scope="module")
def served_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A server that has run RUNS, each to its expected status."""
    sweep()
    try:
        with (
            running_server(tmp_path_factory.mktemp("serve"), pool_size=2) as server,
            httpx.Client(base_url=server.url, timeout=30.0) as client,
        ):
            for code, limits, expected in RUNS:
                response = client.post("/api/v1/run", json=execution(code, limits))
                assert response.status_code == 200, response.text
                assert response.json()["status"] == expected, response.json()
            yield server
            assert server.stop() == 0, server.output()
        assert_nothing_left()
    finally:
        sweep()


@pytest.fixture(name="prometheus", scope="module")
def prometheus_fixture(served: Node) -> Iterator[str]:
    """A real Prometheus scraping the server every second; yields its base URL once it is ready."""
    if not PROMETHEUS.exists():
        pytest.skip(f"{PROMETHEUS} is not installed (Debian package prometheus)")
    (port,) = free_ports(1)
    with tempfile.TemporaryDirectory(prefix="sandlot-prometheus-") as work_dir:
        work = Path(work_dir)
        config = work / "prometheus.yml"
        config.write_text(json.dumps(_scrape_config(f"127.0.0.1:{served.http_port}")))  # JSON is YAML
        log = work / "prometheus.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    str(PROMETHEUS),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={work / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait(lambda: _ready(url), proc, log, "Prometheus is ready")
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(PROMETHEUS_STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _scrape_config(target: str) -> dict[str, Any]:
    """deploy/prometheus.yml, pointed at target and scraping every second."""
    yaml = pytest.importorskip("yaml")
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "sandlot"]
    assert job["static_configs"] == [{"targets": [DEPLOY_TARGET]}]
    job.update(scrape_interval="1s", scrape_timeout="1s", static_configs=[{"targets": [target]}])
    return config


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=2.0).status_code == 200
    except httpx.TransportError:
        return False


def _wait(ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    """Poll an outside process (there is no event to wait on), bounded; fails at once, with its log, if it exits."""
    deadline = time.monotonic() + SCRAPE_WAIT_S
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {SCRAPE_WAIT_S:g} s: {what}\n{log.read_text(errors='replace')}")
        try:
            code = proc.wait(QUERY_POLL_S)
        except subprocess.TimeoutExpired:
            continue
        pytest.fail(f"prometheus exited with {code}: {log.read_text(errors='replace')}")


# ----------------------------------------------------------------- queries


def _query(url: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5.0)
    body = response.json()
    assert body["status"] == "success", (expr, body)
    assert body["data"]["resultType"] == "vector", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _value(url: str, expr: str) -> float | None:
    """The value of an expression selecting one series, or None when it selects none."""
    result = _query(url, expr)
    if not result:
        return None
    assert len(result) == 1, (expr, result)
    return float(result[0]["value"][1])


def _wait_for_scrapes(url: str, count: int) -> None:
    """Until Prometheus holds count successful scrapes of the server."""
    deadline = time.monotonic() + SCRAPE_WAIT_S
    expr = 'sum_over_time(up{job="sandlot"}[1m])'
    while (_value(url, expr) or 0) < count:
        assert time.monotonic() < deadline, f"fewer than {count} scrapes within {SCRAPE_WAIT_S:g} s"
        time.sleep(QUERY_POLL_S)


def _exposed(server: Node) -> set[str]:
    """The sample names on the server's /metrics (a histogram's _bucket, _count, _sum; a counter's _total)."""
    text = httpx.get(f"{server.url}/metrics", timeout=5.0).text
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def _dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def _concrete(expr: str) -> str:
    """A dashboard query with Grafana's variables filled as Grafana would for "All" and a 1 s scrape."""
    return expr.replace("$__rate_interval", "1m").replace("$instance", ".*")


# ------------------------------------------------------------------- tests


def test_prometheus_sees_every_execution(prometheus: str) -> None:
    # All runs finished before Prometheus started: its first scrape already holds the final counts.
    _wait_for_scrapes(prometheus, 1)
    expected = {
        'up{job="sandlot"}': 1.0,
        "sum(sandlot_executions_total)": 5.0,
        'sum(sandlot_executions_total{status="ok"})': 3.0,
        'sandlot_executions_total{status="runtime_error"}': 1.0,
        'sandlot_executions_total{status="timeout"}': 1.0,
        "engine_sandbox_timeouts_total": 1.0,
        "engine_sandbox_oom_kills_total": 0.0,
        'engine_execution_latency_seconds_count{language="python"}': 5.0,
        'engine_execution_latency_seconds_bucket{language="python", le="+Inf"}': 5.0,
        "sandlot_box_wait_seconds_count": 5.0,
        "engine_active_workers_count": 0.0,
        "sandlot_queue_depth": 0.0,
        'sandlot_pool_boxes{state="busy"}': 0.0,
        'sandlot_pool_boxes{state="available"}': 2.0,
        "sandlot_sessions_active": 0.0,
    }
    assert {expr: _value(prometheus, expr) for expr in expected} == expected
    # The five runs were answered 200 (the scrapes themselves add to the count too).
    assert (_value(prometheus, 'sum(sandlot_requests_total{door="http", code="200"})') or 0) >= 5


def test_dashboard_queries_name_exposed_metrics(served: Node) -> None:
    exposed = _exposed(served)
    named: set[str] = set()
    for title, expr in _dashboard_queries():
        names = set(re.findall(r"\b(?:engine|sandlot)_\w+", expr))
        assert names, f"{title}: {expr} queries no sandlot metric"
        assert names <= exposed, f"{title}: {sorted(names - exposed)} not on /metrics"
        named |= names
    assert named == EXPORTED  # every metric has a panel


def test_dashboard_queries_return_data_on_prometheus(prometheus: str) -> None:
    # Two scrapes make every rate() defined: then each query must evaluate to data, not just parse.
    _wait_for_scrapes(prometheus, 2)
    empty = [(title, expr) for title, expr in _dashboard_queries() if not _query(prometheus, _concrete(expr))]
    assert empty == []


def test_dashboard_is_an_importable_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    assert [(i["name"], i["type"], i["pluginId"]) for i in dashboard["__inputs"]] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")
    ]
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert len({target["refId"] for target in panel["targets"]}) == len(panel["targets"]), panel["title"]


def test_deploy_prometheus_config_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    checked = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
