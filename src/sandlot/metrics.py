"""Every metric sandlot exports, defined once, on a registry created at start-up.

The ``engine_*`` names are the ones existing dashboards use; ``sandlot_*`` are
ours. Gauges that mirror live state (queue depth, pool, sessions) are read at
scrape time from the objects that own that state, never copied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sandlot.models import Result, Status

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _LiveState(Collector):
    """Scrape-time gauges: each a callable returning the current value."""

    def __init__(self, probes: dict[str, tuple[str, Callable[[], Iterable[tuple[dict[str, str], float]]]]]) -> None:
        self._probes = probes

    def collect(self) -> Iterable[Metric]:
        for name, (doc, probe) in self._probes.items():
            samples = list(probe())
            labels = sorted(samples[0][0]) if samples else []
            family = GaugeMetricFamily(name, doc, labels=labels)
            for label_values, value in samples:
                family.add_metric([label_values[k] for k in labels], value)
            yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.execution_latency = Histogram(
            "engine_execution_latency_seconds",
            "Wall time of an execution, queueing excluded",
            ["language"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.sandbox_timeouts = Counter(
            "engine_sandbox_timeouts_total", "Executions ended by a CPU or wall-clock limit", registry=r
        )
        self.sandbox_oom_kills = Counter(
            "engine_sandbox_oom_kills_total", "Executions ended by the OOM killer", registry=r
        )
        self.active_workers = Gauge("engine_active_workers_count", "Executions running right now", registry=r)
        self.executions = Counter(
            "sandlot_executions_total", "Finished executions by language and status", ["language", "status"], registry=r
        )
        self.box_wait = Histogram(
            "sandlot_box_wait_seconds", "Time a task waited for a box", buckets=LATENCY_BUCKETS_S, registry=r
        )
        self.requests = Counter(
            "sandlot_requests_total", "Requests by door and response code", ["door", "code"], registry=r
        )

    def watch(
        self,
        *,
        queue_depth: Callable[[], float],
        pool_busy: Callable[[], float],
        pool_available: Callable[[], float],
        sessions: Callable[[], float],
    ) -> None:
        """Register the scrape-time gauges over the live objects."""
        self.registry.register(
            _LiveState(
                {
                    "sandlot_queue_depth": ("Tasks waiting for a worker", lambda: [({}, queue_depth())]),
                    "sandlot_pool_boxes": (
                        "Boxes by state",
                        lambda: [({"state": "busy"}, pool_busy()), ({"state": "available"}, pool_available())],
                    ),
                    "sandlot_sessions_active": ("Live sessions", lambda: [({}, sessions())]),
                }
            )
        )

    def watch_stateful(self, sessions: Callable[[], float]) -> None:
        """Register the gauge of live stateful sessions (each pins a box)."""
        self.registry.register(
            _LiveState({"sandlot_stateful_sessions_active": ("Live stateful sessions", lambda: [({}, sessions())])})
        )

    def record(self, result: Result) -> None:
        """Count one finished execution (called in the worker's finally)."""
        language = result.language or "unknown"
        self.executions.labels(language=language, status=result.status.value).inc()
        if result.status not in (Status.REJECTED, Status.INTERNAL_ERROR):
            self.execution_latency.labels(language=language).observe(result.wall_time)
        if result.status is Status.TIMEOUT:
            self.sandbox_timeouts.inc()
        elif result.status is Status.MEMORY_LIMIT:
            self.sandbox_oom_kills.inc()
