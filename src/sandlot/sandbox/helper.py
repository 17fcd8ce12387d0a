"""Locate or build ``sandlot-helper`` (helper.c, helper_gvisor.c): the cgroup-joining launcher and in-box init.

The binary is built once per source version with the system C compiler, static so
that it runs inside the box without a dynamic loader, and stored root-owned
under ``<state_dir>/bin``, which the box never sees.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from sandlot.errors import ConfigError

_BUILD_TIMEOUT_S = 120
_SOURCES = ("helper.h", "helper.c", "helper_gvisor.c")


def _sources() -> dict[str, bytes]:
    package = resources.files("sandlot.sandbox")
    return {name: package.joinpath(name).read_bytes() for name in _SOURCES}


def helper_path(state_dir: Path) -> Path:
    """Return the helper binary for these sources, building it if needed."""
    sources = _sources()
    digest = hashlib.sha256(b"".join(hashlib.sha256(text).digest() for text in sources.values())).hexdigest()[:16]
    bin_dir = state_dir / "bin"
    target = bin_dir / f"sandlot-helper-{digest}"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise ConfigError("a C compiler (gcc) is needed once to build sandlot-helper; install gcc")
    bin_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(bin_dir, 0o711)
    # Per process: another sandlot process on the host may be building the same version.
    build_dir = bin_dir / f".build-{digest}.{os.getpid()}"
    tmp = bin_dir / f".sandlot-helper-{digest}.{os.getpid()}"
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir(mode=0o700)
    try:
        for name, text in sources.items():
            (build_dir / name).write_bytes(text)
        units = [str(build_dir / name) for name in _SOURCES if name.endswith(".c")]
        proc = subprocess.run(
            [compiler, "-O2", "-static", "-Wall", "-o", str(tmp), *units],
            capture_output=True,
            timeout=_BUILD_TIMEOUT_S,
            check=False,
        )
        if proc.returncode != 0:
            raise ConfigError("building sandlot-helper failed: " + proc.stderr.decode(errors="replace").strip())
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
        tmp.unlink(missing_ok=True)
    return target
