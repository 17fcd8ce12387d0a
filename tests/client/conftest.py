"""Servers for the client library's tests: a real Service over HTTP on loopback, one per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandlot.config import ApiKey
from tests.cli.test_cli_client import _ServerThread, closed_port_fixture  # noqa: F401  (a fixture, held port)

KEY = "key-of-alice"
SLEEPER = "import time\nprint('started', flush=True)\ntime.sleep(30)\n"
# Prints, then waits in its session's workdir for the file "go": the test writes it from the output
# callback, so the run can only end if the callback saw "first" while the program still ran.
GATED = (
    "import os, time\nprint('first', flush=True)\n"
    "while not os.path.exists('go'):\n    time.sleep(0.01)\nprint('done')\n"
)
LONG = {"wall_time_limit": 60}
# Not UTF-8 on purpose: bytes must cross the JSON API intact.
RAW = bytes(range(256))
ECHO_BYTES = "import sys\nsys.stdout.write(sys.stdin.buffer.read().hex())\n"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with _ServerThread() as url:
        yield url


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[str]:
    with _ServerThread(api_keys=(ApiKey(KEY, "alice"),)) as url:
        yield url


@pytest.fixture(scope="module")
def full_server() -> Iterator[str]:
    """One box and a queue of one: a third run while one runs and one waits is refused (429)."""
    with _ServerThread(pool_size=1, max_queued=1) as url:
        yield url
