"""Environments at the Piston and Judge0 doors, with a real imported image: Piston lists each environment's
languages as runtimes of their own (``python@ENV``, or version ``0.0.0-ENV``); Judge0 gives configured
language ids (``[judge0.languages]``) to a language in an environment. Both respect the key's environments."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from sandlot.api.http.app import create_app
from sandlot.config import ApiKey, Judge0EnvironmentLanguage, Judge0Settings, ServerSettings, load_settings
from sandlot.errors import ConfigError
from sandlot.service import Service
from tests.api.http.test_http import asgi_client, live_server, running_service
from tests.api.piston.test_piston import pyston_client
from tests.conftest import make_settings

pytestmark = pytest.mark.root
PROBE = "import os\nprint(os.path.exists('/etc/marker'))"


def _piston(language: str, version: str = "*") -> dict[str, object]:
    return {"language": language, "version": version, "files": [{"content": PROBE}]}


async def test_piston_lists_and_runs_an_environments_languages(py_env: str) -> None:
    async with running_service() as service, asgi_client(create_app(service)) as client:
        runtimes = (await client.get("/api/v2/runtimes")).json()
        mine = [rt for rt in runtimes if rt.get("runtime") == py_env]
        assert mine == [
            {
                "language": "python",
                "version": f"0.0.0-{py_env}",
                "aliases": [f"python@{py_env}", f"py@{py_env}", f"py3@{py_env}", f"python3@{py_env}"],
                "runtime": py_env,
            }
        ]
        for body in (_piston(f"python@{py_env}"), _piston(f"py3@{py_env}"), _piston("python", f"0.0.0-{py_env}")):
            ran = await client.post("/api/v2/execute", json=body)
            assert ran.status_code == 200 and ran.json()["run"]["stdout"] == "True\n", (body, ran.text)
            assert ran.json()["version"] == f"0.0.0-{py_env}"
        for host in (_piston("python"), _piston("python", "3.x")):  # the host's runtime still comes first
            assert (await client.post("/api/v2/execute", json=host)).json()["run"]["stdout"] == "False\n"
        unknown = await client.post("/api/v2/execute", json=_piston("python@nope"))
        assert (unknown.status_code, unknown.json()) == (400, {"message": "python@nope-* runtime is unknown"})


async def test_a_piston_client_selects_the_environment(py_env: str) -> None:
    from pyston import File

    async with (
        running_service() as service,
        live_server(create_app(service)) as address,
        pyston_client(f"http://{address}/api/v2/") as client,
    ):
        assert str(await client.execute(f"python@{py_env}", [File(PROBE)])) == "True\n"
        assert str(await client.execute("python", [File(PROBE)], version=f"0.0.0-{py_env}")) == "True\n"


async def test_piston_shows_a_key_only_its_environments(py_env: str) -> None:
    keys = (ApiKey("key-none", "n", environments=()),)
    async with running_service(api_keys=keys) as service, asgi_client(create_app(service)) as client:
        none = {"Authorization": "key-none"}
        runtimes = (await client.get("/api/v2/runtimes", headers=none)).json()
        assert [rt for rt in runtimes if rt.get("runtime") == py_env] == []
        refused = await client.post("/api/v2/execute", json=_piston(f"python@{py_env}"), headers=none)
        assert refused.status_code == 400 and refused.json()["message"] == f"python@{py_env}-* runtime is unknown"


@contextlib.asynccontextmanager
async def _judge0(env: str, api_keys: tuple[ApiKey, ...] = ()) -> AsyncIterator[httpx.AsyncClient]:
    extra = (
        Judge0EnvironmentLanguage(1001, "Python (test image)", "python", env),
        Judge0EnvironmentLanguage(1002, "Python (nowhere)", "python", "no-such-env"),
        Judge0EnvironmentLanguage(1003, "Bash (test image)", "bash", env),  # no bash in the image
    )
    settings = make_settings(judge0=Judge0Settings(languages=extra))
    server = ServerSettings(gvisor_pool_size=0, pool_size=2, drain_deadline_s=2.0, api_keys=api_keys)
    service = await Service.start(settings, server)
    try:
        async with asgi_client(create_app(service)) as client:
            yield client
    finally:
        await service.stop()


async def test_judge0_language_ids_in_an_environment(py_env: str) -> None:
    async with _judge0(py_env) as client:
        listed = (await client.get("/judge0/languages")).json()
        assert {"id": 1001, "name": "Python (test image)"} in listed
        assert {item["id"] for item in listed} & {1002, 1003} == set()  # not offered: not listed
        assert (await client.get("/judge0/languages/1001")).json()["name"] == "Python (test image)"
        body = {"source_code": PROBE, "language_id": 1001}
        ran = await client.post("/judge0/submissions", params={"wait": "true"}, json=body)
        assert ran.status_code == 201, ran.text
        assert ran.json()["stdout"] == "True\n" and ran.json()["status"]["id"] == 3
        token = ran.json()["token"]
        shown = await client.get(f"/judge0/submissions/{token}", params={"fields": "language,stdout"})
        assert shown.json() == {"language": {"id": 1001, "name": "Python (test image)"}, "stdout": "True\n"}
        host = await client.post("/judge0/submissions", params={"wait": "true"}, json={**body, "language_id": 71})
        assert host.json()["stdout"] == "False\n"
        nowhere = await client.post("/judge0/submissions", params={"wait": "true"}, json={**body, "language_id": 1002})
        assert nowhere.status_code == 422
        assert nowhere.json() == {"language_id": ["no environment named 'no-such-env' (see: sandlot env list)"]}
        bash = await client.post("/judge0/submissions", params={"wait": "true"}, json={**body, "language_id": 1003})
        assert bash.status_code == 422 and "not available in environment" in bash.json()["language_id"][0]


async def test_judge0_hides_the_ids_of_environments_a_key_may_not_use(py_env: str) -> None:
    keys = (ApiKey("key-none", "n", environments=()),)
    async with _judge0(py_env, keys) as client:
        none = {"Authorization": "Bearer key-none"}
        assert 1001 not in {item["id"] for item in (await client.get("/judge0/languages", headers=none)).json()}
        body = {"source_code": PROBE, "language_id": 1001}
        refused = await client.post("/judge0/submissions", params={"wait": "true"}, json=body, headers=none)
        assert refused.status_code == 422 and refused.json() == {"language_id": ["language with id 1001 doesn't exist"]}


def test_judge0_languages_config(tmp_path: Path) -> None:
    config = tmp_path / "sandlot.toml"
    config.write_text('[judge0.languages]\n1001 = { name = "P (d)", language = "python", environment = "d" }\n')
    assert load_settings(config, environ={}).judge0.languages == (
        Judge0EnvironmentLanguage(1001, "P (d)", "python", "d"),
    )
    config.write_text('[judge0.languages]\n1001 = { name = "P (d)", language = "python" }\n')
    with pytest.raises(ConfigError, match=r"\[judge0.languages\].1001"):
        load_settings(config, environ={})
    config.write_text('[judge0.languages]\nx = { name = "P", language = "python", environment = "d" }\n')
    with pytest.raises(ConfigError, match="a language id"):
        load_settings(config, environ={})


async def test_judge0_refuses_an_id_of_judge0s_own() -> None:
    extra = (Judge0EnvironmentLanguage(71, "Python (mine)", "python", "anything"),)
    service = await Service.start(
        make_settings(judge0=Judge0Settings(languages=extra)), ServerSettings(gvisor_pool_size=0, pool_size=1)
    )
    try:
        with pytest.raises(ConfigError, match=r"\[judge0.languages\]: ids \[71\] are Judge0 CE's own"):
            create_app(service)
    finally:
        await service.stop()
