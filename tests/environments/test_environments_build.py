"""A declared environment built from the registries (mmdebstrap from Debian, pip from PyPI), then cached."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sandlot.environments.build import Builder
from sandlot.environments.spec import parse_spec
from sandlot.environments.store import EnvironmentStore
from sandlot.errors import EnvironmentBuildFailed

_SPEC = """
[environment]
name = "datasci"
suite = "bookworm"
apt = ["python3-numpy"]
pip = ["tabulate==0.9.0"]
"""


def _python(rootfs: Path, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["chroot", str(rootfs), "/usr/bin/python3", "-c", code], capture_output=True, text=True, check=False
    )


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_declared_environment_has_its_libraries_and_builds_once(tmp_path: Path) -> None:
    store = EnvironmentStore(tmp_path / "state")
    steps: list[str] = []
    spec = parse_spec(_SPEC)
    first = Builder(store, log=steps.append).build(spec, "test")
    assert not first.cached and len(steps) == 1
    env = first.environment
    assert env.kind == "built" and env.digest == spec.digest()
    assert env.packages["apt"]["python3-numpy"] and env.packages["pip"]["tabulate"] == "0.9.0"
    rootfs = store.rootfs("datasci")
    ran = _python(rootfs, "import numpy, tabulate; print(numpy.arange(4).sum(), tabulate.__version__)")
    assert (ran.returncode, ran.stdout) == (0, "6 0.9.0\n"), ran.stderr
    assert not (rootfs / "tmp/sandlot-build-ca.crt").exists()
    dev = [os.lstat(path).st_mode for path in (rootfs / "dev").iterdir()]
    assert dev and not [mode for mode in dev if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)]  # a box brings its own
    # The host's own python has no numpy: the library comes from the environment.
    host = subprocess.run(["/usr/bin/python3", "-c", "import numpy"], capture_output=True, check=False)
    assert host.returncode != 0
    # The same spec (another name, another order) is found by its hash: no build step runs.
    marker = (rootfs / "usr/bin/python3").stat().st_ino
    again = Builder(store, log=steps.append).build(parse_spec(_SPEC.replace("datasci", "again")), "test")
    assert again.cached and len(steps) == 1
    assert store.rootfs("again") == rootfs and (rootfs / "usr/bin/python3").stat().st_ino == marker
    # The CLI says so too.
    (tmp_path / "spec.toml").write_text(_SPEC)
    env_vars = {k: v for k, v in os.environ.items() if not k.startswith("SANDLOT_")}
    env_vars["SANDLOT_STATE_DIR"] = str(tmp_path / "state")
    sandlot = Path(sys.executable).with_name("sandlot")
    command = [str(sandlot), "env", "build", str(tmp_path / "spec.toml")]
    done = subprocess.run(command, capture_output=True, text=True, env=env_vars, check=False)
    assert done.returncode == 0 and done.stdout.startswith("cached (the same spec was built before; nothing done)")
    assert done.stderr == ""  # no build step was announced


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_failed_build_says_why_and_leaves_nothing(tmp_path: Path) -> None:
    store = EnvironmentStore(tmp_path / "state")
    spec = parse_spec('[environment]\nname = "nope"\napt = ["sandlot-no-such-package"]\n')
    with pytest.raises(EnvironmentBuildFailed, match="mmdebstrap failed") as caught:
        Builder(store).build(spec, "test")
    assert "sandlot-no-such-package" in str(caught.value)
    assert sorted(p.name for p in store.root.iterdir()) == [".locks"]
