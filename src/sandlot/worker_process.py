"""``sandlot worker``: a process that only runs jobs, claimed from the shared Redis broker.

Theory of operation
-------------------
A worker node is the Service of an API node minus the doors: the pool, the
engine and the worker loops, wired to the ``RedisBroker`` (``Service.start``).
It opens no listener; it is found through Redis alone (its presence there is
refreshed every few seconds). On SIGTERM or SIGINT it drains: it
stops claiming and stops being sent its sessions' jobs at once, hands back the
jobs it claimed but had not started, lets its running jobs finish until
``drain_deadline_s`` and hands back those still running then (another worker
runs them from the start, at once: see ``Worker.drain``), closes the broker and
releases every box (cgroups, mounts) before it exits 0.

It has no HTTP door, so its metrics (executions, box waits, the pool) are
served, if ``worker_metrics_port`` is set, by prometheus_client's own small
threaded listener on ``host``: Prometheus scrapes every worker as it scrapes
the API nodes' ``/metrics`` (deploy/prometheus.yml, compose.yaml).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from prometheus_client import start_http_server
from prometheus_client.registry import CollectorRegistry

from sandlot.config import ServerSettings, Settings
from sandlot.service import Service, count_boxes, effective_claim_idle_ms, freeze_start_up_objects, stop_on_signals

log = logging.getLogger("sandlot.worker_process")


async def run_worker(settings: Settings, server: ServerSettings) -> None:
    """Run jobs until SIGTERM/SIGINT, then drain and release every box."""
    with stop_on_signals() as stop:
        service = await Service.start(settings, server)
        # Outside the drain's try: the metrics stay readable while the worker drains.
        with metrics_listener(server.host, server.worker_metrics_port, service.metrics.registry):
            try:
                await service.announce_environments(None)  # no listener: its environments are recorded, not served
                log.warning(
                    "sandlot worker running %s on %s (claim timeout %d ms)",
                    count_boxes(service.pool.size),
                    _redacted(server.redis_url),
                    effective_claim_idle_ms(settings, server),
                )
                freeze_start_up_objects()
                await stop.wait()
                log.warning("sandlot worker draining (deadline %.0f s)", server.drain_deadline_s)
            finally:
                await service.stop()  # stop claiming, finish or kill running jobs, release the boxes
                log.warning("sandlot worker stopped; boxes released")


@contextmanager
def metrics_listener(host: str, port: int, registry: CollectorRegistry) -> Iterator[None]:
    """Serve ``registry`` on http://host:port/metrics while inside; no listener when ``port`` is 0."""
    if not port:
        yield
        return
    httpd, thread = start_http_server(port, addr=host, registry=registry)
    try:
        yield
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _redacted(url: str) -> str:
    """The URL without its credentials, for the log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc).geturl()
