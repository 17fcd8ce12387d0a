"""Building a declared environment: Debian's ``mmdebstrap``, then pip and npm inside the new root.

Theory of operation: everything comes from the registries only: the Debian suite from ``mirror`` (apt
verifies it against Debian's keyring), PyPI through pip and npm's registry through npm, each run by
mmdebstrap's customize hooks inside the root being built (``chroot``, with mmdebstrap's /proc, /dev and
resolv.conf set up for the build, and the host's network: the build's alone; a box never gets one). npm
runs with ``--ignore-scripts``, so no install script from the registry runs as root. Package names were
checked by :mod:`spec` against strict patterns and are shell-quoted besides, since hooks are shell text.

The resolved versions (``dpkg-query``, ``pip list``, ``npm ls``) are written by hooks next to the root,
read into the environment's metadata and removed. The build goes through
:meth:`EnvironmentStore.materialise`, keyed by the spec's hash: a spec built before is found and nothing
runs; a failed or interrupted build leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sandlot.environments.spec import Spec
from sandlot.environments.store import Environment, EnvironmentStore, Outcome
from sandlot.errors import EnvironmentBuildFailed

DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_BUILD_TIMEOUT_S = 1800.0  # one build, downloads included
DEFAULT_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")  # the host's trust, lent to pip and npm
_BUILD_CA = "/tmp/sandlot-build-ca.crt"  # where the root sees it during the build (removed after)
_VARIANT = "minbase"  # Essential + apt: the packages asked for bring their own dependencies
_LOG_TAIL_LINES = 20


class Builder:
    """Builds specs into ``store``; ``log`` receives one line per step (the CLI prints them)."""

    def __init__(
        self,
        store: EnvironmentStore,
        *,
        mirror: str = DEFAULT_MIRROR,
        timeout_s: float = DEFAULT_BUILD_TIMEOUT_S,
        ca_bundle: Path = DEFAULT_CA_BUNDLE,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._ca_bundle = ca_bundle
        self._mirror = mirror
        self._timeout_s = timeout_s
        self._log = log or (lambda _line: None)

    def build(self, spec: Spec, source: str) -> Outcome:
        digest = spec.digest()
        made = Environment(
            digest=digest, kind="built", source=source, spec=spec.canonical(), env=_ENV, languages=spec.languages
        )

        def produce(rootfs: Path) -> Environment:
            self._log(f"building {spec.name} ({digest}) from {self._mirror} ({spec.suite}) ...")
            packages = self._run(spec, rootfs)
            return dataclasses.replace(made, packages=packages)

        return self._store.materialise(spec.name, digest, produce)

    def _run(self, spec: Spec, rootfs: Path) -> dict[str, dict[str, str]]:
        out = rootfs.parent / "versions"
        out.mkdir()
        log_path = rootfs.parent / "build.log"
        command = ["mmdebstrap", f"--variant={_VARIANT}", "--format=directory", "--mode=root"]
        include = [*spec.apt]
        include += ["python3", "python3-pip"] if spec.pip else []
        include += ["nodejs", "npm"] if spec.npm else []
        if include:
            command.append("--include=" + ",".join(sorted(set(include))))
        for hook in _hooks(spec, out, self._ca_bundle if self._ca_bundle.is_file() else None):
            command.append(f"--customize-hook={hook}")
        command += [spec.suite, str(rootfs), self._mirror]
        try:
            with log_path.open("wb") as log:
                _run_group(command, log, self._timeout_s)
            return _versions(out)
        except EnvironmentBuildFailed as exc:
            tail = log_path.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
            raise EnvironmentBuildFailed(f"{exc}\n" + "\n".join(tail)) from exc
        finally:
            for path in (*out.iterdir(), log_path):
                path.unlink(missing_ok=True)
            out.rmdir()


_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8")


def _hooks(spec: Spec, out: Path, ca_bundle: Path | None) -> list[str]:
    """mmdebstrap customize hooks: shell text run on the host with ``$1`` the root being built.

    Commands in the root get a clean environment (the host's pip/npm settings are the host's business, and
    a build must not depend on them); the host's CA bundle is lent to pip and npm for the build only.
    """
    into = shlex.quote(str(out))
    chroot = f'chroot "$1" env -i HOME=/root LANG=C.UTF-8 PATH={shlex.quote(_ENV[0].removeprefix("PATH="))}'
    hooks = []
    pip_cert = npm_cert = ""
    if ca_bundle is not None and (spec.pip or spec.npm):
        hooks.append(f'cp {shlex.quote(str(ca_bundle))} "$1{_BUILD_CA}"')
        pip_cert, npm_cert = f"--cert {_BUILD_CA} ", f"--cafile={_BUILD_CA} "
    if spec.pip:
        pip = " ".join(shlex.quote(name) for name in spec.pip)
        hooks.append(
            f"{chroot} python3 -m pip install --no-cache-dir --break-system-packages --root-user-action=ignore "
            f"--disable-pip-version-check {pip_cert}{pip}"
        )
    if spec.npm:
        npm = " ".join(shlex.quote(name) for name in spec.npm)
        hooks.append(f"{chroot} npm install --global --ignore-scripts --no-audit --no-fund {npm_cert}{npm}")
        hooks.append(f"{chroot} npm ls --global --json --depth=0 > {into}/npm.json")
        hooks.append('rm -rf "$1/root/.npm"')
    hooks.append(f'rm -f "$1{_BUILD_CA}"')
    hooks.append(f"{chroot} dpkg-query -W -f='${{Package}}\\t${{Version}}\\n' > {into}/apt.tsv")
    if spec.pip:
        hooks.append(f"{chroot} python3 -m pip list --format=json --disable-pip-version-check > {into}/pip.json")
    return hooks


def _run_group(command: list[str], log: Any, timeout_s: float) -> None:
    """Run ``command`` in its own process group; on timeout the whole group is killed."""
    try:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        raise EnvironmentBuildFailed(f"cannot run {command[0]}: {exc} (scripts/setup.sh installs it)") from exc
    try:
        code = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        raise EnvironmentBuildFailed(f"{command[0]} did not finish within {timeout_s:.0f} s") from None
    except BaseException:  # the user's Ctrl-C: no part of the build outlives us
        _kill_group(process)
        raise
    if code != 0:
        raise EnvironmentBuildFailed(f"{command[0]} failed (exit {code}); the end of its output:")


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _versions(out: Path) -> dict[str, dict[str, str]]:
    packages: dict[str, dict[str, str]] = {"apt": {}, "pip": {}, "npm": {}}
    for line in (out / "apt.tsv").read_text().splitlines():
        name, _, version = line.partition("\t")
        packages["apt"][name] = version
    if (out / "pip.json").exists():
        for item in json.loads((out / "pip.json").read_text()):
            packages["pip"][str(item["name"])] = str(item["version"])
    if (out / "npm.json").exists():
        for name, item in (json.loads((out / "npm.json").read_text()).get("dependencies") or {}).items():
            packages["npm"][str(name)] = str(item.get("version", ""))
    return packages
