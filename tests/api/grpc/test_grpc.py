"""The gRPC doors over a real socket, with real sandboxes behind them.

Each test starts a Service and the gRPC server on a free loopback port and talks
to it through stubs generated from our own .proto files. The run defaults are
lowered to a 1 s CPU limit so the timeout case is quick.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import signal
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sandlot.api.grpc.gen.go_sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc
from sandlot.api.grpc.gen.sandlot.v1 import sandlot_pb2 as pb
from sandlot.api.grpc.gen.sandlot.v1 import sandlot_pb2_grpc
from sandlot.api.grpc.go_sandbox_v1 import exec_error, language_of
from sandlot.api.grpc.sandlot_v1 import _event
from sandlot.api.grpc.server import create_grpc_server
from sandlot.broker import TaskSpec
from sandlot.config import DEFAULT_RUN_LIMITS, ApiKey, ServerSettings
from sandlot.models import NOTICE_SESSION_RESET, ExitEvent, NoticeEvent, OutputEvent, Result, SourceFile, Status
from sandlot.requests import new_task_id
from sandlot.service import Service
from tests.api.http.test_http import note_submits, wait_until
from tests.conftest import make_settings
from tests.nodes import free_ports
from tests.root import require_root

_BOUND_S = 30.0  # no single wait below should come near this; it only turns a hang into a failure
# A short CPU limit, and a wall limit far above it: on a loaded machine 1 s of CPU can take many seconds.
_FAST_LIMITS = dataclasses.replace(DEFAULT_RUN_LIMITS, time_limit_s=1.0, wall_time_limit_s=60.0)

_SLEEPER = 'import time\nprint("started", flush=True)\ntime.sleep(60)\n'


@dataclass
class _Env:
    service: Service
    channel: grpc.aio.Channel
    sandlot: Any  # sandlot_pb2_grpc.SandlotStub over an aio channel
    go: Any  # sandbox_pb2_grpc.GoSandboxServiceStub over an aio channel

    def requests(self, door: str, code: str) -> float:
        value = self.service.metrics.registry.get_sample_value("sandlot_requests_total", {"door": door, "code": code})
        return value or 0.0


@contextlib.asynccontextmanager
async def grpc_serving(server_settings: ServerSettings) -> AsyncIterator[_Env]:
    require_root()
    service = await Service.start(make_settings(run_defaults=_FAST_LIMITS), server_settings)
    try:
        (port,) = free_ports(1)
        address = f"127.0.0.1:{port}"
        server = create_grpc_server(service, address)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                yield _Env(
                    service,
                    channel,
                    sandlot_pb2_grpc.SandlotStub(channel),
                    sandbox_pb2_grpc.GoSandboxServiceStub(channel),
                )
        finally:
            await server.stop(None)
    finally:
        await service.stop()


@pytest.fixture
async def env() -> AsyncIterator[_Env]:
    async with grpc_serving(ServerSettings(gvisor_pool_size=0, pool_size=2)) as serving:
        yield serving


async def _run_code(env: _Env, code: str, session_id: str = "") -> list[sandbox_pb2.RunResponse]:
    async with asyncio.timeout(_BOUND_S):
        return [r async for r in env.go.RunCode(sandbox_pb2.RunRequest(code=code, session_id=session_id))]


def _outputs(responses: Sequence[sandbox_pb2.RunResponse]) -> list[str]:
    return [r.output for r in responses if not r.is_error]


async def _events(call: Any) -> list[pb.Event]:
    async with asyncio.timeout(_BOUND_S):
        return [event async for event in call]


async def _read_rest(call: Any) -> list[pb.Event]:
    """The remaining events of a call driven with read()/write() (which may not be mixed with iteration)."""
    events = []
    async with asyncio.timeout(_BOUND_S):
        while (event := await call.read()) is not grpc.aio.EOF:
            events.append(event)
    return events


async def _status_of(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async with asyncio.timeout(_BOUND_S):
            if hasattr(call, "__aiter__"):
                async for _ in call:
                    pass
            else:
                await call
    return caught.value


async def _wait_for_status(call: Any) -> grpc.aio.AioRpcError:
    """The error status of a call driven with read()/write()."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _read_rest(call)
    return caught.value


# ------------------------------------------------------------ go_sandbox.v1


async def test_run_code_streams_one_response_per_line_as_produced(env: _Env) -> None:
    # After its first lines the program waits for a file "go" in its session's workdir, which the test
    # puts there once the first response is here: "still running" is then certain, however slow the
    # machine (RunCode has no stdin; a session is its way to share files with the program).
    code = (
        "import os, sys, time\n"
        'print("first")\n'
        'sys.stdout.write("two\\nthree\\npar")\n'
        "sys.stdout.flush()\n"
        'while not os.path.exists("go"):\n'
        "    time.sleep(0.01)\n"
        'print("tial")\n'
        'sys.stderr.write("to stderr\\n")\n'
        'sys.stdout.write("no newline at the end")\n'
    )
    received: list[sandbox_pb2.RunResponse] = []
    busy_at_first: int | None = None
    async with asyncio.timeout(_BOUND_S):
        async for response in env.go.RunCode(sandbox_pb2.RunRequest(code=code, session_id="gated")):
            if not received:
                busy_at_first = env.service.pool.busy  # the program is still running (waiting for "go")
                ((tenant, session_id),) = env.service.pool.session_keys()
                files = env.service.sessions.files(tenant, session_id)
                await files.write("go", b"")
            received.append(response)

    assert busy_at_first == 1
    lines = _outputs(received)
    assert [line for line in lines if line != "to stderr"] == [
        "first",
        "two",
        "three",
        "partial",
        "no newline at the end",
    ]
    assert "to stderr" in lines
    assert not any(r.is_error for r in received)
    stamps = [r.timestamp for r in received]
    assert stamps == sorted(stamps)
    assert stamps[-1] > stamps[0]  # "partial" came two seconds after "first"
    assert 1_000_000_000_000 < stamps[0] < 100_000_000_000_000  # Unix milliseconds
    assert env.requests("grpc_go_sandbox", "OK") == 1


@pytest.mark.parametrize(
    ("code", "language"),
    [
        ("package main\n", "go"),
        ("// Command hello.\n\n/* a\n   block */\npackage main\n", "go"),
        ("\ufeff  package\nmain", "go"),
        ("print('package main')\n", "python"),
        ("# package main\n", "python"),
        ("packages = 1\n", "python"),
        ("", "python"),
    ],
)
def test_language_is_go_when_the_code_opens_with_a_package_clause(code: str, language: str) -> None:
    assert language_of(code) == language


async def test_run_code_runs_go(env: _Env) -> None:
    code = '// hello\npackage main\n\nimport "fmt"\n\nfunc main() {\n\tfmt.Println("hello from", "go")\n}\n'
    responses = await _run_code(env, code)
    assert _outputs(responses) == ["hello from go"]
    assert not responses[-1].is_error


async def test_run_code_go_compile_error_is_output(env: _Env) -> None:
    responses = await _run_code(env, "package main\n\nfunc main() {\n\tundefinedThing()\n}\n")
    assert any(line.startswith("main.go:4:") and "undefined" in line for line in _outputs(responses))
    last = responses[-1]
    assert last.is_error
    assert last.exec_err.startswith("compilation failed")


async def test_run_code_program_failure_ends_with_an_exec_error(env: _Env) -> None:
    responses = await _run_code(env, 'import sys\nprint("before")\nsys.exit(3)\n')
    assert _outputs(responses) == ["before"]
    assert responses[-1].is_error
    assert responses[-1].exec_err == "exit status 3"

    responses = await _run_code(env, 'print("spinning", flush=True)\nwhile True:\n    pass\n')
    assert _outputs(responses) == ["spinning"]
    assert responses[-1].is_error
    assert responses[-1].exec_err.startswith("timeout: CPU time limit exceeded")


async def test_run_code_rejected_input_is_an_error_response(env: _Env) -> None:
    responses = await _run_code(env, "   \n")
    assert len(responses) == 1
    assert responses[0].is_error
    assert "empty" in responses[0].exec_err


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (Result(Status.OK, exit_code=0), None),
        (Result(Status.RUNTIME_ERROR, exit_code=3), "exit status 3"),
        (Result(Status.SIGNALED, signal=signal.SIGSEGV), "signal: segmentation fault"),
        (Result(Status.TIMEOUT, message="wall-clock time limit exceeded (10 s)"), "timeout: wall-clock"),
        (Result(Status.COMPILE_ERROR, exit_code=1, message="compilation failed"), "compilation failed: exit status 1"),
        (Result(Status.INTERNAL_ERROR, message="sandbox failure: boom"), "sandbox failure: boom"),
        (Result(Status.SIGNALED, signal=9, message="cancelled by request"), "cancelled by request"),
    ],
)
def test_exec_error_wording(result: Result, expected: str | None) -> None:
    got = exec_error(result)
    assert got == expected if expected is None else got is not None and got.startswith(expected)


async def test_run_code_session_keeps_files(env: _Env) -> None:
    write = 'open("note.txt", "w").write("kept")\nprint("written")\n'
    read = 'import os\nprint(open("note.txt").read() if os.path.exists("note.txt") else "missing")\n'
    assert _outputs(await _run_code(env, write, session_id="alice")) == ["written"]
    assert _outputs(await _run_code(env, read, session_id="alice")) == ["kept"]
    assert _outputs(await _run_code(env, read)) == ["missing"]  # a fresh box
    assert env.service.pool.session_count == 1


# --------------------------------------------------------------- sandlot.v1


async def test_execute_streams_events(env: _Env) -> None:
    call = env.sandlot.Execute(pb.ExecuteRequest(language="python", code='print("hi")\n'))
    events = await _events(call)

    kinds = [e.WhichOneof("kind") for e in events]
    assert kinds[0] == "stage"
    assert kinds[-1] == "exit"
    assert set(kinds[1:-1]) == {"output"}  # print may write "hi" and "\n" apart
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert all(a.time <= b.time for a, b in itertools.pairwise(events))
    assert events[0].stage.name == "run"
    assert {e.output.stream for e in events[1:-1]} == {pb.STREAM_STDOUT}
    assert b"".join(e.output.data for e in events[1:-1]) == b"hi\n"
    result = events[-1].exit.result
    assert result.status == pb.STATUS_OK
    assert result.HasField("exit_code")
    assert result.exit_code == 0
    assert not result.HasField("signal")
    assert result.stdout == b"hi\n"
    assert result.cpu_time > 0
    assert result.language == "python"
    metadata = dict(await call.initial_metadata())
    assert len(metadata["sandlot-task-id"]) == 32


async def test_execute_files_stdin_args_and_fetch(env: _Env) -> None:
    program = b'import sys\nout = open("out.txt", "w")\nout.write(sys.stdin.read() + sys.argv[1])\n'
    request = pb.ExecuteRequest(
        language="py",
        files=[pb.File(name="helper.txt", content=b"x"), pb.File(name="main.py", content=program)],
        stdin=b"in-",
        args=["arg"],
        limits=pb.Limits(time_limit=2.5, memory_limit=128),
        fetch_files=["out.txt"],
    )
    events = await _events(env.sandlot.Execute(request))
    exit_ = events[-1].exit
    assert exit_.result.status == pb.STATUS_OK, exit_.result.message
    assert [(f.name, f.content) for f in exit_.files] == [("out.txt", b"in-arg")]


async def test_list_languages(env: _Env) -> None:
    response = await env.sandlot.ListLanguages(pb.ListLanguagesRequest())
    languages = {lang.name: lang for lang in response.languages}
    assert {"python", "go"} <= languages.keys()
    assert languages["python"].version[0].isdigit()
    assert not languages["python"].compiled
    assert languages["go"].compiled
    assert "golang" in languages["go"].aliases


async def test_interact_echoes_stdin_as_it_arrives(env: _Env) -> None:
    code = 'import sys\nfor line in sys.stdin:\n    print("echo:", line.strip(), flush=True)\nprint("bye")\n'
    call = env.sandlot.Interact()
    await call.write(pb.InteractRequest(start=pb.ExecuteRequest(language="python", code=code)))
    await call.write(pb.InteractRequest(stdin=b"hello\n"))
    async with asyncio.timeout(_BOUND_S):
        outputs = b""
        while b"echo: hello\n" not in outputs:  # the echo comes while stdin is still open
            event = await call.read()
            assert event.WhichOneof("kind") in ("stage", "output")
            outputs += event.output.data
        await call.write(pb.InteractRequest(close_stdin=True))
        events = await _read_rest(call)
    assert events[-1].exit.result.status == pb.STATUS_OK
    assert events[-1].exit.result.stdout == b"echo: hello\nbye\n"


async def test_interact_signal_reaches_the_program(env: _Env) -> None:
    call = env.sandlot.Interact()
    await call.write(pb.InteractRequest(start=pb.ExecuteRequest(language="python", code=_SLEEPER)))
    async with asyncio.timeout(_BOUND_S):
        while (await call.read()).WhichOneof("kind") != "output":
            pass
        await call.write(pb.InteractRequest(signal=signal.SIGINT))
        events = await _read_rest(call)
    result = events[-1].exit.result
    if result.status == pb.STATUS_SIGNALED:
        assert result.signal == signal.SIGINT
    else:
        assert result.status == pb.STATUS_RUNTIME_ERROR
        assert b"KeyboardInterrupt" in result.stderr


async def test_invalid_argument_names_the_field(env: _Env) -> None:
    error = await _status_of(env.sandlot.Execute(pb.ExecuteRequest(language="cobol", code="x")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cobol" in (error.details() or "")
    assert ("sandlot-field", "language") in tuple(error.trailing_metadata() or ())

    too_long = pb.ExecuteRequest(language="python", code="print(1)", limits=pb.Limits(time_limit=1000))
    error = await _status_of(env.sandlot.Execute(too_long))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "limits.time_limit" in (error.details() or "")

    error = await _status_of(env.sandlot.Execute(pb.ExecuteRequest(language="python", isolation="vm", code="1")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # rejected by the worker, before any event
    assert "isolation" in (error.details() or "")

    error = await _status_of(env.sandlot.Interact(iter([pb.InteractRequest(stdin=b"x")])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "start" in (error.details() or "")

    error = await _status_of(env.sandlot.Execute(pb.ExecuteRequest(language="python", session_id="nope", code="1")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert env.requests("grpc", "INVALID_ARGUMENT") == 4
    assert env.requests("grpc", "NOT_FOUND") == 1


async def test_interact_bad_signal_cancels_the_run(env: _Env) -> None:
    call = env.sandlot.Interact()
    await call.write(pb.InteractRequest(start=pb.ExecuteRequest(language="python", code=_SLEEPER)))
    async with asyncio.timeout(_BOUND_S):
        while (await call.read()).WhichOneof("kind") != "output":
            pass
    await call.write(pb.InteractRequest(signal=999))
    error = await _wait_for_status(call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "signal" in (error.details() or "")
    assert env.service.broker.queue_depth() == 0
    await wait_until(lambda: env.service.pool.busy == 0)  # the box is given back just after the exit event


async def test_queue_full_is_resource_exhausted() -> None:
    async with grpc_serving(ServerSettings(gvisor_pool_size=0, pool_size=1, max_queued=1)) as env:
        service = env.service

        def spec() -> TaskSpec:
            return TaskSpec(new_task_id(), "public", "python", (SourceFile("main", _SLEEPER.encode()),))

        running = await service.submit(spec())
        async with asyncio.timeout(_BOUND_S):
            async for event in service.broker.subscribe("public", running.id):
                if isinstance(event, OutputEvent):
                    break  # the only worker is busy running it
        queued = await service.submit(spec())
        try:
            error = await _status_of(env.sandlot.Execute(pb.ExecuteRequest(language="python", code="print(1)")))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            responses = await _run_code(env, "print(1)")
            assert len(responses) == 1
            assert responses[0].is_error
            assert "queued" in responses[0].exec_err
            assert env.requests("grpc_go_sandbox", "RESOURCE_EXHAUSTED") == 1
        finally:
            await service.broker.cancel("public", queued.id)
            await service.broker.cancel("public", running.id)


async def test_api_keys_are_required_when_configured() -> None:
    keys = (ApiKey("right-key", "acme"),)
    async with grpc_serving(ServerSettings(gvisor_pool_size=0, pool_size=1, api_keys=keys)) as env:
        request = pb.ListLanguagesRequest()
        error = await _status_of(env.sandlot.ListLanguages(request))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        error = await _status_of(env.sandlot.ListLanguages(request, metadata=(("authorization", "Bearer wrong"),)))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        error = await _status_of(env.go.RunCode(sandbox_pb2.RunRequest(code="print(1)")))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED  # a status, not an in-stream error

        good = (("authorization", "Bearer right-key"),)
        response = await env.sandlot.ListLanguages(request, metadata=good)
        assert response.languages
        call = env.sandlot.Execute(pb.ExecuteRequest(language="python", code="print(1)"), metadata=good)
        events = await _events(call)
        task_id = dict(await call.initial_metadata())["sandlot-task-id"]
        assert events[-1].exit.result.status == pb.STATUS_OK
        assert await env.service.broker.get("acme", task_id) is not None  # the key's tenant owns the task
        assert await env.service.broker.get("public", task_id) is None


async def test_reflection_lists_both_services(env: _Env) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(env.channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="go_sandbox.v1.GoSandboxService"),
    ]
    async with asyncio.timeout(_BOUND_S):
        listed, described = [r async for r in stub.ServerReflectionInfo(iter(requests))]
    names = {s.name for s in listed.list_services_response.service}
    assert {"go_sandbox.v1.GoSandboxService", "sandlot.v1.Sandlot", "grpc.health.v1.Health"} <= names
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in described.file_descriptor_response.file_descriptor_proto
    ]
    assert [f.package for f in files] == ["go_sandbox.v1"]  # grpcurl needs no .proto file


async def test_health_is_serving(env: _Env) -> None:
    stub = health_pb2_grpc.HealthStub(env.channel)
    for name in ("", "go_sandbox.v1.GoSandboxService", "sandlot.v1.Sandlot"):
        response = await stub.Check(health_pb2.HealthCheckRequest(service=name))
        assert response.status == health_pb2.HealthCheckResponse.SERVING, name


async def test_client_cancellation_kills_the_run(env: _Env) -> None:
    call = env.sandlot.Execute(pb.ExecuteRequest(language="python", code=_SLEEPER))
    task_id = dict(await call.initial_metadata())["sandlot-task-id"]
    async with asyncio.timeout(_BOUND_S):
        while (await call.read()).WhichOneof("kind") != "output":
            pass
    call.cancel()

    async with asyncio.timeout(_BOUND_S):
        events = [e async for e in env.service.broker.subscribe("public", task_id)]
    final = events[-1]
    assert isinstance(final, ExitEvent)
    assert final.result.status is Status.SIGNALED
    assert final.result.message == "cancelled by request"


async def test_execute_delivers_the_whole_output_of_a_cancelled_task(env: _Env) -> None:
    call = env.sandlot.Execute(pb.ExecuteRequest(language="python", code=_SLEEPER))
    task_id = dict(await call.initial_metadata())["sandlot-task-id"]
    printed = b""
    async with asyncio.timeout(_BOUND_S):
        while b"\n" not in printed:  # the whole line: print() writes the text and its newline apart
            event = await call.read()
            if event.WhichOneof("kind") == "output":
                printed += event.output.data
    assert await env.service.broker.cancel("public", task_id)  # as another door's cancel does
    rest = await _read_rest(call)
    printed += b"".join(e.output.data for e in rest if e.WhichOneof("kind") == "output")
    final = rest[-1].exit.result
    assert printed == final.stdout == b"started\n"
    assert final.status == pb.STATUS_SIGNALED
    assert final.message == "cancelled by request"


async def test_run_code_says_a_cancelled_task_was_cancelled(env: _Env, monkeypatch: pytest.MonkeyPatch) -> None:
    submitted = note_submits(env.service, monkeypatch)  # RunCode does not name its task
    responses: list[sandbox_pb2.RunResponse] = []
    async with asyncio.timeout(_BOUND_S):
        async for response in env.go.RunCode(sandbox_pb2.RunRequest(code=_SLEEPER)):
            responses.append(response)
            if response.output == "started":  # a whole line (this door sends lines)
                assert await env.service.broker.cancel("public", await submitted.get())
    assert _outputs(responses) == ["started"]
    assert responses[-1].is_error
    assert responses[-1].exec_err == "cancelled by request"


def test_every_status_has_a_wire_value() -> None:
    for status in Status:
        assert pb.Status.Value("STATUS_" + status.name) > 0


def test_a_notice_is_its_own_event_kind() -> None:
    rendered = _event(NoticeEvent(NOTICE_SESSION_RESET, "a fresh box", seq=3, time=1.5))
    assert rendered.WhichOneof("kind") == "notice"
    assert (rendered.seq, rendered.notice.code, rendered.notice.message) == (3, "session_reset", "a fresh box")
