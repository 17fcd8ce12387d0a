"""Process helpers the benchmark scripts share: a free loopback port, the sandlot command, a stop by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def sandlot_command() -> list[str]:
    """The ``sandlot`` console script of this interpreter's venv, else the module through this interpreter."""
    beside = Path(sys.executable).with_name("sandlot")
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-c", "from sandlot.cli import entrypoint; entrypoint()"]


def stop(proc: subprocess.Popen[bytes], timeout_s: float) -> int:
    """SIGTERM (a drain that releases every box), SIGKILL only if it does not end in time; reaped. Its exit code."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
    return proc.wait()
