"""Session file routes against hostile trees and races: bounded fds, entry caps, clear 4xx.

Real sessions and real programs build the trees. The races (a program deleting
or recreating a file between two of the host's syscalls) are made deterministic
by doing the program's part inside a wrapper around the ``os`` module that
``sandbox/hostfs`` uses, on the real workdir files.
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandlot.sandbox import hostfs
from sandlot.service import Service
from tests.api.http.test_http import client_fixture, service_fixture

__all__ = ["client_fixture", "service_fixture"]  # fixtures, used by name


class _CountingOs(types.SimpleNamespace):
    """``os`` as hostfs sees it, counting the fds it holds open at once."""

    def __init__(self) -> None:
        mine = {"open", "dup", "close"}  # an instance attribute would hide the counting method
        super().__init__(
            **{name: getattr(os, name) for name in dir(os) if not name.startswith("__") and name not in mine}
        )
        self.live = 0
        self.peak = 0

    def _opened(self, fd: int) -> int:
        self.live += 1
        self.peak = max(self.peak, self.live)
        return fd

    def open(self, *args: Any, **kwargs: Any) -> int:
        return self._opened(os.open(*args, **kwargs))

    def dup(self, fd: int) -> int:
        return self._opened(os.dup(fd))

    def close(self, fd: int) -> None:
        os.close(fd)
        self.live -= 1


@pytest.fixture(name="counting_os")
def counting_os_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[_CountingOs]:
    fake = _CountingOs()
    monkeypatch.setattr(hostfs, "os", fake)
    yield fake
    assert fake.live == 0, "hostfs leaked an fd"


async def _session_with(client: httpx.AsyncClient, code: str) -> str:
    session_id = str((await client.post("/api/v1/sessions")).json()["session_id"])
    run = {
        "language": "python",
        "code": code,
        "session_id": session_id,
        "limits": {"wall_time_limit": 60, "time_limit": 30},
    }
    result = (await client.post("/api/v1/run", json=run)).json()
    assert result["status"] == "ok", result
    return session_id


def _workdir(service: Service, session_id: str) -> Path:
    return Path(f"/proc/self/fd/{service.sessions.local('public', session_id).workdir.fd}")


async def test_listing_a_wide_and_deep_tree_holds_few_fds(client: httpx.AsyncClient, counting_os: _CountingOs) -> None:
    # 3,000 sibling directories each holding a file, and one chain 30 deep: the old walk held an fd per
    # pending directory (thousands); this one reopens each from the root, so a handful per level of depth.
    code = (
        "import os\n"
        "for i in range(3000):\n"
        "    os.mkdir(f'd{i}')\n"
        "    open(f'd{i}/f', 'w').write('x')\n"
        "os.makedirs('/'.join(['n'] * 30))\n"
        "open('/'.join(['n'] * 30) + '/deep', 'w').write('yz')\n"
    )
    session_id = await _session_with(client, code)
    response = await client.get(f"/api/v1/sessions/{session_id}/files")
    assert response.status_code == 200
    assert 0 < counting_os.peak <= 2 * hostfs.MAX_PATH_DEPTH + 2
    listing = response.json()
    assert listing["truncated"] is False
    assert len(listing["files"]) == 3002  # and main.py
    assert {"path": "/".join(["n"] * 30) + "/deep", "size": 2} in listing["files"]


async def test_listing_stops_at_the_entry_cap_and_says_so(service: Service, client: httpx.AsyncClient) -> None:
    session_id = await _session_with(client, "import os\nfor i in range(300):\n    os.mkdir(f'd{i}')\n")
    listing = hostfs.list_files(service.sessions.local("public", session_id).workdir.fd, max_entries=100)
    assert listing.truncated
    assert listing.files == []  # only directories so far: nothing past the cap was looked at
    whole = hostfs.list_files(service.sessions.local("public", session_id).workdir.fd)
    assert not whole.truncated


async def test_listing_tolerates_files_vanishing_under_it(
    service: Service, client: httpx.AsyncClient, counting_os: _CountingOs
) -> None:
    session_id = await _session_with(client, "for i in range(20):\n    open(f'f{i}', 'w').write('x')\n")
    workdir = _workdir(service, session_id)

    def deleting_scandir(fd: int) -> Any:
        entries = list(os.scandir(fd))  # the directory as read, then the program deletes every other file
        for entry in entries[::2]:
            (workdir / entry.name).unlink()
        return _Scan(entries)

    counting_os.scandir = deleting_scandir
    response = await client.get(f"/api/v1/sessions/{session_id}/files")
    assert response.status_code == 200
    assert len(response.json()["files"]) == 10  # of 21 (main.py too): every other one went


class _Scan(list[os.DirEntry[str]]):
    def __enter__(self) -> _Scan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


async def test_put_racing_with_the_program_answers_409(
    service: Service, client: httpx.AsyncClient, counting_os: _CountingOs
) -> None:
    session_id = await _session_with(client, "open('busy.txt', 'w').write('old')\n")
    workdir = _workdir(service, session_id)
    unlink: Callable[..., None] = os.unlink

    def unlink_then_recreate(name: str, *, dir_fd: int) -> None:
        unlink(name, dir_fd=dir_fd)
        (workdir / name).write_text("program")  # the box wrote it again between our unlink and create

    counting_os.unlink = unlink_then_recreate
    response = await client.put(f"/api/v1/sessions/{session_id}/files/busy.txt", content=b"mine")
    assert response.status_code == 409
    assert "retry" in response.json()["error"]["message"]


async def test_overlong_and_undecodable_names_are_400(client: httpx.AsyncClient) -> None:
    session_id = await _session_with(client, "open(bytes.fromhex('ff6e616d65'), 'w').write('x')\nopen('ok', 'w')\n")
    files = f"/api/v1/sessions/{session_id}/files"
    long_name = "a" * 300
    for response in (await client.put(f"{files}/{long_name}", content=b"x"), await client.get(f"{files}/{long_name}")):
        assert response.status_code == 400
        assert "over 255 bytes" in response.json()["error"]["message"]
    listing = await client.get(files)  # a name that is not UTF-8 cannot be named in a request nor sent as JSON
    assert listing.status_code == 200
    assert [f["path"] for f in listing.json()["files"]] == ["main.py", "ok"]
