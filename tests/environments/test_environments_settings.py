"""The environment settings of config.py: the store's directory, the disk cap over all environments, the
per-import caps, all reaching the store the CLI and the server use."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sandlot.config import Settings, load_settings
from sandlot.environments.store import Environment, EnvironmentStore
from sandlot.errors import EnvironmentLimitExceeded
from tests.oci_images import Entry, busybox_base, layer, write_oci_layout

_SANDLOT = Path(sys.executable).with_name("sandlot")


def _left_behind(store: EnvironmentStore) -> list[str]:
    return sorted(name for name in os.listdir(store.root) if name.startswith(".tmp"))


def test_the_settings_make_the_store(tmp_path: Path) -> None:
    config = tmp_path / "sandlot.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\nenvironments_dir = "{tmp_path / "envs"}"\n'
        "environments_max_bytes = 5000\nenvironment_import_max_bytes = 4000\nenvironment_import_max_files = 30\n"
    )
    store = EnvironmentStore.from_settings(load_settings(config, environ={}))
    assert store.root == tmp_path / "envs"
    assert (store.disk_cap_bytes, store.limits.max_total_bytes, store.limits.max_files) == (5000, 4000, 30)
    default = EnvironmentStore.from_settings(Settings(state_dir=tmp_path / "s"))
    assert default.root == tmp_path / "s" / "environments"
    assert default.disk_cap_bytes == Settings().environments_max_bytes > 0


def test_the_disk_cap_counts_every_environment_and_refuses_the_one_past_it(tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "a", [busybox_base()])
    write_oci_layout(tmp_path / "b", [busybox_base(), layer(Entry("etc/b", data=b"b" * 4096))])
    probe = EnvironmentStore(tmp_path / "probe")
    size_a = probe.import_image("a", tmp_path / "a").environment.size_bytes
    size_b = probe.import_image("b", tmp_path / "b").environment.size_bytes
    store = EnvironmentStore(tmp_path / "state", disk_cap_bytes=size_a + size_b - 1)
    store.import_image("a", tmp_path / "a")
    assert store.used_bytes() == size_a
    with pytest.raises(EnvironmentLimitExceeded, match=f"environments_max_bytes={size_a + size_b - 1}") as caught:
        store.import_image("b", tmp_path / "b")
    assert caught.value.limit == "environments_max_bytes"
    assert _left_behind(store) == [] and store.names() == {"a": store.inspect("a").digest.split(":")[1]}
    # Another name for what is stored takes no disk: allowed at the cap.
    assert store.import_image("a2", tmp_path / "a").cached
    # An unnamed environment (its name re-pointed) still takes its disk until gc removes it.
    store.remove("a")
    store.remove("a2")

    def filled(size: int) -> Callable[[Path], Environment]:
        def produce(rootfs: Path) -> Environment:
            (rootfs / "data").write_bytes(b"x" * size)
            return probe.inspect("a")

        return produce

    store.materialise("c", "sha256:" + "c" * 64, filled(size_a))
    store.materialise("c", "sha256:" + "e" * 64, filled(0))
    assert store.used_bytes() == size_a
    with pytest.raises(EnvironmentLimitExceeded):
        store.import_image("b", tmp_path / "b")
    assert store.gc() == ["sha256:" + "c" * 64]
    assert store.import_image("b", tmp_path / "b").environment.size_bytes == size_b


def test_a_full_store_refuses_before_reading_the_image(tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "a", [busybox_base()])
    write_oci_layout(tmp_path / "b", [busybox_base(), layer(Entry("etc/b", data=b"b"))])
    size_a = EnvironmentStore(tmp_path / "probe").import_image("a", tmp_path / "a").environment.size_bytes
    store = EnvironmentStore(tmp_path / "state", disk_cap_bytes=size_a)
    store.import_image("a", tmp_path / "a")
    calls: list[Path] = []

    def produce(rootfs: Path) -> object:
        calls.append(rootfs)
        raise AssertionError("a full store must not start making an environment")

    with pytest.raises(EnvironmentLimitExceeded, match="in use: "):
        store.materialise("d", "sha256:" + "d" * 64, produce)  # type: ignore[arg-type]
    assert calls == [] and _left_behind(store) == []


def test_the_cli_names_the_cap_and_exits_2(tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "a", [busybox_base()])
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDLOT_")}
    env |= {"SANDLOT_STATE_DIR": str(tmp_path / "state"), "SANDLOT_ENVIRONMENT_IMPORT_MAX_FILES": "3"}
    done = subprocess.run(
        [str(_SANDLOT), "env", "import", "a", str(tmp_path / "a")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "environment_import_max_files=3" in done.stderr and len(done.stderr.splitlines()) == 1
    env |= {"SANDLOT_ENVIRONMENT_IMPORT_MAX_FILES": "1000", "SANDLOT_ENVIRONMENTS_MAX_BYTES": "10"}
    done = subprocess.run(
        [str(_SANDLOT), "env", "import", "a", str(tmp_path / "a")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2 and "environments_max_bytes=10" in done.stderr, done.stderr


def test_imports_finishing_together_cannot_pass_the_cap_together(tmp_path: Path) -> None:
    images = []
    for n in range(3):
        write_oci_layout(tmp_path / f"i{n}", [busybox_base(), layer(Entry("etc/n", data=str(n).encode() * 4096))])
        images.append(tmp_path / f"i{n}")
    size = EnvironmentStore(tmp_path / "probe").import_image("x", images[0]).environment.size_bytes
    store = EnvironmentStore(tmp_path / "state", disk_cap_bytes=size * 2 - 1)  # room for one
    start = threading.Barrier(3)

    def one(n: int) -> str:
        start.wait()
        try:
            store.import_image(f"n{n}", images[n])
        except EnvironmentLimitExceeded:
            return "refused"
        return "imported"

    with ThreadPoolExecutor(3) as pool:
        outcomes = sorted(pool.map(one, range(3)))
    assert outcomes == ["imported", "refused", "refused"]
    assert store.used_bytes() == size and _left_behind(store) == []
