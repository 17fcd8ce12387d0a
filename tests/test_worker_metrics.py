"""``sandlot worker``'s metrics listener (``worker_metrics_port``): what Prometheus scrapes on a worker.

The listener serves a real registry over real HTTP on loopback, and is gone after (a reserved port: root).
"""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from sandlot.worker_process import metrics_listener
from tests.nodes import free_ports


def test_metrics_listener_serves_the_registry_then_closes() -> None:
    registry = CollectorRegistry()
    Counter("sandlot_probe_total", "a probe", registry=registry).inc(3)
    (port,) = free_ports(1)
    with metrics_listener("127.0.0.1", port, registry):
        answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
        assert answer.status_code == 200
        assert "sandlot_probe_total 3.0" in answer.text
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
