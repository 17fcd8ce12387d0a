"""Cell latency of a stateful session next to a plain run of the same code, and memory per idle session.

A real ``sandlot serve`` (the default settings, ``--pool-size`` boxes) is started as a
subprocess and stopped by its PID at the end (``http_run._server``). In the same run:

  plain     ``POST /api/v1/run {"language": "python", "code": CODE}``: a fresh interpreter per run
  cell      ``POST /api/v1/run {"session_id": ..., "code": CODE}``: a cell of one stateful session

one request after another on one keep-alive connection, after a warm-up; every answer
is checked (200, status ok, stdout ``hi``). Then ``--sessions`` stateful sessions are
opened and left idle: memory per idle session is the box's cgroup peak as a cell
reports it (the interpreter and the box's init: what the session holds in the box)
and the server's own RSS growth per session (host side: its task, queues, buffers).

    sudo .venv/bin/python benchmarks/stateful_cell.py [--pool-size 4] [--requests 200] [--sessions 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import httpx

from http_run import _server

CODE = "print('hi')"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _series(client: httpx.Client, body: dict[str, object], count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        reply = client.post("/api/v1/run", json=body)
        times.append((time.perf_counter() - started) * 1000)
        data = reply.json()
        if reply.status_code != 200 or data["status"] != "ok" or data["stdout"] != "hi\n":
            raise SystemExit(f"unexpected answer: {reply.status_code} {reply.text[:300]}")
    return times


def _server_pid(port: str) -> int:
    """The ``sandlot serve`` listening on this port (ours: started by _server)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in cmdline and port.encode() in cmdline:
                return int(entry.name)
    raise SystemExit("the server's process was not found")


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool-size", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200, help="requests per series (default 200)")
    parser.add_argument("--sessions", type=int, default=3, help="idle sessions for the memory figure (default 3)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: sandlot serve needs it")
    with _server(args.pool_size, None) as base, httpx.Client(base_url=base, timeout=60) as client:
        opened = client.post("/api/v1/sessions", json={"stateful": True, "language": "python"})
        opened.raise_for_status()
        session_id = opened.json()["session_id"]
        plain_body: dict[str, object] = {"language": "python", "code": CODE}
        cell_body: dict[str, object] = {"session_id": session_id, "code": CODE}
        _series(client, plain_body, 20)  # warm-up: both paths, every box
        _series(client, cell_body, 20)
        plain = _series(client, plain_body, args.requests)
        cells = _series(client, cell_body, args.requests)
        client.delete(f"/api/v1/sessions/{session_id}").raise_for_status()

        pid = _server_pid(base.rsplit(":", 1)[1])
        time.sleep(1.0)  # the ended session's box is reset and its next jail launched
        rss_before = _rss_bytes(pid)
        ids, peaks = [], []
        for _ in range(args.sessions):
            reply = client.post("/api/v1/sessions", json={"stateful": True})
            reply.raise_for_status()
            ids.append(reply.json()["session_id"])
        for sid in ids:
            peaks.append(client.post("/api/v1/run", json={"session_id": sid, "code": "pass"}).json()["memory_peak"])
        rss_after = _rss_bytes(pid)
        for sid in ids:
            client.delete(f"/api/v1/sessions/{sid}")

    p50_plain, p50_cell = statistics.median(plain), statistics.median(cells)
    print(f"sandlot serve --pool-size {args.pool_size}; {args.requests} sequential requests each; code {CODE!r}")
    print(f"load average before the end: {os.getloadavg()[0]:.2f}")
    print(f"{'series':<8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for name, times in (("plain", plain), ("cell", cells)):
        print(
            f"{name:<8} {statistics.median(times):8.2f} {_percentile(times, 0.99):8.2f} {statistics.mean(times):8.2f}"
        )
    print(f"cell / plain (p50): {p50_cell / p50_plain:.2f}  (saved {p50_plain - p50_cell:.2f} ms per run)")
    mib = 1024 * 1024
    print(
        f"idle stateful session: box cgroup peak {statistics.mean(peaks) / mib:.1f} MiB "
        f"(over {len(peaks)}), server RSS +{(rss_after - rss_before) / len(ids) / mib:.2f} MiB per session"
    )


if __name__ == "__main__":
    main()
