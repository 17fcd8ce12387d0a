"""Stateful sessions through the client: cells keep their variables, the last expression's value; and a
server whose operator turned them off (``max_stateful_sessions < 0``) is a clear ``Rejected``."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from sandlot_client import AsyncSandlot, Rejected, Sandlot, Status
from tests.cli.test_cli_client import _ServerThread

pytestmark = pytest.mark.root


@pytest.fixture
def stateful_server(server: str) -> Iterator[str]:
    yield server


@pytest.fixture(scope="module")
def stateless_server() -> Iterator[str]:
    with _ServerThread(max_stateful_sessions=-1) as url:
        yield url


def test_cells_keep_their_state_and_return_the_last_value(stateful_server: str) -> None:
    with Sandlot(stateful_server) as client:
        with client.session(stateful=True, language="python") as session:
            assert session.info.stateful
            first = session.run("import math\nx = 20")
            assert (first.status, first.value) == (Status.OK, None)
            printed: list[str] = []
            second = session.run("print('hi')\nx + math.floor(2.5)", on_stdout=printed.append)
            # Live, in the chunks the program wrote (print may write "hi" and "\n" apart): their bytes in order.
            assert (second.stdout, second.value, "".join(printed)) == ("hi\n", "22", "hi\n")
            failed = session.run("1 / 0")
            assert failed.status is Status.RUNTIME_ERROR and "ZeroDivisionError" in failed.stderr
            assert session.run("x").value == "20"  # the error ended the cell, not the session
        with client.session(stateful=True) as other:
            assert other.run("'x' in globals()").value == "False"  # two sessions never share state


def test_the_files_of_a_stateful_session(stateful_server: str) -> None:
    """Issue 16's example: ``s.files.write("data.csv", ...)`` in a stateful session, then a cell reads it."""
    with Sandlot(stateful_server) as client, client.session(stateful=True) as session:
        session.files.write("data.csv", "a\n")
        assert session.run("open('data.csv').read()").value == "'a\\n'"
        session.run("open('out.txt', 'w').write('from a cell')")
        assert session.files.read("out.txt") == b"from a cell"
        assert {"data.csv", "out.txt"} <= {f.path for f in session.files.list()}


async def test_cells_async(stateful_server: str) -> None:
    async with AsyncSandlot(stateful_server) as client, client.session(stateful=True) as session:
        await session.run("y = [1, 2]")
        assert (await session.run("y * 2")).value == "[1, 2, 1, 2]"


def test_a_server_without_stateful_sessions_is_a_clear_error(stateless_server: str) -> None:
    server = stateless_server
    with Sandlot(server) as client, pytest.raises(Rejected) as refused:
        client.session(stateful=True)
    assert refused.value.field == "stateful" and "turned off on this server" in str(refused.value)
    made = re.search(r"made session (\S+) without state", str(refused.value))
    if made:  # a server that ignores the field made a plain session: it was ended, not left to expire
        assert httpx.get(f"{server}/api/v1/sessions/{made[1]}/files", timeout=60).status_code == 404
