"""``sandlot run hello.py`` as a whole process, side by side with the bare interpreter running the same file.

Judges and scripts call the CLI once per test, so the whole process counts:
interpreter start, sandlot's imports, the cold box and the program. hyperfine
(Debian package ``hyperfine``) runs both commands back to back in one session;
this prints their mean wall time and CPU time (user+system, which a loaded
machine disturbs less) and the ratios, then the import cost of ``sandlot.cli``
alone (``python -X importtime``, the median of several fresh interpreters).

sandlot's bytecode is compiled first: an installed package has its ``.pyc``
files, while an editable install under ``PYTHONDONTWRITEBYTECODE=1`` would
otherwise compile every module from source on every call (~20 ms here).
``--phases N`` then times each step of N runs from an ``strace`` timeline
(Debian package ``strace``; tracing slows each step a little): sandlot's start
until the jail is spawned, the helper, bubblewrap, the program, the teardown.
``--before SRC`` compares with another checkout's ``src`` (``mkdir -p /tmp/main &&
git archive main src | tar -x -C /tmp/main``), the two interleaved round by round.
The cold path is forced with ``--local`` (a ``sandlot serve`` on this host would
otherwise take the run). ``--warm`` measures the warm path instead (cli_warm.py):
a ``sandlot serve`` is started on free ports with its own temporary state and run
dirs, cgroup and box uids, and ``sandlot run hello.py`` is handed to it.

    sudo .venv/bin/python benchmarks/cli_startup.py [--runs 50] [--phases 20] [--before /tmp/main/src] [--warm]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sandlot as sandlot_package

HELLO = "print('hello')\n"
_IMPORT_SAMPLES = 15


def _hyperfine(commands: list[str], runs: int) -> list[tuple[float, float, float]]:
    """(mean wall, min wall, mean CPU) seconds of each command, measured by hyperfine in one session."""
    with tempfile.NamedTemporaryFile(suffix=".json") as export:
        subprocess.run(
            [
                "hyperfine",
                "--warmup",
                "3",
                "--runs",
                str(runs),
                "--style",
                "none",
                "--export-json",
                export.name,
                *commands,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        data = json.loads(Path(export.name).read_text())
    return [(float(r["mean"]), float(r["min"]), float(r["user"]) + float(r["system"])) for r in data["results"]]


def _import_ms(python: str, module: str) -> float:
    """Median cumulative import time of ``module`` in a fresh interpreter (-X importtime), in ms."""
    samples = []
    for _ in range(_IMPORT_SAMPLES):
        proc = subprocess.run(
            [python, "-X", "importtime", "-c", f"import {module}"], capture_output=True, text=True, check=True
        )
        line = next(line for line in proc.stderr.splitlines() if line.rstrip().endswith(f"| {module}"))
        samples.append(int(line.split("|")[1]) / 1000)
    return statistics.median(samples)


_PHASES = (
    ("interpreter, imports, settings, box opened (until the jail is spawned)", "cli", "helper"),
    ("helper launch: join the box's cgroups, rlimits, drop to the box uid", "helper", "bwrap"),
    ("bubblewrap: namespaces, mounts, seccomp, exec of the box's init", "bwrap", "init"),
    ("init to the program's exec (the command arrives once asyncio is loaded)", "init", "program"),
    ("the program (python3 hello.py in the box)", "program", "program_exit"),
    ("after the program: reap, cgroup removal, box closed, exit", "program_exit", "cli_exit"),
)


_STRACE = ("strace", "--seccomp-bpf", "-f", "-ttt", "-e", "trace=execve,exit_group,write")


def _phase_times(trace: str, hello: Path) -> dict[str, float]:
    """Seconds at which each step of one run happened, from an ``strace -ttt -f`` log of it."""
    at: dict[str, float] = {}
    program_pid = ""
    first_pid = ""
    for line in trace.splitlines():
        match = re.match(r"(\d+)\s+([\d.]+)\s+(.*)", line)
        if match is None:
            continue
        pid, when, call = match[1], float(match[2]), match[3]
        first_pid = first_pid or pid
        if call.startswith("execve("):
            path = call.split('"', 2)[1]
            name = "cli" if not at else "helper" if "sandlot-helper" in path else ""
            name = name or ("bwrap" if path.endswith("/bwrap") else "init" if path == "/.init" else "")
            if not name and "init" in at and "program" not in at and hello.name in call:
                name, program_pid = "program", pid
            if name and name not in at:
                at[name] = when
        elif call.startswith("write(") and pid == first_pid and "helper" in at and "program" not in at:
            at["command_sent"] = when  # sandlot's last write before the program starts: its command
        elif call.startswith("exit_group(") and pid == program_pid:
            at.setdefault("program_exit", when)
        elif call.startswith("+++ exited") and pid == first_pid:
            at["cli_exit"] = when
    return at


def _phases(sandlot: Path, hello: Path, runs: int) -> None:
    """Where the time of one ``sandlot run`` goes: medians over runs of an strace timeline (a little slowed)."""
    samples: dict[str, list[float]] = {}
    for _ in range(runs):
        with tempfile.NamedTemporaryFile(suffix=".strace") as log:
            subprocess.run(
                [*_STRACE, "-o", log.name, str(sandlot), "run", "--local", str(hello)],
                check=True,
                stdout=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
            )
            at = _phase_times(Path(log.name).read_text(), hello)
        for label, start, end in _PHASES:
            samples.setdefault(label, []).append((at[end] - at[start]) * 1000)
        samples.setdefault("whole run", []).append((at["cli_exit"] - at["cli"]) * 1000)
        meanwhile = "meanwhile in sandlot, from the spawn to the command sent (asyncio loaded, the run set up)"
        samples.setdefault(meanwhile, []).append((at["command_sent"] - at["helper"]) * 1000)
    print(f"phases of one run under strace (median of {runs}):")
    for label, values in samples.items():
        print(f"  {statistics.median(values):6.1f} ms  {label}")


_ENTRYPOINT = "from sandlot.cli import entrypoint; entrypoint()"


def _compare(before_src: Path, hello: Path, rounds: int) -> None:
    """Another ``src`` tree (say, main's) against this one, interleaved: each round runs both in random order.

    hyperfine runs all of one command, then all of the other; on a shared machine the load drifts between
    the two. Both run as ``python -c <entrypoint> run hello.py``, the old one through ``PYTHONPATH``.
    """
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(before_src)], check=True)
    env_before = {**os.environ, "PYTHONPATH": str(before_src)}
    variants = {"before": env_before, "after": dict(os.environ)}
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    command = [sys.executable, "-c", _ENTRYPOINT, "run", str(hello)]
    for round_ in range(rounds + 1):
        for name in random.sample(list(variants), len(variants)):
            used = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run(command, env=variants[name], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
            took = time.perf_counter() - start
            now = resource.getrusage(resource.RUSAGE_CHILDREN)
            if round_:  # the first round warms up
                wall[name].append(took * 1000)
                cpu[name].append((now.ru_utime - used.ru_utime + now.ru_stime - used.ru_stime) * 1000)
    print(f"before ({before_src}) and after, interleaved, {rounds} rounds:")
    for name in variants:
        w = wall[name]
        print(
            f"  {name:<7} wall mean {statistics.mean(w):6.1f} ms, median {statistics.median(w):6.1f} ms, "
            f"min {min(w):6.1f} ms; CPU mean {statistics.mean(cpu[name]):6.1f} ms"
        )


_WARM_UID_BASE = 960000000  # apart from the tests' box uids and a real install's
_READY_TIMEOUT_S = 180.0  # a fresh state dir warms the Go cache first


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _warm_server(sandlot: Path, tmp: str) -> Iterator[dict[str, str]]:
    """A ready ``sandlot serve`` with its own state/run dirs; yields the environment that reaches it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDLOT_")} | {
        "SANDLOT_STATE_DIR": f"{tmp}/state",
        "SANDLOT_RUN_DIR": f"{tmp}/run",
        "SANDLOT_CGROUP_NAME": "sandlot-bench-warm",
        "SANDLOT_BOX_UID_BASE": str(_WARM_UID_BASE),
    }
    http_port, grpc_port = _free_port(), _free_port()
    ports = ["--http-port", str(http_port), "--grpc-port", str(grpc_port), "--gvisor-pool-size", "0"]
    with open(f"{tmp}/serve.log", "wb") as log:
        server = subprocess.Popen(
            [str(sandlot), "serve", *ports], env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=2) as ready:
                    if ready.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"cli_startup.py: sandlot serve did not get ready: see {tmp}/serve.log")
            time.sleep(0.2)  # polling a readiness endpoint, not timing anything
        yield env
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()


def _warm(sandlot: Path, hello: Path, tmp: str, runs: int) -> None:
    """The warm path against the bare interpreter: mean and min of each, and the ratio."""
    with _warm_server(sandlot, tmp) as env:
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)  # hyperfine's commands inherit it
        try:
            bare, warm = _hyperfine([f"/usr/bin/python3 {hello}", f"{sandlot} run {hello}"], runs)
        finally:
            os.environ.clear()
            os.environ.update(saved)
    print(f"warm path ({runs} runs, a sandlot serve on {env['SANDLOT_RUN_DIR']}/serve.sock):")
    for name, (wall, wall_min, cpu) in (("python3 hello.py (bare)", bare), ("sandlot run hello.py (warm)", warm)):
        print(f"  {name:<30} mean {wall * 1000:6.1f} ms, min {wall_min * 1000:6.1f} ms, CPU {cpu * 1000:6.1f} ms")
    print(f"  ratio: wall {warm[0] / bare[0]:.2f}x (+{(warm[0] - bare[0]) * 1000:.1f} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--phases", type=int, default=0, help="Also time each phase of N runs with strace.")
    parser.add_argument("--before", type=Path, help="Also compare with another src tree (say, main's), interleaved.")
    parser.add_argument("--warm", action="store_true", help="Measure the warm path (a sandlot serve) instead.")
    args = parser.parse_args()
    if shutil.which("hyperfine") is None:
        sys.exit("cli_startup.py: needs hyperfine (apt-get install hyperfine; scripts/setup.sh installs it)")
    sandlot = Path(sys.executable).with_name("sandlot")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(sandlot_package.__file__).parent)], check=True)
    with tempfile.TemporaryDirectory(prefix="sandlot-bench-", dir="/var/tmp") as tmp:
        os.chmod(tmp, 0o755)
        hello = Path(tmp, "hello.py")
        hello.write_text(HELLO)
        if args.warm:
            _warm(sandlot, hello, tmp, args.runs)
            return
        bare_cmd, sandlot_cmd = f"/usr/bin/python3 {hello}", f"{sandlot} run --local {hello}"
        bare, boxed = _hyperfine([bare_cmd, sandlot_cmd], args.runs)
        print(f"{'command':<28} {'wall (mean)':>12} {'wall (min)':>12} {'CPU (mean)':>12}")
        for name, (wall, wall_min, cpu) in (("python3 hello.py (bare)", bare), ("sandlot run hello.py", boxed)):
            print(f"{name:<28} {wall * 1000:>9.1f} ms {wall_min * 1000:>9.1f} ms {cpu * 1000:>9.1f} ms")
        extra_ms = (boxed[0] - bare[0]) * 1000
        print(f"ratio: wall {boxed[0] / bare[0]:.2f}x (+{extra_ms:.1f} ms), CPU {boxed[2] / bare[2]:.2f}x")
        print(f"import sandlot.cli: {_import_ms(sys.executable, 'sandlot.cli'):.1f} ms (median of {_IMPORT_SAMPLES})")
        if args.phases:
            _phases(sandlot, hello, args.phases)
        if args.before:
            _compare(args.before, hello, args.runs)


if __name__ == "__main__":
    main()
