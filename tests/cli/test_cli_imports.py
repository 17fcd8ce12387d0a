"""``sandlot run`` loads only what a local run uses: no server or client stack.

Judges and scripts call the CLI once per test, so every module imported is
paid on every call. A fresh interpreter runs the real ``run`` command on a
real program and lists the modules it loaded; no timing is measured here
(benchmarks/cli_startup.py does that).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli.test_cli import _env

SERVER_AND_CLIENT_STACKS = {
    "fastapi",
    "starlette",
    "uvicorn",
    "grpc",
    "google.protobuf",
    "redis",
    "mcp",
    "httpx",
    "prometheus_client",
    "pydantic",
}
# The console script's own code; -X importtime records every module as it is loaded,
# which still works when `run` ends without the interpreter's teardown (os._exit).
_RUN = "from sandlot.cli import entrypoint; entrypoint()"


def _imported(stderr: bytes) -> list[str]:
    """The modules a ``-X importtime`` run loaded, in order (the header line is not one)."""
    lines = stderr.decode().splitlines()
    names = [line.split("|")[-1].strip() for line in lines if line.startswith("import time:") and "|" in line]
    return [name for name in names if name != "imported package"]


@pytest.mark.root
def test_a_local_run_imports_no_server_or_client_stack(tmp_path: Path) -> None:
    hello = tmp_path / "hello.py"
    hello.write_text("print('hello')\n")
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", _RUN, "run", str(hello)],
        capture_output=True,
        env=_env(),
        timeout=120,
        check=False,
    )
    assert (proc.returncode, proc.stdout) == (0, b"hello\n"), proc.stderr
    modules = _imported(proc.stderr)
    assert "sandlot.sandbox.box" in modules  # the probe saw the run's own imports
    loaded = {name for name in modules for top in SERVER_AND_CLIENT_STACKS if name == top or name.startswith(f"{top}.")}
    assert loaded == set()


def test_importing_the_cli_leaves_asyncio_json_and_subprocess_unloaded_until_used() -> None:
    """``run`` starts its jail before these load (cli_defer): no module on that path may use them at import."""
    probe = (
        "import sys, sandlot.cli\n"
        "from sandlot.cli_defer import DEFERRED\n"
        "print(sorted(name for name in DEFERRED if type(sys.modules[name]).__name__ == '_Deferred'))\n"
        "import asyncio, json, subprocess\n"
        "asyncio.run(asyncio.sleep(0))\n"
        "assert json.loads('[1]') == [1] and subprocess.run(['true'], check=True).returncode == 0\n"
        "print(sorted(name for name in DEFERRED if type(sys.modules[name]).__name__ == '_Deferred'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=120, check=True)
    assert proc.stdout == b"['asyncio', 'json', 'subprocess']\n[]\n", proc.stderr
