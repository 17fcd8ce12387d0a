"""CI-like jobs: commands run in order in one workspace, each a stage, stopping at the first failure."""

from __future__ import annotations

import base64
import dataclasses

import pytest

from sandlot.api.http.app import create_app
from sandlot.engine import Engine
from sandlot.errors import RejectedError
from sandlot.models import ExitEvent, Job, SourceFile, StageEvent, StageResultEvent, Status
from sandlot.sandbox import Box
from tests.api.http.test_http import asgi_client, running_service

_MAKEFILE_LIKE = (
    "echo building > build.log && cc -O2 -o hello hello.c",
    "./hello > out.txt && cat out.txt",
    "exit 7",
    "echo never > never.txt",
)
_HELLO_C = b'#include <stdio.h>\nint main(void) { puts("hi from c"); return 0; }\n'


async def test_commands_run_in_order_and_stop_at_the_first_failure(engine: Engine, box: Box) -> None:
    job = Job(
        language="bash",
        files=(SourceFile("main.sh", b"true\n"), SourceFile("hello.c", _HELLO_C)),
        commands=_MAKEFILE_LIKE,
        fetch_files=("out.txt", "build.log", "never.txt"),
    )
    events = [e async for e in engine.execute(engine.prepare(job), box)]
    stages = [e.stage for e in events if isinstance(e, StageEvent)]
    assert stages == ["command 1", "command 2", "command 3"]  # the 4th never starts
    results = {e.stage: e.result for e in events if isinstance(e, StageResultEvent)}
    assert results["command 1"].status is Status.OK
    assert results["command 2"].stdout == b"hi from c\n"
    assert results["command 3"].status is Status.RUNTIME_ERROR
    assert results["command 3"].exit_code == 7
    exit_event = events[-1]
    assert isinstance(exit_event, ExitEvent)
    assert exit_event.result.exit_code == 7
    assert [name for name, _ in exit_event.stages] == ["command 1", "command 2", "command 3"]
    # Only files that exist come back; a path leaving the workspace is refused up front.
    assert dict(exit_event.files) == {"out.txt": b"hi from c\n", "build.log": b"building\n"}
    with pytest.raises(RejectedError, match="fetch_files"):
        engine.prepare(dataclasses.replace(job, fetch_files=("../escape",)))


async def test_commands_and_fetch_files_over_http() -> None:
    async with running_service() as service, asgi_client(create_app(service)) as client:
        body = {
            "language": "bash",
            "files": [{"name": "main.sh", "content": "true"}, {"name": "data.txt", "content": "3\n4\n"}],
            "commands": ["paste -sd+ data.txt | bc > sum.txt || awk '{s+=$1} END {print s}' data.txt > sum.txt"],
            "fetch_files": ["sum.txt"],
        }
        response = await client.post("/api/v1/run", json=body)
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["status"] == "ok"
        assert [stage["name"] for stage in result["stages"]] == ["command 1"]
        assert {f["name"]: base64.b64decode(f["content"]) for f in result["files"]} == {"sum.txt": b"7\n"}
