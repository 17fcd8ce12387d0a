"""The client installs alone: a fresh virtualenv with only clients/python (and httpx) in it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "python"
INSTALL_TIMEOUT_S = 300  # pip may fetch httpx and the build backend from the package index


@pytest.mark.slow
@pytest.mark.timeout(INSTALL_TIMEOUT_S + 60)
def test_the_client_installs_without_the_server(tmp_path: Path) -> None:
    # From a copy: building writes build/ and *.egg-info next to the sources, which is not this checkout's business.
    source = tmp_path / "sandlot-client"
    shutil.copytree(CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # Not editable: a real install, as `pip install sandlot-client` would make it (a wheel built from the dir).
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(source)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    assert pip.returncode == 0, pip.stderr
    probe = (
        "import importlib.util, sandlot_client\n"
        "print(sandlot_client.__file__)\n"
        "print(sorted(m for m in ('fastapi', 'grpc', 'redis', 'mcp', 'sandlot') if importlib.util.find_spec(m)))\n"
        "print(sandlot_client.Sandlot('http://127.0.0.1:1').url)\n"
    )
    found = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert found.returncode == 0, found.stderr
    where, importable, url = found.stdout.splitlines()
    assert where.startswith(str(venv))  # the installed copy, not this checkout's
    assert importable == "[]"  # none of the server's dependencies came along
    assert url == "http://127.0.0.1:1"
