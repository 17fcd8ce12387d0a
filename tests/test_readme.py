"""Every command and code example in README.md, run as written, so the README cannot drift.

The README's code blocks (indented or fenced) are extracted (``readme_blocks``)
and each one is a test named after its line. A block is, by its content or by the marker
comment right above it:

- shell (the default): each command (``\\`` continuations joined) runs in
  ``bash -o pipefail`` in a scratch directory holding the files the examples
  name (``prog.py``, ``a.c``, ...) and a ``.venv`` link to this virtualenv,
  with the virtualenv's ``bin`` first on PATH; it must exit 0. A comment line
  ``# {...}`` right under a command is its expected output: every key in it
  must be in the command's JSON answer with that value (the values of
  ``HOST_SPECIFIC`` keys only present).
- ``<!-- readme-test: python -->``: the block runs as a Python script, exit 0.
- JSON (starts with ``{``): an MCP client configuration; it must parse, and its
  command (``/path/to/sandlot`` being this checkout) must answer an MCP
  ``initialize`` over stdio.
- ``<!-- readme-test: not run: REASON -->``: not run, for the reason given
  (installs and serves forever, the whole test suite, placeholders). The
  reason is required, and such blocks are listed in the test ids.

Substitutions, the only changes to what is written: ``localhost:8080`` and
``127.0.0.1:8080`` become a real ``sandlot serve`` started for this module on
free ports (SANDLOT_SERVER points at it too, for ``sandlot submit``'s default);
``TASK_ID`` and ``SID`` become the task and session id an earlier command of
the same block printed; ``curl`` gets ``--fail-with-body`` so an HTTP error
fails the command; a ``sandlot serve`` command is started (its ports from
SANDLOT_HTTP_PORT/SANDLOT_GRPC_PORT), must become ready, and must exit 0 on
SIGTERM. Every failure names the README line of the command.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_CGROUP, TEST_RUN_DIR, TEST_STATE_DIR, TEST_UID_BASE
from tests.nodes import Node, free_ports

README = Path(__file__).resolve().parents[1] / "README.md"
REPO = README.parent
VENV_BIN = Path(sys.executable).parent
MARKER = re.compile(r"^<!-- readme-test: (python|not run: (?P<reason>.*\S)) -->$")
COMMAND_TIMEOUT_S = 120.0  # a first Go or Java run warms a cache
STOP_TIMEOUT_S = 60.0  # above serve's 30 s drain deadline
HOST_SPECIFIC = {"time", "memory", "version"}  # expected-output keys whose values vary by host and run
FILES = {
    "prog.py": "import sys\nprint('hello from prog.py', sys.argv[1:])\n",
    "hello.py": "print('hello')\n",
    "main.go": 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("hello from Go") }\n',
    "prog.go": 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("hello from prog.go") }\n',
    "a.c": (
        "#include <stdio.h>\n\nint main(int argc, char **argv) {\n    int n;\n"
        '    if (scanf("%d", &n) != 1) return 1;\n'
        '    printf("%d %s\\n", n * 2, argc > 1 ? argv[1] : "");\n    return 0;\n}\n'
    ),
    "data.txt": "some data\n",
}


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the block's first line in README.md
    lines: tuple[str, ...]  # without the 4-space indent
    kind: str  # shell | python | json | not run
    reason: str = ""

    @property
    def id(self) -> str:
        return f"line-{self.line}-{self.kind.replace(' ', '-')}"


FENCE = re.compile(r"^(```+|~~~+)\s*(\S*)")
FENCE_KINDS = {"": "shell", "sh": "shell", "bash": "shell", "shell": "shell", "python": "python", "json": "json"}


def readme_blocks(text: str) -> list[Block]:
    """The code blocks of ``text``: indented (a blank line, then lines indented by 4) or fenced, with kinds.

    A marker comment above a block decides its kind; else a fenced block's info string does (one not in
    FENCE_KINDS fails the extraction: a new kind of example needs a way to run), else its content.
    """
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        indented = lines[i].startswith("    ") and lines[i].strip() and (i == 0 or not lines[i - 1].strip())
        if not fence and not indented:
            i += 1
            continue
        first = i
        if fence:
            first = i + 1
            i = first
            while i < len(lines) and not lines[i].startswith(fence[1]):
                i += 1
            body = lines[first:i]
            i += 1  # the closing fence
        else:
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                i += 1
            body = [line[4:] for line in lines[first:i]]
        while body and not body[-1].strip():
            body.pop()
        above = next((lines[j].strip() for j in range(first - 1 - bool(fence), -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(above)
        if marker and marker["reason"]:
            blocks.append(Block(first + 1, tuple(body), "not run", marker["reason"]))
        elif marker:
            blocks.append(Block(first + 1, tuple(body), "python"))
        elif fence:
            assert fence[2] in FENCE_KINDS, f"README.md line {first}: no way to run a ```{fence[2]} block"
            blocks.append(Block(first + 1, tuple(body), FENCE_KINDS[fence[2]]))
        else:
            blocks.append(Block(first + 1, tuple(body), "json" if body[0].startswith("{") else "shell"))
    return blocks


BLOCKS = readme_blocks(README.read_text())


@dataclass(frozen=True)
class Command:
    line: int  # README line
    text: str
    expected: str = ""  # the "# {...}" comment under it, without the "# "


def shell_commands(block: Block) -> list[Command]:
    commands: list[Command] = []
    pending: list[str] = []
    for offset, raw in enumerate(block.lines):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            if stripped.startswith("# {") and commands:  # the expected answer of the command above
                last = commands[-1]
                commands[-1] = Command(last.line, last.text, stripped[2:])
            continue
        pending.append(raw)
        if not stripped.endswith("\\"):
            commands.append(Command(block.line + offset - len(pending) + 1, "\n".join(pending)))
            pending = []
    assert not pending, f"README.md line {block.line}: a command ends with a continuation"
    return commands


# ------------------------------------------------------------------ the server and the scratch directory


@dataclass
class Scene:
    server: Node
    address: str  # 127.0.0.1:port
    workdir: Path
    env: dict[str, str]
    ids: dict[str, str] = field(default_factory=dict)  # TASK_ID / SID -> the value seen last


def sandlot_env() -> dict[str, str]:
    """This environment minus SANDLOT_*, plus the test state dirs (conftest's) every test box uses."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDLOT_")}
    env["PATH"] = f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    return env | {
        "SANDLOT_STATE_DIR": str(TEST_STATE_DIR),
        "SANDLOT_RUN_DIR": str(TEST_RUN_DIR),
        "SANDLOT_CGROUP_NAME": TEST_CGROUP,
        "SANDLOT_BOX_UID_BASE": str(TEST_UID_BASE),
    }


def start_serve(argv: list[str], env: dict[str, str], log: Path) -> tuple[Node, int]:
    """``argv`` (a ``sandlot serve`` command) on free ports given by environment; ready, or the test fails."""
    http_port, grpc_port = free_ports(2)
    env = env | {"SANDLOT_HTTP_PORT": str(http_port), "SANDLOT_GRPC_PORT": str(grpc_port)}
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    node = Node(0, proc, log, STOP_TIMEOUT_S, http_port)
    try:
        node.wait_ready()
    except BaseException:
        node.stop()
        raise
    return node, http_port


@pytest.fixture(scope="module", name="scene")
def scene_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    workdir = tmp_path_factory.mktemp("readme")
    for name, content in FILES.items():
        (workdir / name).write_text(content)
    (workdir / ".venv").symlink_to(VENV_BIN.parent)
    env = sandlot_env()
    # One gVisor sandbox, for the README's gVisor request; the rest are jail boxes.
    argv = [str(VENV_BIN / "sandlot"), "serve", "--pool-size", "2", "--gvisor-pool-size", "1"]
    server, port = start_serve(argv, env, workdir / "serve.log")
    address = f"127.0.0.1:{port}"
    try:
        yield Scene(server, address, workdir, env | {"SANDLOT_SERVER": f"http://{address}"})
    finally:
        assert server.stop() == 0, server.output()


# ------------------------------------------------------------------ running a block


def substitute(command: Command, scene: Scene) -> str:
    text = re.sub(r"\b(localhost|127\.0\.0\.1):8080\b", scene.address, command.text)
    for name in ("TASK_ID", "SID"):
        if re.search(rf"\b{name}\b", text):
            assert name in scene.ids, f"README.md line {command.line}: {name}, but no earlier command printed one"
            text = re.sub(rf"\b{name}\b", scene.ids[name], text)
    return re.sub(r"(^|[|;&]\s*)curl ", r"\1curl --fail-with-body ", text)


def remember_ids(output: str, scene: Scene) -> None:
    """A task id or session id in an answer (JSON, or `submit --async`'s bare id) for later TASK_ID/SID."""
    for key, name in (("task_id", "TASK_ID"), ("session_id", "SID")):
        found = re.search(rf'"{key}"\s*:\s*"([^"]+)"', output)
        if found:
            scene.ids[name] = found[1]
    if re.fullmatch(r"[0-9a-f][0-9a-f-]{15,}\n?", output):
        scene.ids["TASK_ID"] = output.strip()


def is_serve(text: str) -> bool:
    words = shlex.split(text, comments=True)
    return len(words) >= 2 and Path(words[0]).name == "sandlot" and words[1] == "serve"


def run_command(command: Command, scene: Scene) -> None:
    text = substitute(command, scene)
    where = f"README.md line {command.line}: {command.text.splitlines()[0].strip()}"
    if is_serve(text):
        words = shlex.split(text, comments=True)
        argv = [str((scene.workdir / words[0]) if "/" in words[0] else VENV_BIN / words[0]), *words[1:]]
        node, _ = start_serve(argv, scene.env, scene.workdir / f"serve-{command.line}.log")
        code = node.stop()
        assert code == 0, f"{where}\nexited {code} on SIGTERM:\n{node.output()}"
        return
    try:
        proc = subprocess.run(
            ["bash", "-o", "pipefail", "-c", text],
            cwd=scene.workdir,
            env=scene.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"{where}\ndid not finish within {COMMAND_TIMEOUT_S:g} s") from err
    assert proc.returncode == 0, f"{where}\nran: {text}\nexit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    remember_ids(proc.stdout, scene)
    if command.expected:
        check_expected(where, command.expected, proc.stdout)


def check_expected(where: str, expected: str, output: str) -> None:
    """Each ``"key": value`` of the README's sample answer is in the real one (HOST_SPECIFIC: present)."""
    answer = json.loads(output)
    pairs = re.findall(r'"(\w+)":\s*("(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?|null|true|false)', expected)
    assert pairs, f"{where}\nits sample answer names no key: {expected}"
    for key, literal in pairs:
        values = list(values_of(answer, key))
        assert values, f"{where}\nthe answer has no {key!r}: {output}"
        if key not in HOST_SPECIFIC:
            assert json.loads(literal) in values, f"{where}\n{key!r} is {values}, the README says {literal}"


def values_of(data: Any, key: str) -> Iterator[Any]:
    if isinstance(data, dict):
        for name, value in data.items():
            if name == key:
                yield value
            yield from values_of(value, key)
    elif isinstance(data, list):
        for item in data:
            yield from values_of(item, key)


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_readme_block(block: Block, scene: Scene) -> None:
    if block.kind == "not run":
        assert len(block.reason) >= 10, f"README.md line {block.line}: say why the block is not run"
        return
    if block.kind == "python":
        code = re.sub(r"\b(localhost|127\.0\.0\.1):8080\b", scene.address, "\n".join(block.lines))
        script = scene.workdir / f"example-{block.line}.py"
        script.write_text(code + "\n")
        proc = subprocess.run(
            [sys.executable, str(script)],
            cwd=scene.workdir,
            env=scene.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        assert proc.returncode == 0, f"README.md line {block.line} (Python):\n{proc.stdout}\n{proc.stderr}"
        return
    if block.kind == "json":
        run_mcp_config(block, scene)
        return
    commands = shell_commands(block)
    assert commands, f"README.md line {block.line}: a shell block without a command"
    for command in commands:
        run_command(command, scene)


def run_mcp_config(block: Block, scene: Scene) -> None:
    where = f"README.md line {block.line} (MCP configuration)"
    config = json.loads("\n".join(block.lines).replace("/path/to/sandlot", str(REPO)))
    for name, server in config["mcpServers"].items():
        initialize = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-03-26",
                "capabilities": {},
                "clientInfo": {"name": "readme", "version": "0"},
            },
        }
        proc = subprocess.Popen(
            [server["command"], *server.get("args", [])],
            env=scene.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(initialize) + "\n")
            proc.stdin.flush()
            answer = json.loads(proc.stdout.readline())  # bounded by the per-test timeout
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=STOP_TIMEOUT_S)
        assert "serverInfo" in answer.get("result", {}), f"{where}: server {name} answered {answer}\n{stderr}"


def test_every_readme_block_is_seen() -> None:
    """The extraction itself: every indented line of the README is in a block, every marker above one."""
    lines = README.read_text().splitlines()
    covered = {block.line + offset for block in BLOCKS for offset in range(len(block.lines))}
    indented = {n for n, line in enumerate(lines, 1) if line.startswith("    ") and line.strip()}
    indented -= {n for n, line in enumerate(lines, 1) if FENCE.match(line)}
    assert indented <= covered, f"README.md lines outside any block: {sorted(indented - covered)}"
    markers = sum(1 for line in lines if line.startswith("<!-- readme-test:"))
    assert markers == sum(block.kind in ("python", "not run") for block in BLOCKS), "a marker above no block"
    assert sum(block.kind == "not run" for block in BLOCKS) <= 5, "most examples must run"
