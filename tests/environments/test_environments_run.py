"""Boxes run IN an environment: an image built here holding the host's python3 (its binary, the shared
libraries ``ldd`` lists and part of its stdlib) and marker files, imported into the test store, then run
through the engine, the CLI and HTTP. The box sees exactly the image, read-only, and the jail still holds."""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandlot.config import Settings
from sandlot.engine import Engine
from sandlot.environments.store import EnvironmentStore
from sandlot.languages import LanguageRegistry
from sandlot.models import Status
from sandlot.sandbox import Box
from sandlot.sandbox.policy import _rootfs_args
from tests.api.http.test_http import asgi_client, live_server, running_service, wait_done
from tests.cli.test_cli import _SANDLOT, _env
from tests.cli.test_cli_client import _sandlot as submit_cli
from tests.cli.test_cli_client import _ServerThread
from tests.conftest import TEST_STATE_DIR, run_job
from tests.oci_images import Entry, layer, write_oci_layout

pytestmark = pytest.mark.root
BOTH_LEVELS = True  # the engine test runs at both isolation levels (conftest)

_PYTHON = Path("/usr/bin/python3.11")
_STDLIB = Path("/usr/lib/python3.11")
_STDLIB_DIRS = ("encodings", "collections", "importlib", "re", "json", "lib-dynload")
MARKER = "only-in-the-image\n"

# What the box reports: the image's marker files, host paths, its identity and what it may write.
PROBE = r"""
import json, os, socket
out = {"marker": open("/etc/marker").read(), "usr_marker": open("/usr/share/sandlot-marker").read()}
out["gcc"] = os.path.exists("/usr/bin/gcc")
out["host_stdlib_extra"] = os.path.exists("/usr/lib/python3.11/unittest")
out["uid"] = os.getuid()
out["uid_map"] = open("/proc/self/uid_map").read().split()
out["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
out["ifaces"] = sorted(line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:])
try:
    socket.create_connection(("1.1.1.1", 80), timeout=2)
    out["net"] = "connected"
except OSError as exc:
    out["net"] = exc.errno
out["passwd"] = open("/etc/passwd").read()
denied = {}
for path in ("/usr/x", "/usr/share/x", "/etc/x", "/x", "/lib64/x", "/etc/marker"):
    try:
        open(path, "a").close()
        denied[path] = 0
    except OSError as exc:
        denied[path] = exc.errno
out["denied"] = denied
for path in ("/box/ok", "/tmp/ok"):
    open(path, "w").write("ok")
print(json.dumps(out))
"""


def _add(tar: tarfile.TarFile, source: Path, name: str) -> None:
    info = tar.gettarinfo(str(source), arcname=name)
    if info.isreg():
        with open(source, "rb") as f:
            tar.addfile(info, f)
    else:
        tar.addfile(info)


def _python_layer(*, etc_link: bool = False) -> bytes:
    """usr/bin/python3(.11), its libraries under usr/lib, a slice of the stdlib, markers; merged-usr links.

    ``etc_link``: a hostile image whose /etc is a link to the host's (``etc -> /etc``)."""
    ldd = subprocess.run(["ldd", str(_PYTHON)], capture_output=True, text=True, check=True).stdout
    libs = re.findall(r"(/\S+) \(0x", ldd)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        dirs = ["usr", "usr/bin", "usr/lib", "usr/lib/x86_64-linux-gnu", "usr/lib64", "usr/share"]
        for d in dirs if etc_link else [*dirs, "etc"]:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        links = [("lib", "usr/lib"), ("lib64", "usr/lib64"), ("bin", "usr/bin")]
        for name, target in [*links, ("etc", "/etc")] if etc_link else links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
        link = tarfile.TarInfo("usr/bin/python3")
        link.type, link.linkname = tarfile.SYMTYPE, "python3.11"
        tar.addfile(link)
        _add(tar, _PYTHON, "usr/bin/python3.11")
        for lib in libs:
            where = "usr/lib64" if "ld-linux" in lib else "usr/lib/x86_64-linux-gnu"
            _add(tar, Path(os.path.realpath(lib)), f"{where}/{Path(lib).name}")
        for item in sorted(_STDLIB.iterdir()):
            if item.is_file() and not item.is_symlink() and item.suffix == ".py":
                _add(tar, item, f"usr/lib/python3.11/{item.name}")
        for sub in _STDLIB_DIRS:
            for item in sorted((_STDLIB / sub).rglob("*")):
                if "__pycache__" in item.parts or item.is_symlink():
                    continue
                _add(tar, item, f"usr/lib/python3.11/{item.relative_to(_STDLIB)}")
        for name in ("usr/share/sandlot-marker",) if etc_link else ("etc/marker", "usr/share/sandlot-marker"):
            info = tarfile.TarInfo(name)
            info.size = len(MARKER)
            tar.addfile(info, io.BytesIO(MARKER.encode()))
    return out.getvalue()


def _check_probe(out: dict[str, Any], *, gvisor_uid: int | None = None) -> None:
    """``gvisor_uid``: under gVisor the box runs as the slot uid itself (tests/sandbox/test_gvisor.py)."""
    assert out["marker"] == MARKER and out["usr_marker"] == MARKER  # the image's files
    assert out["gcc"] is False and out["host_stdlib_extra"] is False  # the host's are absent
    if gvisor_uid is not None:
        assert out["uid"] == gvisor_uid
    else:  # one id mapped, as on the host root (the outer id is bwrap's intermediate namespace's: test_isolation)
        assert out["uid"] == 1000 and out["uid_map"][0::2] == ["1000", "1"]
    assert len(out["pids"]) <= 3, out["pids"]  # init and the program: no host process
    assert out["ifaces"] == ["lo"] and out["net"] != "connected"
    assert "sandbox:x:1000:1000" in out["passwd"]  # the synthetic /etc over the image's
    assert 0 not in out["denied"].values(), out["denied"]  # read-only image, read-only root


def test_rootfs_args_never_follow_a_planted_etc_link(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr").mkdir(parents=True)
    (root / "etc").symlink_to("/etc")  # resolved on the host, it would show the host's /etc entries
    (root / "proc").mkdir()
    args = _rootfs_args(root)
    assert args == ["--ro-bind", str(root / "usr"), "/usr", "--perms", "0755", "--dir", "/etc"]


def test_languages_are_probed_inside_the_root(tmp_path: Path, languages: LanguageRegistry) -> None:
    """Links resolve inside the root: an absolute one to the host's python3 or gcc offers nothing."""
    bin_dir = tmp_path / "usr" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python3.11").write_bytes(b"")
    (bin_dir / "python3.11").chmod(0o755)
    (bin_dir / "python3").symlink_to("/usr/bin/python3.11")  # absolute: the root's, not the host's
    (bin_dir / "gcc").symlink_to("/usr/bin/gcc")  # the host has it; the root does not
    (bin_dir / "bash").symlink_to("../../../../../../usr/bin/bash")  # up and out: stops at the root
    (bin_dir / "node").symlink_to("node")  # a loop
    assert [lang.name for lang in languages.offered_in(tmp_path)] == ["python"]
    (bin_dir / "python3.11").chmod(0o644)  # not executable: not offered
    assert languages.offered_in(tmp_path) == []


async def test_engine_runs_in_the_environment(
    settings: Settings, languages: LanguageRegistry, box: Box, py_env: str, isolation: str
) -> None:
    engine = Engine(settings, languages, environments=EnvironmentStore(TEST_STATE_DIR))
    run = await run_job(engine, box, "python", PROBE, environment=py_env)
    assert run.result.status is Status.OK, run.result
    _check_probe(json.loads(run.stdout), gvisor_uid=box.slot.uid if isolation == "gvisor" else None)
    assert (box.workdir / "ok").stat().st_uid == box.slot.uid  # what it wrote is the slot uid's on the host
    # Mount points (/box, /tmp, /proc, /etc/passwd, the init) were never made in the stored root.
    root = engine.environments.rootfs(py_env) if engine.environments else Path("/nonexistent")
    assert sorted(os.listdir(root)) == ["bin", "etc", "lib", "lib64", "usr"]
    assert os.listdir(root / "etc") == ["marker"]
    # The same box runs on the host again afterwards (its next jail is the host's).
    host = await run_job(engine, box, "python", PROBE)
    assert host.result.status is Status.RUNTIME_ERROR and "/etc/marker" in host.stderr


def test_cli_run_env(py_env: str, tmp_path: Path) -> None:
    program = tmp_path / "probe.py"
    program.write_text(PROBE)
    done = subprocess.run(
        [str(_SANDLOT), "run", str(program), "--env", py_env, "--json"],
        capture_output=True,
        env=_env(),
        timeout=120,
        check=False,
    )
    result = json.loads(done.stdout)
    assert done.returncode == 0 and result["status"] == "ok", result
    _check_probe(json.loads(result["stdout"]))
    unknown = subprocess.run(
        [str(_SANDLOT), "run", str(program), "--env", "no-such-env"], capture_output=True, env=_env(), check=False
    )
    assert unknown.returncode == 2 and b"no environment named 'no-such-env'" in unknown.stderr


async def test_http_environment_field(py_env: str) -> None:
    from sandlot.api.http.app import create_app

    async with running_service() as service, asgi_client(create_app(service)) as client:
        listed = (await client.get("/api/v1/environments")).json()["environments"]
        mine = next(e for e in listed if e["name"] == py_env)
        assert mine["languages"] == ["python"] and mine["kind"] == "image" and mine["digest"].startswith("sha256:")
        answer = await client.post("/api/v1/run", json={"language": "python", "code": PROBE, "environment": py_env})
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert result["status"] == "ok", result
        _check_probe(json.loads(result["stdout"]))
        unknown = await client.post("/api/v1/run", json={"language": "python", "code": "1", "environment": "nope"})
        assert unknown.status_code == 404 and "'nope'" in unknown.json()["error"]["message"]
        missing = await client.post("/api/v1/run", json={"language": "bash", "code": "echo", "environment": py_env})
        assert missing.status_code == 400
        assert missing.json()["error"]["message"] == f"language 'bash' is not available in environment {py_env!r}"


async def test_the_text_door_takes_the_environment(py_env: str) -> None:
    from sandlot.api.http.app import create_app

    code = "print(open('/etc/marker').read().strip())"
    async with running_service() as service, asgi_client(create_app(service)) as client:
        ran = await client.post("/run", params={"language": "python", "environment": py_env}, content=code)
        assert (ran.status_code, ran.text) == (200, "only-in-the-image\n"), ran.text
        unknown = await client.post("/run", params={"language": "python", "environment": "nope"}, content=code)
        assert unknown.status_code == 404 and "'nope'" in unknown.text, unknown.text


async def test_execute_and_websocket_take_the_environment(py_env: str) -> None:
    from websockets.asyncio.client import connect

    from sandlot.api.http.app import create_app

    code = "import sys\nprint(open('/etc/marker').read().strip(), sys.stdin.readline().strip())"
    async with running_service() as service:
        app = create_app(service)
        async with asgi_client(app) as client:
            body = {"language": "python", "code": code, "stdin": "queued\n", "environment": py_env}
            queued = await client.post("/api/v1/execute", json=body)
            assert queued.status_code == 202, queued.text
            done = await wait_done(service, "public", queued.json()["task_id"])
            assert done.result.stdout == b"only-in-the-image queued\n", done.result
        async with live_server(app) as base, connect(f"ws://{base}/api/v1/ws") as ws:
            await ws.send(json.dumps({"type": "run", "language": "python", "code": code, "environment": py_env}))
            await ws.send(json.dumps({"type": "stdin", "data": "live\n"}))
            while (message := json.loads(await ws.recv()))["type"] != "exit":
                assert message["type"] in ("stage", "stdout", "stderr"), message
            assert message["result"]["stdout"] == "only-in-the-image live\n", message


async def test_mcp_run_code_takes_the_environment(py_env: str) -> None:
    from tests.api.mcp.test_mcp import _error, _http_client, _mcp_app, _structured

    code = "print(open('/etc/marker').read().strip())"
    async with running_service() as service, _mcp_app(service) as url, _http_client(url) as client:
        arguments = {"language": "python", "code": code, "environment": py_env}
        ran = _structured(await client.call_tool("run_code", arguments))
        assert ran["status"] == "ok" and ran["stdout"] == "only-in-the-image\n", ran
        unknown = await _error(client, "run_code", {**arguments, "environment": "nope"})
        assert "no environment named 'nope'" in unknown


async def test_grpc_execute_takes_the_environment(py_env: str) -> None:
    import grpc

    from sandlot.api.grpc.gen.sandlot.v1 import sandlot_pb2 as pb
    from sandlot.config import ServerSettings
    from tests.api.grpc.test_grpc import _events, _status_of, grpc_serving

    code = "print(open('/etc/marker').read().strip())"
    async with grpc_serving(ServerSettings(gvisor_pool_size=0, pool_size=1)) as env:
        request = pb.ExecuteRequest(language="python", code=code, environment=py_env)
        events = await _events(env.sandlot.Execute(request))
        result = events[-1].exit.result
        assert (result.status, result.stdout) == (pb.STATUS_OK, b"only-in-the-image\n"), result
        nowhere = pb.ExecuteRequest(language="python", code="1", environment="nope")
        unknown = await _status_of(env.sandlot.Execute(nowhere))
        assert unknown.code() == grpc.StatusCode.NOT_FOUND and "'nope'" in (unknown.details() or "")


def test_cli_runs_gvisor_in_an_environment(py_env: str, tmp_path: Path) -> None:
    program = tmp_path / "main.py"
    program.write_text("import os\nprint(open('/etc/marker').read().strip(), os.path.exists('/usr/bin/gcc'))")
    done = subprocess.run(
        [str(_SANDLOT), "run", str(program), "--env", py_env, "--isolation", "gvisor"],
        capture_output=True,
        env=_env(),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"only-in-the-image False\n"


@pytest.fixture(scope="module")
def etc_link_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    name = f"test-etclink-{secrets.token_hex(6)}"
    store = EnvironmentStore(TEST_STATE_DIR)
    layout = tmp_path_factory.mktemp("image") / "layout"
    write_oci_layout(layout, [_python_layer(etc_link=True)], compression=["none"])
    store.import_image(name, layout)
    try:
        yield name
    finally:
        store.remove(name)


async def test_an_image_linking_etc_to_the_host_sees_and_touches_nothing_of_it(
    settings: Settings, languages: LanguageRegistry, box: Box, etc_link_env: str, isolation: str
) -> None:
    host_etc = sorted(os.listdir("/etc"))
    host_passwd = Path("/etc/passwd").read_bytes()
    engine = Engine(settings, languages, environments=EnvironmentStore(TEST_STATE_DIR))
    code = "import os, json\nprint(json.dumps([os.path.exists('/etc/shadow'), os.path.exists('/etc/os-release')]))"
    run = await run_job(engine, box, "python", code, environment=etc_link_env)
    assert run.result.status is Status.OK, run.result
    assert json.loads(run.stdout) == [False, False]  # the host's /etc is not shown
    assert sorted(os.listdir("/etc")) == host_etc and Path("/etc/passwd").read_bytes() == host_passwd
    stored = EnvironmentStore(TEST_STATE_DIR).rootfs(etc_link_env)
    assert os.readlink(stored / "etc") == "/etc" and not (stored / ".init").exists()  # the store as imported


def test_cli_submit_env(py_env: str, tmp_path: Path) -> None:
    program = tmp_path / "main.py"
    program.write_text("print(open('/etc/marker').read().strip())")
    with _ServerThread() as server:
        done = submit_cli(server, "submit", program, "--env", py_env, "--no-stdin")
        assert (done.returncode, done.stdout) == (0, b"only-in-the-image\n"), done.stderr
        unknown = submit_cli(server, "submit", program, "--env", "nope", "--no-stdin")
        assert unknown.returncode == 2 and b"no environment named 'nope'" in unknown.stderr


async def test_the_service_preloads_and_its_worker_leases_by_environment(py_env: str) -> None:
    """``preload_environments``: a box launched for the environment at start-up; a run there takes it, warm."""
    from sandlot.api.http.app import create_app

    async with running_service(preload_environments=(py_env,)) as service, asgi_client(create_app(service)) as client:
        assert service.engine.environments is not None
        root = service.engine.environments.rootfs(py_env)
        preloaded = [box for box in service.pool._boxes if box.prelaunched_for == root]
        assert len(preloaded) == 1
        code = "print(open('/etc/marker').read(), end='')"
        answer = await client.post("/api/v1/run", json={"language": "python", "code": code, "environment": py_env})
        assert answer.status_code == 200, answer.text
        assert answer.json()["stdout"] == MARKER, answer.json()
        assert preloaded[0].last_run_warm  # the worker asked the pool for a box launched for the environment


# The image's config as a box applies it: Env under the language's (its PATH finds the image's tool), HOME
# and TMPDIR the box's, malformed entries dropped; never its WorkingDir or User ("root" stays unprivileged).
_IMAGE_ENV = ("FOO=bar", "PATH=/opt/x/bin:/usr/bin", "HOME=/root", "BROKEN", "=empty")
CONFIG_PROBE = r"""
import json, os, subprocess
tool = subprocess.run(["tool"], capture_output=True, text=True).stdout
keys = ("FOO", "PATH", "HOME", "TMPDIR", "BROKEN")
print(json.dumps({"env": {k: os.environ.get(k) for k in keys}, "tool": tool, "cwd": os.getcwd(), "uid": os.getuid()}))
"""


@pytest.fixture(scope="module")
def configured_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    name = f"test-cfg-{secrets.token_hex(6)}"
    store = EnvironmentStore(TEST_STATE_DIR)
    tool = Entry("opt/x/bin/tool", data=b"#!/usr/bin/python3\nprint('tool from /opt/x/bin')\n", mode=0o755)
    layers = [_python_layer(), layer(Entry("opt/", tarfile.DIRTYPE, mode=0o755), tool)]
    layout = tmp_path_factory.mktemp("image") / "layout"
    write_oci_layout(layout, layers, compression=["none", "none"], env=_IMAGE_ENV, user="root", working_dir="/srv")
    store.import_image(name, layout)
    try:
        yield name
    finally:
        store.remove(name)


async def test_the_image_env_applies_under_the_language_and_workdir_and_user_do_not(
    settings: Settings, languages: LanguageRegistry, box: Box, configured_env: str, isolation: str
) -> None:
    store = EnvironmentStore(TEST_STATE_DIR)
    recorded = store.inspect(configured_env)
    assert recorded.env == _IMAGE_ENV and recorded.user == "root" and recorded.working_dir == "/srv"
    engine = Engine(settings, languages, environments=store)
    run = await run_job(engine, box, "python", CONFIG_PROBE, environment=configured_env)
    assert run.result.status is Status.OK, run.result
    out = json.loads(run.stdout)
    assert out["env"] == {"FOO": "bar", "PATH": "/opt/x/bin:/usr/bin", "HOME": "/box", "TMPDIR": "/tmp", "BROKEN": None}
    assert out["tool"] == "tool from /opt/x/bin\n"  # found through the image's PATH alone
    assert out["cwd"] == "/box"  # the workdir, not the image's WorkingDir
    assert out["uid"] == (box.slot.uid if isolation == "gvisor" else 1000)  # never the image's root
