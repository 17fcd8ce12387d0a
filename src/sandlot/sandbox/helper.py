"""Locate or build ``sandlot-helper`` (helper.c): the cgroup-joining launcher and in-box init.

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


def _source() -> bytes:
    return resources.files("sandlot.sandbox").joinpath("helper.c").read_bytes()


def helper_path(state_dir: Path) -> Path:
    """Return the helper binary for this source, building it if needed."""
    source = _source()
    digest = hashlib.sha256(source).hexdigest()[:16]
    bin_dir = state_dir / "bin"
    target = bin_dir / f"sandlot-helper-{digest}"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise ConfigError("a C compiler (gcc) is needed once to build sandlot-helper; install gcc")
    bin_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(bin_dir, 0o711)
    src_file = bin_dir / f"helper-{digest}.c"
    tmp = bin_dir / f".sandlot-helper-{digest}.{os.getpid()}"
    src_file.write_bytes(source)
    try:
        proc = subprocess.run(
            [compiler, "-O2", "-static", "-Wall", "-o", str(tmp), str(src_file)],
            capture_output=True,
            timeout=_BUILD_TIMEOUT_S,
            check=False,
        )
        if proc.returncode != 0:
            raise ConfigError("building sandlot-helper failed: " + proc.stderr.decode(errors="replace").strip())
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    finally:
        src_file.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return target
