"""``sandlot run`` loads only what a local run uses: no server or client stack.

Judges and scripts call the CLI once per test, so every module imported is
paid on every call. A fresh interpreter runs the real ``run`` command on a
real program and then lists the modules it loaded; no timing is measured here
(benchmarks/cli_startup.py does that).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .test_cli import _env

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
_PROBE = """
import json, sys
from sandlot.cli import entrypoint
sys.argv = ["sandlot", "run", sys.argv[1]]
try:
    entrypoint()
except SystemExit as exit:
    code = exit.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


@pytest.mark.root
def test_a_local_run_imports_no_server_or_client_stack(tmp_path: Path) -> None:
    hello = tmp_path / "hello.py"
    hello.write_text("print('hello')\n")
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(hello)], capture_output=True, env=_env(), timeout=120, check=False
    )
    assert proc.stdout == b"hello\n", proc.stderr
    report = json.loads(proc.stderr.decode().splitlines()[-1])
    assert report["code"] == 0
    loaded = {
        name
        for name in report["modules"]
        for top in SERVER_AND_CLIENT_STACKS
        if name == top or name.startswith(f"{top}.")
    }
    assert loaded == set()
