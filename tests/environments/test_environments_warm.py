"""Pre-launched jails per environment: a box's next jail is launched in the environment of its last run
(within the pool's cap), a lease takes a box launched for its environment first, and a run never uses a
jail launched in another root, at both isolation levels. Two busybox images with different files."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandlot.config import Settings, load_settings
from sandlot.errors import ConfigError, SandboxError
from sandlot.models import Result, Status
from sandlot.pool import BoxPool
from sandlot.sandbox import Bind, Box, Sandbox
from tests.api.http.test_http import running_service
from tests.conftest import TEST_STATE_DIR
from tests.oci_images import Entry, busybox_base, layer, write_oci_layout

pytestmark = pytest.mark.root
BOTH_LEVELS = True  # every test taking ``isolation`` runs at each level (conftest)

# What a box shows of its root: the image's marker and which of the two images' own files it sees.
_PROBE = "cat /etc/marker; ls /only-* 2>/dev/null; true"


def _no_binds(box: Box) -> list[Bind]:
    return []


@pytest.fixture(scope="module")
def two_envs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Environments "a" and "b" in the shared test store (boxes must reach them): name -> root."""
    from sandlot.environments.store import EnvironmentStore

    store = EnvironmentStore(TEST_STATE_DIR)
    roots: dict[str, Path] = {}
    names: list[str] = []
    try:
        for which in ("a", "b"):
            name = f"test-warm-{which}-{secrets.token_hex(4)}"
            marker = f"env {which}\n".encode()
            own = layer(Entry(f"only-{which}", data=which.encode()), Entry("etc/marker", data=marker))
            layout = tmp_path_factory.mktemp(f"image-{which}") / "layout"
            write_oci_layout(layout, [busybox_base(), own])
            store.import_image(name, layout)
            names.append(name)
            roots[which] = store.rootfs(name)
        yield roots
    finally:
        for name in names:
            store.remove(name)


async def _run(box: Box, settings: Settings, rootfs: Path | None, script: str = _PROBE) -> Result:
    result: Result | None = None
    command = ["/bin/sh", "-c", script]
    async for item in box.run(command, limits=settings.run_defaults, rootfs=rootfs):
        if isinstance(item, Result):
            result = item
    assert result is not None and result.status is Status.OK, result
    return result


@contextlib.asynccontextmanager
async def _pool(sandbox: Sandbox, size: int, isolation: str, **options: Any) -> AsyncIterator[BoxPool]:
    pool = BoxPool(sandbox, size, max_waiting=8, prelaunch_binds=_no_binds, isolation=isolation, **options)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.close()


async def test_a_run_never_uses_a_jail_launched_for_another_environment(
    sandbox: Sandbox, settings: Settings, two_envs: dict[str, Path], isolation: str
) -> None:
    """Pool of 1: a run in B leaves the box launched for B; a run in A then sees A's files only (cold), and
    the box follows A: the next run in A is warm."""
    a, b = two_envs["a"], two_envs["b"]
    async with _pool(sandbox, 1, isolation) as pool:
        async with pool.lease("t", rootfs=b) as box:
            assert box.prelaunched_for is None and box.prelaunched  # launched for the host at start-up
            assert (await _run(box, settings, b)).stdout == b"env b\n/only-b\n"
            assert not box.last_run_warm  # the host's jail did not fit a run in b
        assert box.prelaunched and box.prelaunched_for == b  # affinity: relaunched for b
        async with pool.lease("t", rootfs=a) as same:
            assert same is box
            assert (await _run(box, settings, a)).stdout == b"env a\n/only-a\n"  # nothing of b
            assert not box.last_run_warm
        assert box.prelaunched_for == a
        async with pool.lease("t", rootfs=a):
            assert (await _run(box, settings, a)).stdout == b"env a\n/only-a\n"
            assert box.last_run_warm  # a run in an environment costs what a host run does
        async with pool.lease("t"):  # the host's root again: the jail launched for a is not used
            host = await _run(box, settings, None, "test -e /only-a || test -e /etc/marker || echo host")
            assert host.stdout == b"host\n" and not box.last_run_warm
        assert box.prelaunched_for is None


async def test_host_runs_keep_boxes_launched_for_them(
    sandbox: Sandbox, settings: Settings, two_envs: dict[str, Path]
) -> None:
    """At most size - 1 boxes keep an environment; a lease in an environment takes another environment's
    box before a host's one, and a host lease takes the host's box, warm."""
    a, b = two_envs["a"], two_envs["b"]
    async with _pool(sandbox, 2, "jail") as pool:
        async with pool.lease("t", rootfs=a) as first:
            await _run(first, settings, a)
        async with pool.lease("t", rootfs=b) as second:
            assert second is first  # a's box, not the host's last one
            await _run(second, settings, b)
        async with pool.lease("t") as host:
            assert host is not first and host.prelaunched_for is None
            await _run(host, settings, None, "true")
            assert host.last_run_warm
        # Two runs in a at once: when both are back, one box is the host's again (the cap).
        async with pool.lease("t", rootfs=a) as one, pool.lease("t", rootfs=a) as two:
            await _run(one, settings, a)
            await _run(two, settings, a)
        assert sorted(str(box.prelaunched_for) for box in (one, two)) == sorted([str(a), "None"])


async def test_preload_launches_boxes_for_environments_at_start_up(
    sandbox: Sandbox, settings: Settings, two_envs: dict[str, Path], isolation: str
) -> None:
    a, b = two_envs["a"], two_envs["b"]
    pool = _pool(sandbox, 2, isolation, preload=[a, b])  # capped: one box stays the host's
    async with pool as started, started.lease("t") as host, started.lease("t", rootfs=a) as in_a:
        assert host.prelaunched_for is None and in_a.prelaunched_for == a
        assert (await _run(in_a, settings, a)).stdout == b"env a\n/only-a\n"
        assert in_a.last_run_warm


async def test_an_unknown_preloaded_environment_stops_the_start_up() -> None:
    with pytest.raises(ConfigError, match="preload_environments: no environment named 'no-such-env'"):
        async with running_service(preload_environments=("no-such-env",)):
            pass


def test_preload_environments_is_a_list_in_toml_and_comma_separated_in_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "sandlot.toml"
    config.write_text('[server]\npreload_environments = ["datasci", "py"]\n')
    assert load_settings(config, {}).server.preload_environments == ("datasci", "py")
    assert load_settings(None, {"SANDLOT_PRELOAD_ENVIRONMENTS": "a, b,"}).server.preload_environments == ("a", "b")
    config.write_text("[server]\npreload_environments = [1]\n")
    with pytest.raises(ConfigError, match=r"preload_environments.*expected a list of strings"):
        load_settings(config, {})


async def test_a_root_gone_from_the_store_is_a_sandbox_error_and_leaves_no_cgroup(
    sandbox: Sandbox, settings: Settings, tmp_path: Path, isolation: str
) -> None:
    """An environment removed between a job's preparation and its run: a SandboxError (the run's
    internal_error), not a stray OSError; its pre-launch fails quietly; the box still runs on the host."""
    gone = TEST_STATE_DIR / "environments" / ("0" * 64) / "rootfs"
    box = sandbox.open_box(isolation=isolation)
    try:
        with pytest.raises(SandboxError, match=r"No such file or directory"):
            await _run(box, settings, gone)
        assert sandbox.driver.open_existing(box.slot.cgroup_name) is None
        box.prelaunch((), gone)
        assert not box.prelaunched
        assert (await _run(box, settings, None, "echo host")).stdout == b"host\n"
    finally:
        box.close()
