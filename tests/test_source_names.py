"""The main source's name in the box: the user's own, or (Java) its public class's.

javac refuses a public class in a file of another name, and Judge0/Piston and
playground users paste ``Main``, ``Solution``, anything; tracebacks and compiler
messages must show the user's file name, not ``main.py``. The engine names the
file, so every door gets the same behaviour: the engine, the HTTP door and the
CLI are each driven here with real sandboxes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sandlot.api.http.app import create_app
from sandlot.engine import Engine
from sandlot.languages.naming import choose
from sandlot.models import Job, SourceFile, Status
from sandlot.sandbox import Box
from tests.api.http.test_http import asgi_client, running_service
from tests.cli.test_cli import _sandlot, _write
from tests.conftest import run_job

SOLUTION = """
import java.util.Scanner;

public class Solution {
    public static void main(String[] args) {
        System.out.println("solved " + new Scanner(System.in).nextLine());
    }
}
"""
IN_A_PACKAGE = """
package com.example.app;

// public class Decoy {}  (a comment, not a class)
public final class Hello {
    static class Inner {}
    public static void main(String[] args) {
        System.out.println(Hello.class.getName());
    }
}
"""
NO_PUBLIC_CLASS = """
class Runner {
    public static void main(String[] args) {
        System.out.println("from " + new Object() {}.getClass().getEnclosingClass().getName());
    }
}
class Helper {}
"""


async def _java(engine: Engine, box: Box, code: str, user_file_name: str | None = None) -> tuple[Status, str, str]:
    job = Job(language="java", files=(SourceFile("main", code.encode()),), stdin=b"42\n", user_file_name=user_file_name)
    events = [event async for event in engine.execute(engine.prepare(job), box)]
    result = events[-1].result  # type: ignore[attr-defined]
    return result.status, result.stdout.decode(), result.compile_output.decode()


@pytest.mark.parametrize("user_file_name", [None, "Solution.java", "whatever.java"])
async def test_java_public_class_names_the_source(engine: Engine, box: Box, user_file_name: str | None) -> None:
    status, stdout, compile_output = await _java(engine, box, SOLUTION, user_file_name)
    assert (status, stdout) == (Status.OK, "solved 42\n"), compile_output


async def test_java_class_in_a_package_runs_by_its_qualified_name(engine: Engine, box: Box) -> None:
    status, stdout, compile_output = await _java(engine, box, IN_A_PACKAGE, "Hello.java")
    assert (status, stdout) == (Status.OK, "com.example.app.Hello\n"), compile_output


async def test_java_without_a_public_class_runs_the_first_class(engine: Engine, box: Box) -> None:
    status, stdout, compile_output = await _java(engine, box, NO_PUBLIC_CLASS)
    assert (status, stdout) == (Status.OK, "from Runner\n"), compile_output


async def test_java_compile_errors_name_the_users_file(engine: Engine, box: Box) -> None:
    broken = "public class Solution {\n    public static void main(String[] a) { int x = ; }\n}\n"
    status, _, compile_output = await _java(engine, box, broken, "mine.java")
    assert status is Status.COMPILE_ERROR
    assert "mine.java:2:" in compile_output
    assert "Solution.java" not in compile_output


async def test_python_traceback_shows_the_users_file_name(engine: Engine, box: Box) -> None:
    job = Job(language="python", files=(SourceFile("hello.py", b"raise SystemExit(x)\n"),), user_file_name="hello.py")
    events = [event async for event in engine.execute(engine.prepare(job), box)]
    stderr = events[-1].result.stderr.decode()  # type: ignore[attr-defined]
    assert 'File "/box/hello.py", line 1' in stderr, stderr


async def test_code_without_a_name_keeps_the_default_name(engine: Engine, box: Box) -> None:
    run = await run_job(engine, box, "python", "import sys\nprint(sys.argv[0])\n")
    assert run.stdout == "main.py\n"


@pytest.mark.parametrize("name", ["../x.py", "-x.py", "a b.py", "x.txt", "\udcff.py", ".py"])
def test_unsafe_or_foreign_user_names_fall_back_to_the_default(name: str) -> None:
    assert choose("user", "main.py", (".py",), name, b"").file == "main.py"


async def test_http_code_with_a_solution_class_runs() -> None:
    async with running_service() as service, asgi_client(create_app(service)) as client:
        response = await client.post("/api/v1/run", json={"language": "java", "code": SOLUTION, "stdin": "7\n"})
    assert response.status_code == 200, response.text
    data: dict[str, str] = response.json()
    assert (data["status"], data["stdout"]) == ("ok", "solved 7\n"), data


async def test_http_files_named_otherwise_run_their_public_class() -> None:
    async with running_service() as service, asgi_client(create_app(service)) as http:
        body = {"language": "java", "files": [{"name": "Main.java", "content": IN_A_PACKAGE}]}
        response = await http.post("/api/v1/run", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["stdout"] == "com.example.app.Hello\n", response.json()


@pytest.mark.root
@pytest.mark.parametrize("name", ["Hello.java", "greeting.java"])
def test_java_public_class_in_any_file_name(tmp_path: Path, name: str) -> None:
    code = 'public class Hello {\n    public static void main(String[] a) { System.out.println("hi " + a[0]); }\n}\n'
    proc = _sandlot("run", _write(tmp_path, name, code), "--", "there")
    assert (proc.returncode, proc.stdout) == (0, b"hi there\n"), proc.stderr


@pytest.mark.root
def test_python_traceback_names_the_users_file(tmp_path: Path) -> None:
    proc = _sandlot("run", _write(tmp_path, "hello.py", "print('a')\nraise ValueError('boom')\n"))
    assert proc.returncode == 1
    assert b'File "/box/hello.py", line 2' in proc.stderr, proc.stderr
