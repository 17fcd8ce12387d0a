"""Languages as data per environment: an imported image gets language tables from the operator
(``sandlot env import NAME ARCHIVE --languages FILE``), a declared spec from its ``[languages.NAME]`` tables.
They add languages or override declared ones key by key, and each is offered only where its toolchain is."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandlot.api.http.app import create_app
from sandlot.environments.build import Builder
from sandlot.environments.spec import parse_spec
from sandlot.environments.store import EnvironmentStore
from sandlot.errors import SpecRejected
from sandlot.languages import LanguageRegistry
from tests.api.http.test_http import asgi_client, running_service
from tests.cli.test_cli import _SANDLOT, _env
from tests.conftest import TEST_STATE_DIR
from tests.environments.test_environments_run import _python_layer
from tests.oci_images import Entry, layer, write_oci_layout

pytestmark = pytest.mark.root

LANGUAGES = """
[calc]  # a language the image adds
display_name = "Calculator"
source_file = "main.calc"
extensions = [".calc"]
requires = ["/usr/bin/python3"]
run = ["/usr/bin/python3", "-c", "import sys; print(eval(open(sys.argv[1]).read()))", "{source}"]

[python]  # a declared language, one key overridden
run = ["/usr/bin/python3", "-c", "print('overridden python')"]

[ghost]  # declared here, but its toolchain is not in the image: not offered
source_file = "main.g"
requires = ["/usr/bin/ghost"]
run = ["/usr/bin/ghost", "{source}"]
"""


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(_SANDLOT), *(str(a) for a in args)], capture_output=True, text=True, env=_env(), timeout=120, check=False
    )


@pytest.fixture(scope="module")
def calc_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The python image plus a layer of its own (a digest no other test shares: languages are per image)."""
    token = secrets.token_hex(6)
    name = f"test-langs-{token}"
    here = tmp_path_factory.mktemp("image")
    write_oci_layout(here / "layout", [_python_layer(), layer(Entry("etc/token", data=token.encode()))])
    (here / "languages.toml").write_text(LANGUAGES)
    done = _cli("env", "import", name, here / "layout", "--languages", here / "languages.toml")
    assert done.returncode == 0, done.stderr
    try:
        yield name
    finally:
        EnvironmentStore(TEST_STATE_DIR).remove(name)


def _run(tmp_path: Path, name: str, code: str, *flags: str) -> subprocess.CompletedProcess[str]:
    program = tmp_path / name
    program.write_text(code)
    return _cli("run", program, "--json", *flags)


def test_an_added_and_an_overridden_language_run_in_the_image(calc_env: str, tmp_path: Path) -> None:
    added = _run(tmp_path, "sum.calc", "1 + 2", "--env", calc_env, "-l", "calc")
    assert json.loads(added.stdout)["stdout"] == "3\n", added.stdout + added.stderr
    by_extension = _run(tmp_path, "sum.calc", "2 + 2", "--env", calc_env)  # .calc is the image's own
    assert json.loads(by_extension.stdout)["stdout"] == "4\n", by_extension.stdout + by_extension.stderr
    overridden = _run(tmp_path, "p.py", "print('as written')", "--env", calc_env)
    assert json.loads(overridden.stdout)["stdout"] == "overridden python\n", overridden.stdout
    missing = _run(tmp_path, "x.g", "x", "--env", calc_env, "-l", "ghost")
    assert missing.returncode == 2 and f"language 'ghost' is not available in environment {calc_env!r}" in (
        missing.stdout + missing.stderr
    )
    host = _run(tmp_path, "sum.calc", "1 + 2", "-l", "calc")  # the host has no such language
    assert host.returncode == 2 and "unknown language 'calc'" in host.stdout + host.stderr
    on_host = _run(tmp_path, "p.py", "print('as written')")  # nor the image's override
    assert json.loads(on_host.stdout)["stdout"] == "as written\n"


async def test_the_listing_shows_the_environments_own_languages(calc_env: str) -> None:
    async with running_service() as service, asgi_client(create_app(service)) as client:
        listed = (await client.get("/api/v1/environments")).json()["environments"]
        assert next(e for e in listed if e["name"] == calc_env)["languages"] == ["calc", "python"]
        ran = await client.post("/api/v1/run", json={"language": "calc", "code": "6 * 7", "environment": calc_env})
        assert ran.json()["stdout"] == "42\n", ran.text


def test_an_override_is_probed_in_the_root(calc_env: str) -> None:
    store = EnvironmentStore(TEST_STATE_DIR)
    root = store.rootfs(calc_env)
    registry = LanguageRegistry.load()
    assert "python" in [lang.name for lang in registry.offered_in(root)]
    gone = registry.offered_in(root, {"python": {"requires": ["/usr/bin/python9"]}})
    assert "python" not in [lang.name for lang in gone]


def test_reimporting_with_other_languages_replaces_them(tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "img", [layer(Entry("usr/bin/tool", mode=0o755, data=b"#!/bin/sh\n"))])
    store = EnvironmentStore(tmp_path / "state")
    tool = {"tool": {"source_file": "main.t", "requires": ["/usr/bin/tool"], "run": ["/usr/bin/tool", "{source}"]}}
    assert store.import_image("a", tmp_path / "img", languages=tool).environment.languages == tool
    assert store.import_image("b", tmp_path / "img").environment.languages == tool  # none given: kept
    again = store.import_image("b", tmp_path / "img", languages={})
    assert again.cached and store.inspect("a").languages == {}
    names = [lang.name for lang in LanguageRegistry.load().offered_in(store.rootfs("a"), tool)]
    assert names == ["tool"]


def test_bad_language_tables_are_refused_before_any_work(tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "img", [layer(Entry("etc/x", data=b"x"))])
    (tmp_path / "bad.toml").write_text('[newlang]\nsource_file = "a.n"\n')  # a new language needs run
    done = _cli("env", "import", "never", tmp_path / "img", "--languages", tmp_path / "bad.toml")
    assert done.returncode == 2 and "bad.toml: languages.newlang: missing run" in done.stderr, done.stderr
    assert "never" not in EnvironmentStore(TEST_STATE_DIR).names()
    spec = tmp_path / "spec.toml"
    spec.write_text('[environment]\nname = "never"\n[languages.python]\nrun = "python3"\n')
    built = _cli("env", "build", spec)
    assert built.returncode == 2 and "languages.python.run: must be a list of strings" in built.stderr


def test_a_spec_carries_language_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = parse_spec('[environment]\nname = "s"\napt = ["python3"]\n')
    text = '[environment]\nname = "s"\napt = ["python3"]\n[languages.py3]\nsource_file = "m.py"\nrun = ["python3"]\n'
    with_languages = parse_spec(text)
    assert with_languages.languages == {"py3": {"source_file": "m.py", "run": ["python3"]}}
    assert "languages" not in plain.canonical()  # specs without tables keep the hash they had
    assert with_languages.digest() != plain.digest()
    with pytest.raises(SpecRejected, match=r"\[languages.NAME\] tables"):
        parse_spec('[environment]\nname = "s"\nlanguages = 1\n[languages]\npy = 3\n')
    # The build records them with the environment (mmdebstrap, the collaborator, stands aside).
    monkeypatch.setattr(Builder, "_run", lambda self, spec, rootfs: {})
    built = Builder(EnvironmentStore(tmp_path / "state")).build(with_languages, "spec.toml")
    assert built.environment.languages == with_languages.languages
