"""The deploy tier: sandlot's Containerfile built from a Debian base made here, and run for real.

``pytest -m deploy`` (``bash scripts/setup.sh test-deploy``); never in the default run (pyproject's
addopts). One image build (minutes the first time: the toolchains), then: the embedded server in a
--privileged container (playground, HTTP runs in Python and Go, gRPC, a fork bomb and a host-file read that
stay inside, the health check), the same with the smaller privilege set docs/deploy.md gives, and
compose.yaml's services as written (Redis, the API node, two workers whose SIGTERM drains a running job,
Prometheus scraping all three), with Debian-built stand-ins for the Docker Hub images.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator

import grpc
import httpx
import pytest

from sandlot.api.grpc.gen.sandlot.v1 import sandlot_pb2 as pb
from sandlot.api.grpc.gen.sandlot.v1 import sandlot_pb2_grpc
from tests.deploy import podman as pm
from tests.root import require_root

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(pm.BUILD_TIMEOUT_S + 600)]

PRIVILEGED = ("--privileged",)
# Measured here (docs/deploy.md, "Privileges"): enough for the jail on this cgroup v1 host, with the
# entrypoint remounting the container's own cgroups writable.
SMALLER = ("--cap-add", "SYS_ADMIN", "--security-opt", "unmask=/proc/*")
# Box uids are host uids: each container its own range, apart from the suite's and a real install's.
# compose.yaml's services use 930, 940 and 950 million.
UID_BASES = {"server": 960_000_000, "smaller": 970_000_000}
BOMB_NAME = "sandlot-bomb"  # the fork bomb's processes name themselves so the host can look for survivors
FORK_BOMB = f"import os\nopen('/proc/self/comm', 'w').write({BOMB_NAME!r})\nwhile True:\n    os.fork()\n"
GO_HELLO = 'package main\nimport "fmt"\nfunc main() { fmt.Println("hello from go") }\n'


@pytest.fixture(scope="module")
def images() -> Iterator[None]:
    require_root("podman builds and runs privileged containers")
    pm.remove_all(keep_images=True)  # a previous run's leftovers, by name
    try:
        pm.build_images(pm.base_image())
        yield
    finally:
        pm.remove_all()


def _api(ip: str) -> str:
    return f"http://{ip}:8080"


def _start_server(name: str, privileges: tuple[str, ...]) -> str:
    container = pm.run(name, *privileges, "-e", f"SANDLOT_BOX_UID_BASE={UID_BASES[name]}")
    ip = pm.address(container)
    pm.wait_ready(container, f"{_api(ip)}/readyz")
    return ip


@pytest.fixture(scope="module")
def server(images: None) -> str:
    """The default command (`serve`, embedded mode) in a --privileged container: its address."""
    return _start_server("server", PRIVILEGED)


def _run(ip: str, language: str, code: str, isolation: str = "") -> dict[str, object]:
    request = {"language": language, "code": code} | ({"isolation": isolation} if isolation else {})
    answer = httpx.post(f"{_api(ip)}/api/v1/run", json=request, timeout=180)
    assert answer.status_code == 200, answer.text
    result: dict[str, object] = answer.json()
    return result


def _bomb_survivors_on_host() -> list[str]:
    """The fork bomb's processes still alive anywhere on the host (the containers share its kernel)."""
    ps = subprocess.run(["ps", "-e", "-o", "uid=,pid=,comm="], capture_output=True, text=True, check=True)
    return [line for line in ps.stdout.splitlines() if line.split()[-1] == BOMB_NAME]


def _assert_contained(ip: str) -> None:
    bomb = _run(ip, "python", FORK_BOMB)
    assert bomb["status"] != "ok", bomb
    assert bomb["status"] != "internal_error", bomb  # the program failed, not the sandbox
    assert _bomb_survivors_on_host() == []  # the whole box was killed: nothing left on the host
    secret = pm.STATE / f"host-secret-{secrets.token_hex(8)}"
    secret.write_text("host secret\n")
    try:
        # The host's file is not in the container; the container's own files are not in the box (its root is
        # the system dirs, read-only); /etc/shadow is there but not readable by the box's uid.
        paths = (str(secret), "/run/sandlot-container/role", "/etc/shadow")
        probe = (
            f"for path in {paths!r}:\n"
            "    try:\n"
            "        print(path, 'READ', open(path).read()[:20])\n"
            "    except OSError as exc:\n"
            "        print(path, 'DENIED', type(exc).__name__)\n"
        )
        result = _run(ip, "python", probe)
    finally:
        secret.unlink()
    assert result["status"] == "ok", result
    assert "READ" not in str(result["stdout"]), result["stdout"]
    assert str(result["stdout"]).count("DENIED") == 3, result["stdout"]
    after = _run(ip, "python", "print(6 * 7)")  # the server is unharmed
    assert (after["status"], after["stdout"]) == ("ok", "42\n"), after


def test_playground_page(server: str) -> None:
    page = httpx.get(f"{_api(server)}/", timeout=30)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "<title>" in page.text and "sandlot" in page.text.lower()
    editor = httpx.get(f"{_api(server)}/static/bundle/editor.js", timeout=30)  # the npm-built editor is in the wheel
    assert editor.status_code == 200 and len(editor.content) > 10_000


def test_python_and_go_over_http(server: str) -> None:
    python = _run(server, "python", "import sys; print(sys.version_info[:2] >= (3, 11), 6 * 7)")
    assert (python["status"], python["stdout"]) == ("ok", "True 42\n"), python
    go = _run(server, "go", GO_HELLO)
    assert (go["status"], go["stdout"]) == ("ok", "hello from go\n"), go
    gvisor = _run(server, "python", "print(6 * 7)", isolation="gvisor")  # runsc works in the container too
    assert (gvisor["status"], gvisor["stdout"]) == ("ok", "42\n"), gvisor


def test_grpc_execute(server: str) -> None:
    with grpc.insecure_channel(f"{server}:50051") as channel:
        stub = sandlot_pb2_grpc.SandlotStub(channel)
        events = list(stub.Execute(pb.ExecuteRequest(language="python", code='print("hi over grpc")\n'), timeout=120))
    result = events[-1].exit.result
    assert result.status == pb.STATUS_OK
    assert result.stdout == b"hi over grpc\n"


def test_fork_bomb_and_host_files_stay_inside(server: str) -> None:
    _assert_contained(server)


def test_health_check_is_the_readiness(server: str) -> None:
    checked = pm.podman("healthcheck", "run", f"{pm.PREFIX}-server", check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    inspected = pm.podman("image", "inspect", "-f", "{{json .Config.Healthcheck}}", pm.IMAGE).stdout
    assert "sandlot-healthcheck" in inspected  # kept by --format docker (an OCI image drops it)


def test_smaller_privileges_are_enough_for_the_jail(images: None) -> None:
    ip = _start_server("smaller", SMALLER)
    for isolation in ("jail", "gvisor"):
        python = _run(ip, "python", "print(6 * 7)", isolation=isolation)
        assert (python["status"], python["stdout"]) == ("ok", "42\n"), (isolation, python)
    _assert_contained(ip)


def test_compose_services_run_distributed_are_scraped_and_drain(images: None) -> None:
    """compose.yaml's redis, api, worker-1, worker-2 and prometheus, as written (tests/deploy/podman.py)."""
    redis = pm.run_compose_service("redis", pm.REDIS_IMAGE, {})
    hosts = {"redis": pm.address(redis)}
    api = pm.run_compose_service("api", pm.IMAGE, hosts)
    workers = [pm.run_compose_service(name, pm.IMAGE, hosts) for name in ("worker-1", "worker-2")]
    hosts |= {name.removeprefix(f"{pm.PREFIX}-"): pm.address(name) for name in (api, *workers)}
    prometheus = pm.run_compose_service("prometheus", pm.PROMETHEUS_IMAGE, hosts)
    api_ip = hosts["api"]
    pm.wait_ready(api, f"{_api(api_ip)}/readyz")  # 200 only once a live worker serves it

    python = _run(api_ip, "python", "print(6 * 7)")
    assert (python["status"], python["stdout"]) == ("ok", "42\n"), python
    for worker in workers:
        assert pm.podman("healthcheck", "run", worker, check=False).returncode == 0, pm.logs(worker)
    # Prometheus (deploy/compose/prometheus.yml) scrapes all three nodes and sees the run a worker counted.
    query = f"http://{pm.address(prometheus)}:9090/api/v1/query"
    pm.wait_until(
        lambda: (
            _prometheus(query, 'count(up{job="sandlot"} == 1)') == 3.0
            and _prometheus(query, 'sum(sandlot_executions_total{status="ok"})') >= 1.0
        ),
        f"Prometheus never saw 3 sandlot nodes up and the run:\n{pm.logs(prometheus)[-3000:]}",
    )

    code = 'import time\nprint("started", flush=True)\ntime.sleep(3)\nprint("finished")\n'
    task = httpx.post(f"{_api(api_ip)}/api/v1/execute", json={"language": "python", "code": code}, timeout=30)
    assert task.status_code in (200, 202), task.text
    task_id = task.json()["task_id"]
    with httpx.stream("GET", f"{_api(api_ip)}/api/v1/tasks/{task_id}/events", timeout=120) as events:
        for line in events.iter_lines():
            if "started" in line:
                break  # the job runs on one of the workers: now stop both, as compose would
    grace = str(pm.compose_service("worker-1")["stop_grace_period"]).removesuffix("s")
    pm.podman("stop", "-t", grace, *workers, timeout=float(grace) + 30)
    for worker in workers:
        assert pm.podman("inspect", "-f", "{{.State.ExitCode}}", worker).stdout.strip() == "0", pm.logs(worker)
    assert any("draining" in pm.logs(worker) for worker in workers)
    done = httpx.get(f"{_api(api_ip)}/api/v1/tasks/{task_id}", timeout=30).json()
    assert done["status"] == "done", done
    assert (done["result"]["status"], done["result"]["stdout"]) == ("ok", "started\nfinished\n"), done


def _prometheus(url: str, query: str) -> float:
    """The value of an instant query's one sample, 0 when there is none (not scraped yet)."""
    try:
        samples = httpx.get(url, params={"query": query}, timeout=10).json()["data"]["result"]
    except httpx.HTTPError:
        return 0.0
    return float(samples[0]["value"][1]) if samples else 0.0
