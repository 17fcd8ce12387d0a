"""The deploy tier's podman side: a Debian base image made here, sandlot's image, containers by name.

Theory of operation
-------------------
No image can be pulled on this kind of machine, so the base comes from Debian's registry: mmdebstrap
builds a bookworm root (a tarball cached in ``STATE``, keyed by the day and the package list, so a second
run the same day skips it), ``podman import`` makes it an image, and ``scripts/setup.sh image`` builds
sandlot's Containerfile on top with ``--build-arg BASE=...``, exactly as docs/deploy.md tells users.
Every container and image this tier makes is named with ``PREFIX``, and ``remove_all`` removes them by
those names, never anything else.

Two things of this host shape every ``podman run`` here: Debian's crun refuses the hybrid cgroup layout,
so ``--runtime runc``; and this process lacks CAP_SYS_RESOURCE, so podman's default rlimits for a root
container (nofile and nproc above our hard limits) make runc fail: ``ulimits`` passes ours instead.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
STATE = Path("/var/lib/sandlot-deploy-test")
PREFIX = "sandlot-deploy-test"
IMAGE = f"localhost/{PREFIX}:latest"
REDIS_IMAGE = f"localhost/{PREFIX}-redis:latest"
PROMETHEUS_IMAGE = f"localhost/{PREFIX}-prometheus:latest"
COMPOSE = ROOT / "compose.yaml"
BASE_REPO = f"localhost/{PREFIX}-base"
SUITE = "bookworm"
MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
BASE_PACKAGES = ("ca-certificates",)  # the rest is the Containerfile's business
NPROC_CAP = 32768  # runc, started by conmon, could set no more here (measured); podman's default is higher
BUILD_TIMEOUT_S = 1500
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")  # this host's TLS-intercepting proxy, if any


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["podman", "--runtime", "runc", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


def ulimits() -> list[str]:
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], NPROC_CAP)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


def base_image() -> str:
    """The bookworm base image, from the cached tarball (made by mmdebstrap when missing or stale)."""
    recipe = json.dumps([datetime.datetime.now(datetime.UTC).date().isoformat(), SUITE, MIRRORS, BASE_PACKAGES])
    key = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    STATE.mkdir(mode=0o700, exist_ok=True)
    tarball = STATE / f"base-{key}.tar"
    if not tarball.exists():
        partial = STATE / f"base-{key}.partial.tar"
        include = f"--include={','.join(BASE_PACKAGES)}"
        subprocess.run(
            ["mmdebstrap", "--quiet", "--variant=minbase", include, SUITE, str(partial), *MIRRORS],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=600,
            check=True,
        )
        partial.rename(tarball)  # only a whole tarball is ever found under its key
        for stale in STATE.glob("base-*.tar"):
            if stale != tarball:
                stale.unlink()
    tag = f"{BASE_REPO}:{key}"
    if podman("image", "exists", tag, check=False).returncode != 0:
        podman("import", str(tarball), tag, timeout=300)
    return tag


def build_images(base: str) -> None:
    """sandlot's image with the documented command, and a tiny Redis image from the same base."""
    extra_ca = ROOT / "deploy" / "container" / "extra-ca"
    for cert in HOST_CA_DIR.glob("*.crt"):  # git-ignored there; needed to reach PyPI through this host's proxy
        shutil.copyfile(cert, extra_ca / cert.name)
    build = ["bash", str(ROOT / "scripts" / "setup.sh"), "image", "-t", IMAGE, "--build-arg", f"BASE={base}"]
    done = subprocess.run(
        [*build, "--isolation", "chroot"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    tail = f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert done.returncode == 0, f"{' '.join(build)}: exit {done.returncode}\n{tail}"
    # Stand-ins for compose.yaml's Docker Hub images, from Debian's packages: redis-server as the official
    # image runs it (protected mode off: reached from other containers), prometheus as its image's entrypoint.
    _build_small(
        base,
        REDIS_IMAGE,
        "redis-server",
        'RUN mkdir /data\nENTRYPOINT ["/bin/sh", "-c", "exec \\"$@\\" --protected-mode no", "--"]',
    )
    _build_small(base, PROMETHEUS_IMAGE, "prometheus", 'RUN mkdir /prometheus\nENTRYPOINT ["/usr/bin/prometheus"]')


def _build_small(base: str, tag: str, package: str, tail: str) -> None:
    with tempfile.TemporaryDirectory() as context:
        (Path(context) / "Containerfile").write_text(
            f"FROM {base}\n"
            f"RUN apt-get update && apt-get install -y --no-install-recommends {package}"
            " && rm -rf /var/lib/apt/lists/*\n"
            f"{tail}\n"
        )
        podman("build", "--isolation", "chroot", "-t", tag, context, timeout=600)


def compose_service(name: str) -> dict[str, Any]:
    service: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"][name]
    return service


def run_compose_service(name: str, image: str, hosts: dict[str, str]) -> str:
    """compose.yaml's service ``name`` as ``podman run`` would run it, on ``image``, its peers in /etc/hosts.

    What podman-compose would do, minus the network's DNS (this host's CNI has none): the service's
    command, environment, privileges and bind mounts as written; named volumes become anonymous ones.
    """
    service = compose_service(name)
    options = ["--privileged"] if service.get("privileged") else []
    for key, value in service.get("environment", {}).items():
        options += ["-e", f"{key}={value}"]
    for volume in service.get("volumes", []):
        source, target, *mode = str(volume).split(":")
        if source.startswith("./"):
            options += ["-v", ":".join([str(ROOT / source), target, *mode])]
        else:
            options += ["-v", target]
    for host, ip in hosts.items():
        options += ["--add-host", f"{host}:{ip}"]
    command = tuple(str(part) for part in service.get("command", []))
    return run(name, *options, image=image, command=command)


def run(name: str, *options: str, image: str = IMAGE, command: tuple[str, ...] = ()) -> str:
    """Start a detached container ``PREFIX-name``; its full name."""
    full = f"{PREFIX}-{name}"
    podman("rm", "-f", "-v", full, check=False)
    podman("run", "-d", "--name", full, *ulimits(), *options, image, *command)
    return full


def address(name: str) -> str:
    """The container's address on podman's default bridge (the host reaches it directly)."""
    ip = podman("inspect", "-f", "{{.NetworkSettings.IPAddress}}", name).stdout.strip()
    assert ip, f"{name} has no address"
    return ip


def logs(name: str) -> str:
    done = podman("logs", name, check=False)
    return done.stdout + done.stderr


def wait_ready(name: str, url: str, deadline_s: float = 300) -> None:
    """Until GET url answers 200; fails with the container's logs if it stops or the deadline passes.

    A loop with a deadline: the container signals readiness only through HTTP (no systemd here for
    podman's health-check timers), and its first start prepares the Go build cache (~20 s or more).
    """
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        state = podman("inspect", "-f", "{{.State.Running}}", name, check=False).stdout.strip()
        assert state == "true", f"{name} stopped:\n{logs(name)[-4000:]}"
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{name}: {url} not 200 within {deadline_s} s:\n{logs(name)[-4000:]}")


def wait_until(condition: Callable[[], bool], message: str, deadline_s: float = 120) -> None:
    """Until ``condition()`` holds; a loop with a deadline, for what only answers when asked (Prometheus)."""
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, message
        time.sleep(1)


def remove_all(keep_images: bool = os.environ.get("SANDLOT_DEPLOY_KEEP_IMAGES") == "1") -> None:
    """Every container of this tier, then its images (not the base: it is the cache), by name."""
    names = podman("ps", "-a", "--format", "{{.Names}}", check=False).stdout.split()
    for name in names:
        if name.startswith(f"{PREFIX}-"):
            podman("rm", "-f", "-v", "-t", "0", name, check=False, timeout=120)
    if not keep_images:
        podman("rmi", "-f", IMAGE, REDIS_IMAGE, PROMETHEUS_IMAGE, check=False, timeout=300)
