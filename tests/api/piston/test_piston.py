"""The Piston door (``/api/v2``): the real ``aiopyston`` client over a live socket, then httpx in-process.

Every execution runs in a real sandbox behind a real Service. The aiopyston
tests prove an off-the-shelf Piston client works unchanged; the httpx tests pin
the wire shapes, Piston's rules (versions, encodings, limits) and the status
mapping.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import warnings
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pyston import File, PystonClient, http_handler

from sandlot.api.http.app import create_app
from sandlot.api.piston.semver import satisfies
from sandlot.broker import TaskSpec
from sandlot.config import DEFAULT_RUN_LIMITS, MIB, ApiKey, ServerSettings
from sandlot.models import ExitEvent, Result, Status
from sandlot.service import Service
from tests.api.http.test_http import asgi_client, live_server, running_service, service_fixture, wait_done, wait_running
from tests.conftest import make_settings
from tests.root import require_root

__all__ = ["service_fixture"]  # a fixture, used by name

EXECUTE = "/api/v2/execute"
HELLO = {"language": "python", "version": "*", "files": [{"content": "print('hello')"}]}
SLEEPER = "import time\nprint('started', flush=True)\ntime.sleep(30)\n"
SMALL_OUTPUT_BYTES = 4096


# ------------------------------------------------------------------ helpers


class _ExplicitlyClosed(http_handler.HTTP):  # type: ignore[misc]
    """aiopyston's HTTP without its ``__del__``, which schedules a second close on whatever loop is current."""

    def __del__(self) -> None:
        pass


@contextlib.asynccontextmanager
async def pyston_client(base_url: str, api_key: str | None = None) -> AsyncIterator[PystonClient]:
    with warnings.catch_warnings():
        # aiopyston 1.2.1 builds its connector with aiohttp's deprecated verify_ssl=False.
        warnings.filterwarnings("ignore", "verify_ssl is deprecated", DeprecationWarning)
        client = PystonClient(api_key=api_key, base_url=base_url)
    client._http_session.__class__ = _ExplicitlyClosed
    try:
        yield client
    finally:
        await client.close_session()


def piston_app(service: Service) -> FastAPI:
    return create_app(service)


def recorded_submits(service: Service, monkeypatch: pytest.MonkeyPatch) -> tuple[list[TaskSpec], asyncio.Event]:
    """Every TaskSpec the door queues, and an event set at the first."""
    specs: list[TaskSpec] = []
    first = asyncio.Event()
    real_enqueue = service.enqueue

    async def recording(spec: TaskSpec, **kwargs: Any) -> TaskSpec:
        specs.append(spec)
        first.set()
        return await real_enqueue(spec, **kwargs)

    monkeypatch.setattr(service, "enqueue", recording)
    return specs, first


def execute_body(language: str, code: str, **extra: Any) -> dict[str, Any]:
    return {"language": language, "version": "*", "files": [{"content": code}], **extra}


@pytest.fixture(name="live")
async def live_fixture() -> AsyncIterator[tuple[Service, str]]:
    async with running_service() as service, live_server(piston_app(service)) as address:
        yield service, f"http://{address}/api/v2/"


@pytest.fixture(name="client")
async def client_fixture(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(piston_app(service)) as client:
        yield client


# ------------------------------------------------------------- aiopyston


async def test_client_lists_runtimes(live: tuple[Service, str]) -> None:
    service, url = live
    async with pyston_client(url) as client:
        runtimes = {rt.language: rt for rt in await client.runtimes()}
        assert runtimes["python"].version == service.versions()["python"]
        assert {"py", "py3", "python3"} <= set(runtimes["python"].aliases)
        assert {"cpp", "g++"} <= set(runtimes["c++"].aliases)
        assert runtimes["c++"].runtime == "gcc"
        assert {"js", "node"} <= set(runtimes["javascript"].aliases)
        assert "golang" in runtimes["go"].aliases
        assert "sh" in runtimes["bash"].aliases
        assert "cpp" not in runtimes  # our name for it is an alias, Piston's is the language
        assert [rt.language for rt in await client.get_runtimes("py")] == ["python"]


async def test_client_runs_python(live: tuple[Service, str]) -> None:
    _, url = live
    async with pyston_client(url) as client:
        output = await client.execute("python", [File("print('hello')")])
    assert str(output) == "hello\n"
    assert output.langauge == "python"  # sic: the client's attribute
    assert output.compile_stage is None
    assert output.run_stage is not None
    assert output.run_stage.code == 0
    assert output.raw_json["run"]["status"] is None


async def test_client_runs_c_with_both_stages(live: tuple[Service, str]) -> None:
    _, url = live
    program = '#include <stdio.h>\nint main(void) { int a, b; scanf("%d %d", &a, &b); printf("%d\\n", a + b); }\n'
    async with pyston_client(url) as client:
        output = await client.execute("c", [File(program, "sum.c")], stdin="2 40")
    assert output.compile_stage is not None
    assert output.compile_stage.code == 0
    assert output.run_stage is not None
    assert output.run_stage.stdout == "42\n"
    assert output.raw_json["compile"]["status"] is None


async def test_client_passes_stdin_and_args(live: tuple[Service, str]) -> None:
    _, url = live
    code = "import sys\nprint(input()[::-1], sys.argv[1:])\n"
    async with pyston_client(url) as client:
        output = await client.execute("py3", [File(code, "rev.py")], stdin="abc", args=["x", "y z"])
    assert str(output) == "cba ['x', 'y z']\n"


async def test_client_sees_a_runtime_error(live: tuple[Service, str]) -> None:
    _, url = live
    async with pyston_client(url) as client:
        output = await client.execute("bash", [File("echo oops >&2\nexit 3")])
    assert output.run_stage is not None
    assert output.run_stage.code == 3
    assert output.run_stage.signal is None
    run = output.raw_json["run"]
    assert (run["status"], run["stderr"], run["message"]) == ("RE", "oops\n", "exited with code 3")


async def test_client_sees_a_timeout(live: tuple[Service, str]) -> None:
    _, url = live
    async with pyston_client(url) as client:
        output = await client.execute("python", [File(SLEEPER)], run_timeout=300)
    run = output.raw_json["run"]
    assert (run["status"], run["signal"], run["code"]) == ("TO", "SIGKILL", None)
    assert run["stdout"] == "started\n"
    assert "wall-clock" in run["message"]
    assert 300 <= run["wall_time"] < 3000


async def test_client_sees_a_compile_error(live: tuple[Service, str]) -> None:
    _, url = live
    async with pyston_client(url) as client:
        output = await client.execute("c", [File("int main(void) { return x; }\n", "broken.c")])
    assert output.compile_stage is not None
    assert output.compile_stage.code == 1
    assert "broken.c:1" in output.compile_stage.output  # the user's file name, not ours
    # Piston's own answer when the run never started: run is a copy of compile, so str() works.
    assert output.raw_json["run"] == output.raw_json["compile"]
    assert "error" in str(output)


async def test_keys_bare_or_bearer_scope_the_tenant(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = (ApiKey("key-alice", "alice"), ApiKey("key-chatty", "carol", requests_per_minute=1))
    async with running_service(api_keys=keys) as service, live_server(piston_app(service)) as address:
        specs, _ = recorded_submits(service, monkeypatch)
        async with pyston_client(f"http://{address}/api/v2/", api_key="key-alice") as client:  # bare key
            assert str(await client.execute("python", [File("print(1)")])) == "1\n"
        async with httpx.AsyncClient(base_url=f"http://{address}") as http:
            bearer = await http.post(EXECUTE, json=HELLO, headers={"Authorization": "Bearer key-alice"})
            assert bearer.status_code == 200
            missing = await http.get("/api/v2/runtimes")
            assert (missing.status_code, set(missing.json())) == (401, {"message"})
            assert missing.headers["WWW-Authenticate"] == "Bearer"
            unknown = await http.post(EXECUTE, json=HELLO, headers={"Authorization": "nope"})
            assert (unknown.status_code, unknown.json()) == (403, {"message": "unknown API key"})
            chatty = {"Authorization": "key-chatty"}
            assert (await http.get("/api/v2/packages", headers=chatty)).json() == []
            limited = await http.get("/api/v2/runtimes", headers=chatty)
            assert limited.status_code == 429
            assert "message" in limited.json()
            assert int(limited.headers["Retry-After"]) >= 1
    assert [spec.tenant for spec in specs] == ["alice", "alice"]


async def test_a_client_that_hangs_up_cancels_its_run(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_service() as service, live_server(piston_app(service)) as address:
        specs, submitted = recorded_submits(service, monkeypatch)
        async with httpx.AsyncClient(base_url=f"http://{address}") as http:
            request = asyncio.create_task(http.post(EXECUTE, json=execute_body("python", SLEEPER, run_timeout=60000)))
            await submitted.wait()
            await wait_running(service, "public", specs[0].id)
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await request
        ended = await asyncio.wait_for(wait_done(service, "public", specs[0].id), timeout=10)
        assert ended.result.status is Status.SIGNALED
        assert ended.result.message == "cancelled by request"


# ------------------------------------------------------------ wire shapes


async def test_runtimes_shape_and_packages(client: httpx.AsyncClient) -> None:
    for path in ("/api/v2/runtimes", "/api/v2/runtimes/"):
        runtimes = (await client.get(path)).json()
        assert all(set(rt) <= {"language", "version", "aliases", "runtime"} for rt in runtimes)
    python = next(rt for rt in runtimes if rt["language"] == "python")
    assert "runtime" not in python  # Piston omits it unless a package provides several languages
    assert (await client.get("/api/v2/packages")).json() == []


async def test_execute_shape(client: httpx.AsyncClient) -> None:
    response = await client.post(EXECUTE, json=HELLO)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"language", "version", "run"}
    assert set(body["run"]) == {
        *("stdout", "stderr", "output", "code", "signal", "message", "status"),
        *("cpu_time", "wall_time", "memory"),
    }
    assert body["run"]["memory"] > 0
    assert isinstance(body["run"]["cpu_time"], int)


async def test_versions_select_like_semver(service: Service, client: httpx.AsyncClient) -> None:
    version = service.versions()["python"]
    major, minor, _ = version.split(".")
    for selector in ("*", version, major, f"{major}.{minor}", f"{major}.x", f"^{major}.0.0", f">={major} <99"):
        response = await client.post(EXECUTE, json={**HELLO, "version": selector})
        assert response.status_code == 200, selector
        assert response.json()["version"] == version
    for selector in ("9.9.9", f"<{major}", "latest"):
        response = await client.post(EXECUTE, json={**HELLO, "version": selector})
        assert response.status_code == 400, selector
        assert response.json() == {"message": f"python-{selector} runtime is unknown"}
    missing = await client.post(EXECUTE, json={"language": "python", "files": HELLO["files"]})
    assert missing.json() == {"message": "version is required as a string"}


@pytest.mark.parametrize(
    ("version", "selector", "expected"),
    [
        ("3.11.2", "3.11.2", True),
        ("3.11.2", "=3.11.2", True),
        ("3.11.2", "3.11.x", True),
        ("3.11.2", "3.12", False),
        ("3.11.2", "~3.11.0", True),
        ("3.11.2", "~3.10.0", False),
        ("3.11.2", "^3.9", True),
        ("3.11.2", "^4", False),
        ("0.2.5", "^0.2.1", True),
        ("0.3.0", "^0.2.1", False),
        ("3.11.2", ">3.11", False),
        ("3.11.2", "<=3.11", True),
        ("3.11.2", ">= 3.0.0 < 3.11.2", False),
        ("3.11.2", "2.x || 3.11.x", True),
        ("3.11.2", "3.11.2-beta", False),
        ("unknown", "*", True),
        ("unknown", "1", False),
    ],
)
def test_version_selectors(version: str, selector: str, expected: bool) -> None:
    assert satisfies(version, selector) is expected


async def test_cpp_is_called_c_plus_plus(client: httpx.AsyncClient) -> None:
    program = '#include <cstdio>\nint main() { std::printf("%ld\\n", __cplusplus / 100); }\n'
    for name in ("c++", "cpp", "g++"):
        response = await client.post(EXECUTE, json=execute_body(name, program))
        assert response.status_code == 200, name
        body = response.json()
        assert body["language"] == "c++"
        assert body["compile"]["code"] == 0
        assert body["run"]["stdout"] == "2017\n"


async def test_unknown_language_and_bad_bodies(client: httpx.AsyncClient) -> None:
    cases: list[tuple[Any, str]] = [
        (execute_body("cobol", "x"), "cobol-* runtime is unknown"),
        ({"version": "*", "files": []}, "language is required as a string"),
        ({"language": "python", "version": "*"}, "files is required as an array"),
        ({**HELLO, "files": []}, "files must include at least one utf8 encoded file"),
        ({**HELLO, "files": [{"name": "a.py"}]}, "files[0].content is required as a string"),
        ({**HELLO, "files": [{"content": "eA==", "encoding": "base64"}]}, "files must include at least one utf8"),
        ({**HELLO, "files": [{"content": "print(1)"}, {"content": "zz", "encoding": "hex"}]}, "not valid hex"),
        ({**HELLO, "args": "x"}, "args must be an array of strings"),
        ({**HELLO, "stdin": 5}, "stdin must be a string"),
        ([1, 2], "the request body must be a JSON object"),
    ]
    for body, message in cases:
        response = await client.post(EXECUTE, json=body)
        assert response.status_code == 400, body
        assert set(response.json()) == {"message"}
        assert message in response.json()["message"], response.json()
    not_json = await client.post(EXECUTE, content=b"{", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400
    assert "not valid JSON" in not_json.json()["message"]
    text = await client.post(EXECUTE, content=b"print(1)", headers={"Content-Type": "text/plain"})
    assert text.status_code == 415
    assert text.json() == {"message": "requests must be of type application/json"}


async def test_limits_over_our_maxima_are_refused(client: httpx.AsyncClient) -> None:
    cases = {
        "run_timeout": (10**9, "run_timeout cannot exceed the configured limit of 120000"),
        "compile_cpu_time": (10**9, "compile_cpu_time cannot exceed the configured limit of 60000"),
        "run_memory_limit": (2**40, f"run_memory_limit cannot exceed the configured limit of {4096 * MIB}"),
        "run_cpu_time": (-5, "run_cpu_time must be non-negative"),
        "compile_timeout": ("10", "If specified, compile_timeout must be a number"),
    }
    for name, (value, message) in cases.items():
        response = await client.post(EXECUTE, json={**HELLO, name: value})
        assert (response.status_code, response.json()) == (400, {"message": message}), name
    defaults = {f"{stage}_{limit}": -1 for stage in ("compile", "run") for limit in ("timeout", "cpu_time")}
    assert (await client.post(EXECUTE, json={**HELLO, **defaults, "run_memory_limit": 0})).status_code == 200


async def test_cpu_and_memory_limits_apply(client: httpx.AsyncClient) -> None:
    spin = await client.post(EXECUTE, json=execute_body("python", "while True: pass", run_cpu_time=200))
    run = spin.json()["run"]
    assert (run["status"], run["signal"], run["code"]) == ("TO", "SIGKILL", None)
    assert "CPU time" in run["message"]
    hog = "data = bytearray(512 * 1024 * 1024)\nprint(len(data))\n"
    oom = await client.post(EXECUTE, json=execute_body("python", hog, run_memory_limit=32 * MIB))
    run = oom.json()["run"]
    # The OOM killer's SIGKILL, reported the way Piston reports an OOM kill.
    assert (run["status"], run["signal"], run["code"]) == ("SG", "SIGKILL", None)
    assert "memory limit" in run["message"]


async def test_stdin_gets_a_trailing_newline(client: httpx.AsyncClient) -> None:
    code = "import sys\nprint(repr(sys.stdin.read()))\n"
    for stdin, seen in (("abc", "'abc\\n'\n"), ("abc\n", "'abc\\n'\n"), (None, "'\\n'\n")):
        response = await client.post(EXECUTE, json=execute_body("python", code, stdin=stdin))
        assert response.json()["run"]["stdout"] == seen, stdin


async def test_output_is_interleaved_as_produced(client: httpx.AsyncClient) -> None:
    code = (
        "import sys, time\nprint('one', flush=True)\ntime.sleep(0.1)\n"
        "print('two', file=sys.stderr, flush=True)\ntime.sleep(0.1)\nprint('three', flush=True)\n"
    )
    run = (await client.post(EXECUTE, json=execute_body("python", code))).json()["run"]
    assert run["output"] == "one\ntwo\nthree\n"
    assert (run["stdout"], run["stderr"]) == ("one\nthree\n", "two\n")


async def test_files_encodings_names_and_the_main_file(client: httpx.AsyncClient) -> None:
    program = "import helper\nprint(open('blob.bin', 'rb').read(), open('note.txt').read(), helper.NAME)\n"
    files = [
        {"name": "blob.bin", "content": base64.b64encode(b"\x00\xffdata").decode(), "encoding": "base64"},
        {"name": "prog.py", "content": program},  # the first utf8 file is the program, wherever it is
        {"name": "note.txt", "content": b"hi".hex(), "encoding": "hex"},
        {"name": "helper.py", "content": "NAME = 'helper'\n"},
    ]
    response = await client.post(EXECUTE, json={"language": "python", "version": "*", "files": files})
    assert response.json()["run"]["stdout"] == "b'\\x00\\xffdata' hi helper\n"
    # The program keeps its own name (a.py), so a main.py beside it is just another file...
    both = [{"name": "a.py", "content": "import main"}, {"name": "main.py", "content": "print(2)"}]
    assert (await client.post(EXECUTE, json={**HELLO, "files": both})).json()["run"]["stdout"] == "2\n"
    # ...but a program whose name cannot be kept is stored as main.py, and then two files share it.
    clash = [{"name": "a", "content": "print(1)"}, {"name": "main.py", "content": "print(2)"}]
    refused = await client.post(EXECUTE, json={**HELLO, "files": clash})  # refused by the worker, still a 400
    assert refused.status_code == 400
    assert "duplicate file names" in refused.json()["message"]


async def test_requests_are_counted_under_the_piston_door(service: Service, client: httpx.AsyncClient) -> None:
    await client.post(EXECUTE, json=HELLO)
    await client.get("/api/v2/runtimes/")
    await client.post(EXECUTE, json={**HELLO, "language": "cobol"})

    def count(door: str, code: str) -> float:
        labels = {"door": door, "code": code}
        return service.metrics.registry.get_sample_value("sandlot_requests_total", labels) or 0.0

    assert (count("piston", "200"), count("piston", "400")) == (2.0, 1.0)
    assert count("http", "200") == count("http", "400") == 0.0


# ------------------------------------------------------- the status model


async def test_output_limits_name_the_stream() -> None:
    limits = dataclasses.replace(DEFAULT_RUN_LIMITS, max_output_bytes=SMALL_OUTPUT_BYTES)
    server = ServerSettings(gvisor_pool_size=0, pool_size=1, drain_deadline_s=2.0)
    require_root()
    service = await Service.start(make_settings(run_defaults=limits), server)
    try:
        async with asgi_client(piston_app(service)) as client:
            for stream, status in (("stdout", "OL"), ("stderr", "EL")):
                code = f"import sys\nsys.{stream}.write('x' * 100000)\n"
                run = (await client.post(EXECUTE, json=execute_body("python", code))).json()["run"]
                assert (run["status"], run["signal"], run["code"]) == (status, "SIGKILL", None), stream
                assert len(run[stream]) == SMALL_OUTPUT_BYTES
    finally:
        await service.stop()


async def test_a_sandbox_failure_is_a_500_with_status_xx() -> None:
    async with running_service(start_worker=False) as service, asgi_client(piston_app(service)) as client:
        request = asyncio.create_task(client.post(EXECUTE, json=HELLO))
        spec = await service.broker.claim()  # this test is the worker
        await service.broker.mark_running(spec.id)
        failure = Result(Status.INTERNAL_ERROR, language="python", message="sandbox failure: no box")
        await service.broker.finish(spec.id, ExitEvent(failure, seq=1))
        response = await request
    assert response.status_code == 500
    run = response.json()["run"]
    assert (run["status"], run["message"], run["code"]) == ("XX", "sandbox failure: no box", None)
