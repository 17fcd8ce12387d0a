"""Environments (issue 15): run latency in an imported environment vs on the host, both pre-launched, side by
side; the import of a podman-saved image; the build of a small declared spec, cold and cached.

Runs: the python image of ``tests/environments/test_environments_run.py`` (the host's python3, its
libraries and a stdlib slice) is imported into the test store under a fresh name. A pool of two boxes (the
server's ``BoxPool`` and ``Engine``, jails pre-launched as in ``sandlot serve``) runs ``print(1)``
alternately on the host, in the environment, and in the environment on a box launched for the host
("env-cold": what every run in an environment cost before pre-launching per environment), ``--runs``
times each after one warm-up each; a run's
latency is from asking the pool for a box to its exit event. Prints each side's median and minimum, how
many runs took a pre-launched jail, and the ratio of the medians. The image's stdlib is a slice of the
host's and it has no dist-packages (whose .pth files the host's python reads at start-up): ``print(1)``
costs python less there. "host -S" and "env -S" run the same binary with ``-S`` (no site module)
through ``Box.run`` alone, so the roots' contents matter as little as they can: that pair is the sandbox's
own difference. Runs are ``--pause`` apart (0.5 s): a box's next jail starts in the background when its
run ends, and a run on that box before it is up waits for the rest (whatever the environment); the
pause keeps that out of every side alike, as a server whose boxes are not all busy would.

Import: that image's root as ``podman import`` + ``podman save --format oci-archive`` write it, then
``EnvironmentStore.import_image`` of the archive (and again under another name: cached).

Build: ``[environment] apt = ["busybox"]`` (bookworm minbase from deb.debian.org), then the same spec
again (cached); ``--no-build`` skips it. Every name is removed after.

    sudo .venv/bin/python benchmarks/env_run.py [--runs 30] [--isolation jail|gvisor] [--no-build] [--pause 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import TEST_STATE_DIR, make_settings
from tests.environments.test_environments_run import _python_layer
from tests.oci_images import write_oci_layout

from sandlot.config import Settings
from sandlot.engine import Engine, PreparedJob
from sandlot.environments.build import Builder
from sandlot.environments.spec import parse_spec
from sandlot.environments.store import EnvironmentStore
from sandlot.languages import LanguageRegistry
from sandlot.models import ExitEvent, Job, Result, SourceFile, Status
from sandlot.pool import BoxPool
from sandlot.sandbox import Sandbox


async def _one(pool: BoxPool, engine: Engine, prepared: PreparedJob, *, cold: bool) -> tuple[float, bool]:
    """One run's latency and whether it took a pre-launched jail; ``cold``: the lease does not name the
    environment, so the pool hands out a box launched for the host (every environment's run before)."""
    started = time.perf_counter()
    async with pool.lease("bench", rootfs=None if cold else prepared.rootfs) as box:
        async for event in engine.execute(prepared, box):
            if isinstance(event, ExitEvent):
                elapsed = time.perf_counter() - started
                assert event.result.status is Status.OK and event.result.stdout == b"1\n", event.result
        return elapsed, box.last_run_warm


async def _one_raw(pool: BoxPool, settings: Settings, rootfs: Path | None) -> tuple[float, bool]:
    """The same binary with the same arguments on both sides: python3.11 -S (no site: the roots' contents
    matter as little as they can), through ``Box.run`` without the engine."""
    started = time.perf_counter()
    async with pool.lease("bench", rootfs=rootfs) as box:
        command = ["/usr/bin/python3.11", "-S", "-c", "print(1)"]
        async for item in box.run(command, limits=settings.run_defaults, rootfs=rootfs):
            if isinstance(item, Result):
                elapsed = time.perf_counter() - started
                assert item.status is Status.OK and item.stdout == b"1\n", item
        return elapsed, box.last_run_warm


async def _runs(name: str, runs: int, isolation: str, pause_s: float) -> None:
    settings = make_settings()
    languages = LanguageRegistry.load(settings.languages_file)
    engine = Engine(settings, languages, environments=EnvironmentStore(TEST_STATE_DIR))
    root = engine.environments.rootfs(name) if engine.environments else None
    sides = {
        label: engine.prepare(Job(language="python", files=(SourceFile("main", b"print(1)"),), environment=env))
        for label, env in (("host", ""), ("env", name), ("env-cold", name))
    }
    pool = BoxPool(Sandbox(settings), 2, max_waiting=4, prelaunch_binds=engine.prelaunch_binds, isolation=isolation)
    await pool.start()
    try:
        times: dict[str, list[float]] = {label: [] for label in sides}
        warm = dict.fromkeys(sides, 0)
        raw = {"host -S": None, "env -S": root}
        times.update({label: [] for label in raw})
        warm.update(dict.fromkeys(raw, 0))
        for label, prepared in sides.items():  # warm-up: the environment's box follows it from now on
            await _one(pool, engine, prepared, cold=label == "env-cold")
        for _ in range(runs):
            for label, prepared in sides.items():
                await asyncio.sleep(pause_s)  # the boxes' next jails finish starting (see the docstring)
                elapsed, was_warm = await _one(pool, engine, prepared, cold=label == "env-cold")
                times[label].append(elapsed)
                warm[label] += was_warm
            for label, rootfs in raw.items():
                await asyncio.sleep(pause_s)
                elapsed, was_warm = await _one_raw(pool, settings, rootfs)
                times[label].append(elapsed)
                warm[label] += was_warm
    finally:
        await pool.close()
    for label, values in times.items():
        median, fastest = 1000 * statistics.median(values), 1000 * min(values)
        print(f"run {label:<8} median {median:6.1f} ms   min {fastest:6.1f} ms   pre-launched {warm[label]}/{runs}")
    for label, base in (("env", "host"), ("env-cold", "host"), ("env -S", "host -S")):
        ratio = statistics.median(times[label]) / statistics.median(times[base])
        print(f"run {label}/{base} median ratio {ratio:.2f} ({isolation}, pool of 2, python print(1))")


def _podman_archive(tmp: Path) -> Path:
    """The python image's root as podman saves it (private vfs storage; runc: see test_environments_podman)."""
    root = tmp / "root.tar"
    root.write_bytes(_python_layer())
    runroot = Path(tempfile.mkdtemp(prefix="sl-pod-", dir="/tmp"))  # podman wants it short
    base = ["podman", "--root", str(tmp / "storage"), "--runroot", str(runroot), "--storage-driver", "vfs"]
    base += ["--runtime", "runc"]
    image = "localhost/sandlot-bench:1"
    try:
        subprocess.run([*base, "import", str(root), image], check=True, capture_output=True)
        archive = tmp / "oci.tar"
        save = [*base, "save", "--quiet", "--format", "oci-archive", "-o", str(archive), image]
        subprocess.run(save, check=True, capture_output=True)
    finally:
        subprocess.run([*base, "rmi", "-a", "-f"], capture_output=True, check=False)
        shutil.rmtree(runroot, ignore_errors=True)
    return archive


def _timed_import(store: EnvironmentStore, tmp: Path) -> list[str]:
    archive = _podman_archive(tmp)
    with tarfile.open(archive) as tar:
        size = sum(member.size for member in tar.getmembers())
    names = []
    for attempt in ("first", "again"):
        name = f"bench-imp-{secrets.token_hex(4)}"
        started = time.perf_counter()
        outcome = store.import_image(name, archive)
        elapsed = time.perf_counter() - started
        names.append(name)
        cached = " (cached)" if outcome.cached else ""
        print(f"import {attempt:<5} {elapsed:6.2f} s{cached}   oci-archive {size / 1e6:.1f} MB")
    return names


def _timed_build(store: EnvironmentStore) -> list[str]:
    name = f"bench-bld-{secrets.token_hex(4)}"
    spec = parse_spec(f'[environment]\nname = "{name}"\napt = ["busybox"]\n')
    builder = Builder(store)
    for attempt in ("cold", "again"):
        started = time.perf_counter()
        outcome = builder.build(spec, "benchmark")
        elapsed = time.perf_counter() - started
        cached = " (cached)" if outcome.cached else ""
        files = outcome.environment.file_count
        print(f"build  {attempt:<5} {elapsed:6.2f} s{cached}   apt busybox, {files} files")
    return [name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--isolation", choices=("jail", "gvisor"), default="jail")
    parser.add_argument("--no-build", action="store_true", help="skip the declared environment's build")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between runs (default 0.5)")
    options = parser.parse_args()
    store = EnvironmentStore(TEST_STATE_DIR)
    names: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            name = f"bench-py-{secrets.token_hex(4)}"
            layout = Path(tmp) / "layout"
            write_oci_layout(layout, [_python_layer()], compression=["none"])
            store.import_image(name, layout)
            names.append(name)
            asyncio.run(_runs(name, options.runs, options.isolation, options.pause))
            names += _timed_import(store, Path(tmp))
            if not options.no_build:
                names += _timed_build(store)
        finally:
            for each in names:
                store.remove(each)


if __name__ == "__main__":
    main()
