"""Isolation level gvisor: what only it has, and how the service offers (or refuses) it.

The behaviour suite (test_isolation, test_limits, test_languages) runs at both
levels; here are gVisor's own properties: the whole sandbox (gVisor's host
processes included) lives and dies in the box's cgroup, the init's channels
cannot be reopened by the program, the program never touches the host kernel
directly, and the doors: per-request choice, the server default, a per-key
minimum, sessions, and a 503 naming the level when runsc cannot run.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import grpc
import pytest
from websockets.asyncio.client import connect

from sandlot.api.grpc.gen.go_sandbox.v1 import sandbox_pb2
from sandlot.api.grpc.gen.sandlot.v1 import sandlot_pb2 as pb
from sandlot.api.http.app import create_app
from sandlot.config import ApiKey, ServerSettings, Settings
from sandlot.errors import IsolationUnavailable
from sandlot.models import Status
from sandlot.sandbox import Box, Sandbox
from sandlot.service import Service
from tests.api.grpc.test_grpc import grpc_serving
from tests.api.http.test_http import asgi_client, live_server, running_service
from tests.conftest import TEST_CGROUP, TEST_RUN_DIR, TEST_STATE_DIR, TEST_UID_BASE, make_settings, run_in

PYTHON = "/usr/bin/python3"


@pytest.fixture
def gvisor_box(sandbox: Sandbox) -> Box:
    sandbox.check_isolation("gvisor")  # fails with runsc's own words if it cannot run here
    return sandbox.open_box(isolation="gvisor")


async def test_the_program_runs_on_gvisors_kernel_not_the_hosts(gvisor_box: Box, settings: Settings) -> None:
    try:
        result = await run_in(gvisor_box, ["/bin/sh", "-c", "cat /proc/version; id -u"], settings.run_defaults)
    finally:
        gvisor_box.close()
    assert result.status is Status.OK, result
    version, uid = result.stdout.decode().splitlines()
    host_version = Path("/proc/version").read_text().strip()
    assert version != host_version  # gVisor's Sentry answers, not the host kernel
    assert int(uid) == gvisor_box.slot.uid  # the slot's own uid: files it writes are that uid's on the host


async def test_the_cpu_limit_is_the_hosts_to_enforce_not_gvisors_clock(gvisor_box: Box, settings: Settings) -> None:
    """gVisor's task clocks run ahead of the cgroup's CPU counter on a busy host (preempted time counts), so
    its RLIMIT_CPU must not be what ends a run: the backstop sits past the wall limit, the watchdog decides."""
    limits = dataclasses.replace(settings.run_defaults, time_limit_s=2.0, wall_time_limit_s=10.0)
    try:
        result = await run_in(gvisor_box, ["/bin/sh", "-c", "ulimit -t"], limits)
    finally:
        gvisor_box.close()
    assert result.status is Status.OK, result
    assert int(result.stdout) > limits.wall_time_limit_s, result.stdout


async def test_every_host_process_of_the_sandbox_is_in_the_box_cgroup_and_none_survives(
    sandbox: Sandbox, gvisor_box: Box, settings: Settings
) -> None:
    seen: dict[str, object] = {}
    result = None
    try:
        async for item in gvisor_box.run(
            ["/bin/sh", "-c", "(sleep 100 &) ; echo started; sleep 1"], limits=settings.run_defaults
        ):
            if not seen:
                cgroup = sandbox.driver.open_existing(gvisor_box.slot.cgroup_name)
                assert cgroup is not None
                members = set(cgroup.pids())
                names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in members}
                seen = {"members": members, "names": names}
            result = item
    finally:
        gvisor_box.close()
    assert result.status is Status.OK, result  # type: ignore[union-attr]
    members = seen["members"]
    assert isinstance(members, set)
    assert len(members) >= 3  # runsc, its sandbox (the Sentry) and gofer at least
    assert any(name.startswith(("runsc", "exe")) for name in seen["names"]), seen  # type: ignore[union-attr]
    # Every one of them is gone with the run, the detached sleep's host stub included.
    assert [pid for pid in members if Path(f"/proc/{pid}").exists() and _alive(pid)] == []
    assert sandbox.driver.open_existing(gvisor_box.slot.cgroup_name) is None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


async def test_the_program_can_reopen_its_relayed_output(gvisor_box: Box, settings: Settings) -> None:
    """The init's relay pipes belong to the program's uid, so /dev/stdout opens as the host pipes did."""
    script = "echo out > /dev/stdout; echo err > /dev/stderr"
    try:
        result = await run_in(gvisor_box, ["/bin/bash", "-c", script], settings.run_defaults)
    finally:
        gvisor_box.close()
    assert (result.status, result.stdout, result.stderr) == (Status.OK, b"out\n", b"err\n"), result


_FORGE = """
import json, os
try:
    out = {"control": os.listdir("/.sandlot")}
except OSError as exc:
    out = {"control": exc.strerror}
for fd in (4, 5, 6):
    try:
        os.write(os.open(f"/proc/1/fd/{fd}", os.O_WRONLY), b"X 1 0\\n")
        out[fd] = "wrote"
    except OSError as exc:
        out[fd] = exc.strerror
print(json.dumps(out))
raise SystemExit(3)
"""


async def test_the_program_cannot_forge_the_inits_status(gvisor_box: Box, settings: Settings) -> None:
    try:
        result = await run_in(gvisor_box, [PYTHON, "-c", _FORGE], settings.run_defaults)
        left = list(gvisor_box.root.joinpath(".gvisor").iterdir())
    finally:
        gvisor_box.close()
    seen = json.loads(result.stdout.decode().splitlines()[-1])
    assert seen["control"] == "Permission denied"  # the init's (root's) alone
    assert left == []  # and the init unlinked every channel before the program existed
    assert "wrote" not in (seen["4"], seen["5"], seen["6"]), seen
    # Its own exit code stands: nothing it wrote was taken for the init's report.
    assert (result.status, result.exit_code) == (Status.RUNTIME_ERROR, 3), result


async def test_the_bundle_keeps_the_jails_policy(gvisor_box: Box) -> None:
    gv = gvisor_box.sandbox.gvisor
    config = gv.config(
        args=["/bin/true"],
        env={},
        uid=gvisor_box.slot.uid,
        gid=gvisor_box.slot.gid,
        workdir=gvisor_box.workdir,
        tmp_size_bytes=1 << 20,
        binds=(),
        helper=None,
        control_dir=None,
    )
    gvisor_box.close()
    process = config["process"]
    assert process["noNewPrivileges"] is True
    assert all(caps == [] for caps in process["capabilities"].values())
    assert process["user"]["uid"] == gvisor_box.slot.uid != 0
    assert config["root"]["readonly"] is True
    mounts = {m["destination"]: m for m in config["mounts"]}
    for read_only in ("/usr", "/etc"):
        assert "ro" in mounts[read_only]["options"]
    assert "rw" in mounts["/box"]["options"]
    assert f"size={1 << 20}" in mounts["/tmp"]["options"]
    assert {"type": "network"} in config["linux"]["namespaces"]
    argv = gv.runsc_argv(Path("/x"), Path("/y"), "id")
    assert argv[argv.index("--network") + 1] == "none"


@pytest.mark.root
def test_a_missing_runsc_is_refused_with_the_exact_reason(tmp_path: Path) -> None:
    settings = dataclasses.replace(make_settings(), runsc_path=tmp_path / "no-runsc")
    sandbox = Sandbox(settings)
    with pytest.raises(IsolationUnavailable) as refused:
        sandbox.open_box(isolation="gvisor")
    assert "isolation 'gvisor' is unavailable here: runsc not found" in str(refused.value)
    assert str(tmp_path / "no-runsc") in str(refused.value)


# ------------------------------------------------------------------ through the service


async def test_http_runs_at_the_requested_level_and_a_session_keeps_it() -> None:
    async with running_service(gvisor_pool_size=2) as service, asgi_client(create_app(service)) as client:
        code = "import os; print(open('/proc/version').read().split()[0], os.getuid())"
        answers = {}
        for level in ("jail", "gvisor"):
            reply = await client.post("/api/v1/run", json={"language": "python", "code": code, "isolation": level})
            assert reply.status_code == 200, reply.text
            answers[level] = reply.json()
        assert answers["jail"]["stdout"].split()[1] == "1000"
        assert answers["gvisor"]["stdout"].split()[1] != "1000"  # the slot uid: it ran in gVisor
        assert answers["jail"]["stdout"] != answers["gvisor"]["stdout"]

        made = await client.post("/api/v1/sessions", json={"isolation": "gvisor"})
        assert made.status_code == 201, made.text
        assert made.json()["isolation"] == "gvisor"
        session = made.json()["session_id"]
        write = {"language": "python", "code": "open('kept.txt','w').write('yes')", "session_id": session}
        assert (await client.post("/api/v1/run", json=write)).json()["status"] == "ok"
        read = {"language": "python", "code": "print(open('kept.txt').read())", "session_id": session}
        again = (await client.post("/api/v1/run", json=read)).json()
        assert again["stdout"] == "yes\n", again


async def test_an_unavailable_level_is_a_503_naming_it_never_a_weaker_run() -> None:
    async with running_service(gvisor_pool_size=0) as service, asgi_client(create_app(service)) as client:
        reply = await client.post("/api/v1/run", json={"language": "python", "code": "print(1)", "isolation": "gvisor"})
        assert reply.status_code == 503, reply.text
        assert "gvisor" in reply.json()["error"]["message"]
        unknown = await client.post("/api/v1/run", json={"language": "python", "code": "print(1)", "isolation": "vm"})
        assert unknown.status_code == 400
        assert unknown.json()["error"]["field"] == "isolation"


@pytest.mark.root
async def test_a_level_runsc_cannot_serve_is_a_503_with_runscs_reason_named_once(tmp_path: Path) -> None:
    settings = make_settings(runsc_path=tmp_path / "no-runsc")
    service = await Service.start(settings, ServerSettings(pool_size=1, gvisor_pool_size=1, drain_deadline_s=2.0))
    try:
        async with asgi_client(create_app(service)) as client:
            body = {"language": "python", "code": "print(1)", "isolation": "gvisor"}
            reply = await client.post("/api/v1/run", json=body)
    finally:
        await service.stop()
    assert reply.status_code == 503, reply.text
    reason = f"runsc not found at {tmp_path / 'no-runsc'}; install the runsc package (gVisor)"
    assert reply.json()["error"]["message"] == f"isolation 'gvisor' is unavailable here: {reason}"


async def test_an_api_key_can_require_gvisor() -> None:
    keys = (ApiKey("strict", "t1", min_isolation="gvisor"), ApiKey("open", "t2"))
    async with running_service(gvisor_pool_size=1, api_keys=keys) as service:
        async with asgi_client(create_app(service), authorization="Bearer strict") as client:
            code = "import os; print(os.getuid())"
            plain = await client.post("/api/v1/run", json={"language": "python", "code": code})
            assert plain.status_code == 200, plain.text
            assert plain.json()["stdout"] != "1000\n"  # raised to gvisor without being asked
            weaker = await client.post("/api/v1/run", json={"language": "python", "code": code, "isolation": "jail"})
            assert weaker.status_code == 403, weaker.text
            assert "gvisor" in weaker.json()["error"]["message"]
        async with asgi_client(create_app(service), authorization="Bearer open") as client:
            plain = await client.post("/api/v1/run", json={"language": "python", "code": code})
            assert plain.json()["stdout"] == "1000\n"


async def test_the_server_default_level_applies_to_requests_naming_none() -> None:
    async with running_service(gvisor_pool_size=1, default_isolation="gvisor") as service:
        assert isinstance(service, Service)
        async with asgi_client(create_app(service)) as client:
            code = "import os; print(os.getuid())"
            reply = await client.post("/api/v1/run", json={"language": "python", "code": code})
            assert reply.status_code == 200, reply.text
            assert reply.json()["stdout"] != "1000\n"
            asked = await client.post("/api/v1/run", json={"language": "python", "code": code, "isolation": "jail"})
            assert asked.json()["stdout"] == "1000\n"


@pytest.mark.root
def test_cli_run_isolation_gvisor(tmp_path: Path) -> None:
    import subprocess
    import sys

    program = tmp_path / "hello.py"
    program.write_text("import os; print('uid', os.getuid())\n")
    env = {**os.environ, "SANDLOT_STATE_DIR": str(TEST_STATE_DIR), "SANDLOT_RUN_DIR": str(TEST_RUN_DIR)}
    env.update({"SANDLOT_CGROUP_NAME": TEST_CGROUP, "SANDLOT_BOX_UID_BASE": str(TEST_UID_BASE)})
    cli = [str(Path(sys.executable).parent / "sandlot"), "run", str(program), "--json"]
    jailed = subprocess.run(cli, capture_output=True, env=env, timeout=60, check=False)
    gvisor = subprocess.run([*cli, "--isolation", "gvisor"], capture_output=True, env=env, timeout=60, check=False)
    assert (jailed.returncode, gvisor.returncode) == (0, 0), (jailed.stderr, gvisor.stderr)
    assert json.loads(jailed.stdout)["stdout"] == "uid 1000\n"
    assert json.loads(gvisor.stdout)["stdout"].startswith("uid 91")


@pytest.mark.root
def test_cli_run_isolation_gvisor_without_runsc_says_why_and_exits_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    program = tmp_path / "hello.py"
    program.write_text("print('never')\n")
    env = {**os.environ, "SANDLOT_STATE_DIR": str(TEST_STATE_DIR), "SANDLOT_RUN_DIR": str(TEST_RUN_DIR)}
    env.update({"SANDLOT_CGROUP_NAME": TEST_CGROUP, "SANDLOT_BOX_UID_BASE": str(TEST_UID_BASE)})
    env["SANDLOT_RUNSC_PATH"] = str(tmp_path / "no-runsc")
    cli = [str(Path(sys.executable).parent / "sandlot"), "run", str(program), "--isolation", "gvisor"]
    refused = subprocess.run(cli, capture_output=True, env=env, timeout=60, check=False)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.decode().splitlines() == [
        f"sandlot: sandbox failure: isolation 'gvisor' is unavailable here: runsc not found at {tmp_path / 'no-runsc'}"
        "; install the runsc package (gVisor)"
    ]


UID_CODE = "import os, sys\nprint('uid', os.getuid())\nprint('read', sys.stdin.readline().strip(), flush=True)\n"


async def test_websocket_runs_at_the_requested_level_with_live_stdin() -> None:
    async with running_service(gvisor_pool_size=1) as service, live_server(create_app(service)) as address:
        outputs = {}
        for level in ("jail", "gvisor"):
            async with connect(f"ws://{address}/api/v1/ws") as ws:
                run = {"type": "run", "language": "python", "code": UID_CODE, "isolation": level}
                await ws.send(json.dumps(run))
                while (message := json.loads(await ws.recv()))["type"] != "stage":
                    assert message["type"] not in ("exit", "error"), message
                await ws.send(json.dumps({"type": "stdin", "data": "line\n"}))  # sent while the program runs
                while (message := json.loads(await ws.recv()))["type"] != "exit":
                    assert message["type"] != "error", message
                assert message["result"]["status"] == "ok", message
                outputs[level] = message["result"]["stdout"]
        assert outputs["jail"] == "uid 1000\nread line\n"
        gvisor_uid, read = outputs["gvisor"].splitlines()
        assert (gvisor_uid != "uid 1000", read) == (True, "read line"), outputs  # the slot uid: it ran in gVisor


_INTERRUPTIBLE = """
import signal
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # pending, merged, never lost
print("ready", flush=True)
signal.sigwaitinfo({signal.SIGINT})
print("interrupted", flush=True)
raise SystemExit(3)
"""


async def test_websocket_signals_reach_a_gvisor_program_through_its_init() -> None:
    """Ctrl-C from the door: a byte on the init's signal FIFO, no `runsc kill` (tests/sandbox/test_init.py counts)."""
    limits = {"time_limit": 10, "wall_time_limit": 20}
    run = {"type": "run", "language": "python", "code": _INTERRUPTIBLE, "isolation": "gvisor", "limits": limits}
    async with (
        running_service(gvisor_pool_size=1) as service,
        live_server(create_app(service)) as address,
        connect(f"ws://{address}/api/v1/ws") as ws,
    ):
        await ws.send(json.dumps(run))
        seen: list[dict[str, Any]] = []
        while "ready\n" not in "".join(m["data"] for m in seen if m["type"] == "stdout"):
            seen.append(json.loads(await ws.recv()))
            assert seen[-1]["type"] not in ("exit", "error"), seen
        for _ in range(100):
            await ws.send(json.dumps({"type": "signal", "signal": "SIGINT"}))
        while (message := json.loads(await ws.recv()))["type"] != "exit":
            assert message["type"] != "error", message
    result = message["result"]
    assert (result["status"], result["exit_code"]) == ("runtime_error", 3), result
    assert result["stdout"] == "ready\ninterrupted\n"


async def test_grpc_runs_at_the_requested_level_and_refuses_an_unavailable_one() -> None:
    async with grpc_serving(ServerSettings(pool_size=1, gvisor_pool_size=1, default_isolation="gvisor")) as env:
        answers = {}
        for level in ("jail", "gvisor"):
            call = env.sandlot.Execute(
                pb.ExecuteRequest(language="python", code=UID_CODE, isolation=level, stdin=b"x\n")
            )
            events = [event async for event in call]
            answers[level] = events[-1].exit.result.stdout.decode()
        assert answers["jail"] == "uid 1000\nread x\n"
        assert answers["gvisor"].startswith("uid ") and not answers["gvisor"].startswith("uid 1000\n"), answers
        # go_sandbox.v1 has no isolation field: its runs go at the server's default level.
        responses = [r async for r in env.go.RunCode(sandbox_pb2.RunRequest(code="import os\nprint(os.getuid())"))]
        assert [r.output for r in responses if not r.is_error] not in (["1000\n"], []), responses

    async with grpc_serving(ServerSettings(pool_size=1, gvisor_pool_size=0)) as env:
        call = env.sandlot.Execute(pb.ExecuteRequest(language="python", code="print(1)", isolation="gvisor"))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            _ = [event async for event in call]
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "gvisor" in (refused.value.details() or "")


async def test_a_go_sandbox_session_of_a_gvisor_key_runs_in_gvisor() -> None:
    """go_sandbox.v1 creates its sessions itself: at the key's minimum level, so their runs are not refused."""
    keys = (ApiKey("strict", "t1", min_isolation="gvisor"),)
    async with grpc_serving(ServerSettings(pool_size=1, gvisor_pool_size=1, api_keys=keys)) as env:
        strict = (("authorization", "Bearer strict"),)
        outputs = []
        for code in ("import os\nopen('kept', 'w').write(str(os.getuid()))", "print(open('kept').read())"):
            request = sandbox_pb2.RunRequest(code=code, session_id="mine")
            responses = [r async for r in env.go.RunCode(request, metadata=strict)]
            assert not any(r.is_error and r.exec_err for r in responses), responses
            outputs += [r.output for r in responses if not r.is_error]
        assert outputs and outputs[-1].strip() not in ("", "1000"), outputs  # the slot's uid: gVisor
