"""Which environments a tenant may use: an API key's ``environments`` list, enforced at every door (through
``Core.submit``) and applied to the listing. A name the key does not allow is answered exactly as an unknown
one (404, the same message), so a tenant learns nothing of another's environment names."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandlot.api.http.app import create_app
from sandlot.config import ApiKey, load_settings
from sandlot.environments.store import EnvironmentStore
from sandlot.errors import ConfigError
from tests.api.http.test_http import asgi_client, running_service
from tests.conftest import TEST_STATE_DIR
from tests.environments.test_environments_run import _python_layer
from tests.oci_images import write_oci_layout

pytestmark = pytest.mark.root
CODE = "print(open('/etc/marker').read().strip())"


@pytest.fixture(scope="module")
def two_envs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """One image under two names in the shared test store: the tenant may use the first only."""
    token = secrets.token_hex(6)
    names = (f"test-mine-{token}", f"test-theirs-{token}")
    store = EnvironmentStore(TEST_STATE_DIR)
    layout = tmp_path_factory.mktemp("image") / "layout"
    write_oci_layout(layout, [_python_layer()], compression=["none"])
    for name in names:
        store.import_image(name, layout)
    try:
        yield names
    finally:
        for name in names:
            store.remove(name)


def _keys(mine: str) -> tuple[ApiKey, ...]:
    return (ApiKey("key-a", "a", environments=(mine,)), ApiKey("key-any", "any"))


async def test_http_lists_and_runs_only_the_keys_environments(two_envs: tuple[str, str]) -> None:
    mine, theirs = two_envs
    a = {"Authorization": "Bearer key-a"}
    async with running_service(api_keys=_keys(mine)) as service, asgi_client(create_app(service)) as client:
        listed = [e["name"] for e in (await client.get("/api/v1/environments", headers=a)).json()["environments"]]
        assert mine in listed and theirs not in listed
        every = await client.get("/api/v1/environments", headers={"Authorization": "Bearer key-any"})
        assert {mine, theirs} <= {e["name"] for e in every.json()["environments"]}
        allowed = {"language": "python", "code": CODE, "environment": mine}
        ran = await client.post("/api/v1/run", headers=a, json=allowed)
        assert ran.status_code == 200 and ran.json()["stdout"] == "only-in-the-image\n", ran.text
        body = {"language": "python", "code": CODE, "environment": theirs}
        refused = await client.post("/api/v1/run", headers=a, json=body)
        unknown = await client.post("/api/v1/run", headers=a, json={**body, "environment": "no-such"})
        assert refused.status_code == unknown.status_code == 404
        assert refused.json()["error"] == {**unknown.json()["error"], "message": refused.json()["error"]["message"]}
        assert refused.json()["error"]["message"] == f"no environment named {theirs!r} (see: sandlot env list)"
        for path in ("/api/v1/execute",):
            queued = await client.post(path, headers=a, json=body)
            assert queued.status_code == 404, queued.text
        text = await client.post("/run", headers=a, params={"language": "python", "environment": theirs}, content=CODE)
        assert text.status_code == 404
        host = await client.post("/api/v1/run", headers=a, json={"language": "python", "code": "print(1)"})
        assert host.json()["stdout"] == "1\n"  # the host's environment stays allowed
        other = await client.post(
            "/api/v1/run", headers={"Authorization": "Bearer key-any"}, json={**body, "code": CODE}
        )
        assert other.json()["stdout"] == "only-in-the-image\n", other.text


async def test_a_session_in_an_environment_the_key_does_not_allow_is_refused_as_unknown(
    two_envs: tuple[str, str],
) -> None:
    """A session's runs go in its environment without naming it: the key is checked when the session is made."""
    mine, theirs = two_envs
    a = {"Authorization": "Bearer key-a"}
    async with running_service(api_keys=_keys(mine)) as service, asgi_client(create_app(service)) as client:
        for stateful in (False, True):
            body = {"environment": theirs, **({"stateful": True, "language": "python"} if stateful else {})}
            refused = await client.post("/api/v1/sessions", headers=a, json=body)
            assert refused.status_code == 404, refused.text
            assert refused.json()["error"]["message"] == f"no environment named {theirs!r} (see: sandlot env list)"
        made = await client.post("/api/v1/sessions", headers=a, json={"environment": mine})
        assert made.status_code == 201, made.text
        session_id = made.json()["session_id"]
        ran = await client.post(
            "/api/v1/run", headers=a, json={"language": "python", "code": CODE, "session_id": session_id}
        )
        assert ran.json()["stdout"] == "only-in-the-image\n", ran.text
        assert (await client.delete(f"/api/v1/sessions/{session_id}", headers=a)).status_code == 204


async def test_mcp_refuses_an_environment_the_key_does_not_allow(two_envs: tuple[str, str]) -> None:
    from tests.api.mcp.test_mcp import _error, _http_client, _mcp_app, _structured

    mine, theirs = two_envs
    async with (
        running_service(api_keys=_keys(mine)) as service,
        _mcp_app(service) as url,
        _http_client(url, Authorization="Bearer key-a") as client,
    ):
        arguments = {"language": "python", "code": CODE, "environment": mine}
        ran = _structured(await client.call_tool("run_code", arguments))
        assert ran["stdout"] == "only-in-the-image\n", ran
        refused = await _error(client, "run_code", {**arguments, "environment": theirs})
        assert f"no environment named {theirs!r}" in refused


def test_the_keys_file_takes_an_environments_list(tmp_path: Path) -> None:
    config = tmp_path / "sandlot.toml"
    config.write_text('[api_keys]\nk1 = { tenant = "t", environments = ["datasci", "web"] }\nk2 = "u"\n')
    keys = load_settings(config, environ={}).server.api_keys
    assert [(k.key, k.environments) for k in keys] == [("k1", ("datasci", "web")), ("k2", None)]
    config.write_text('[api_keys]\nk1 = { tenant = "t", environments = "datasci" }\n')
    with pytest.raises(ConfigError, match=r"\[api_keys\].k1.environments.*a list of environment names"):
        load_settings(config, environ={})
