"""``sandlot_client.AsyncSandlot`` against a real server: the sync tests' methods, with ``await``."""

from __future__ import annotations

import asyncio

import pytest

from sandlot_client import AsyncSandlot, Busy, Conflict, FileInfo, NotFound, Rejected, Status, Unauthorized
from tests.client.conftest import ECHO_BYTES, GATED, KEY, LONG, RAW, SLEEPER

pytestmark = pytest.mark.root


async def test_run_with_stdin_files_and_args(server: str) -> None:
    async with AsyncSandlot(server) as client:
        result = await client.run("python", "import sys\nprint(input()[::-1], sys.argv[1:])", stdin="olleh", args=["a"])
        assert (result.status, result.stdout) == (Status.OK, "hello ['a']\n")
        assert (await client.run("python", ECHO_BYTES, stdin=RAW)).stdout == RAW.hex()
        read = "print(open('data.bin', 'rb').read().hex())"
        assert (await client.run("python", read, files={"data.bin": RAW})).stdout == f"{RAW.hex()}\n"


async def test_async_callbacks_see_output_while_the_program_runs(server: str) -> None:
    async with AsyncSandlot(server) as client, client.session() as session:
        seen: list[str] = []

        async def on_stdout(text: str) -> None:  # a coroutine function: awaited
            seen.append(text)
            await session.files.write("go", b"")  # the program ends only once this file exists

        result = await session.run(GATED, limits=LONG, on_stdout=on_stdout)
    assert result.status is Status.OK, result
    assert "".join(seen) == "first\ndone\n"


async def test_submit_state_result_and_cancel(server: str) -> None:
    async with AsyncSandlot(server) as client:
        quick = await client.submit("python", "print(2)")
        assert (await quick.result()).stdout == "2\n"
        state = await quick.state()
        assert state.status == "done" and state.result is not None
        with pytest.raises(Conflict):
            await quick.cancel()
        sleeper = await client.submit("python", SLEEPER, limits=LONG)
        started = asyncio.Event()
        follower = asyncio.create_task(sleeper.result(on_stdout=lambda text: started.set()))
        await started.wait()  # bounded by the test's timeout
        await sleeper.cancel()
        assert (await follower).status is Status.SIGNALED


async def test_session_files_and_close(server: str) -> None:
    async with AsyncSandlot(server) as client:
        session = await client.session()  # awaited rather than entered: closed by hand
        try:
            await session.files.write("data.csv", "a,b\n1,2\n")
            assert await session.files.read("data.csv") == b"a,b\n1,2\n"
            assert (await session.run("print(open('data.csv').read().split()[1])")).stdout == "1,2\n"
            assert FileInfo("data.csv", 8) in await session.files.list()
        finally:
            await session.aclose()
        with pytest.raises(NotFound):
            await session.files.list()


async def test_errors_are_typed(server: str, keyed_server: str, full_server: str) -> None:
    async with AsyncSandlot(server) as client:
        with pytest.raises(Rejected) as bad_language:
            await client.run("cobol", "x")
        assert bad_language.value.field == "language"
        with pytest.raises(NotFound):
            await client.task("0" * 32).state()
    async with AsyncSandlot(keyed_server, api_key="wrong") as wrong:
        with pytest.raises(Unauthorized):
            await wrong.run("python", "print(1)")
    async with AsyncSandlot(keyed_server, api_key=KEY) as right:
        assert (await right.run("python", "print(1)")).stdout == "1\n"
    async with AsyncSandlot(full_server) as full:
        holding = await full.submit("python", SLEEPER, limits=LONG)
        started = asyncio.Event()
        follower = asyncio.create_task(holding.result(on_stdout=lambda text: started.set()))
        try:
            await started.wait()
            queued = await full.submit("python", "print(1)")
            with pytest.raises(Busy) as busy:
                await full.submit("python", "print(1)")
            assert busy.value.retry_after is not None and busy.value.retry_after >= 1
        finally:
            await holding.cancel()
            await follower
        assert (await queued.result()).stdout == "1\n"
