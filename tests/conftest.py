"""Shared fixtures: a real Sandbox in test-only state, cgroup and lock locations.

Everything runs for real (bubblewrap, cgroups, seccomp), which needs root. A
test needs root when it uses the ``sandbox`` fixture (directly or through
``box``, ``engine`` runs, ...), starts a Service or a server process (they call
``root.require_root``), or is marked ``root`` (e.g. it runs ``sandlot run``).
Run as another user, those are skipped with the reason and the pure-logic
tests still run. The state directory is not under pytest's tmp_path because box uids must be
able to traverse to their workdir, and pytest's tmp dirs are mode 0700.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sandlot.config import LimitRequest, Settings, load_settings
from sandlot.engine import Engine
from sandlot.languages import LanguageRegistry
from sandlot.models import Event, ExitEvent, Job, Limits, OutputEvent, Result, SourceFile
from sandlot.sandbox import Box, Sandbox
from sandlot.sandbox.box import ISOLATION_LEVELS
from sandlot.sandbox.hostfs import mounts_below
from tests.nodes import RedisServer, running_redis
from tests.root import IS_ROOT, SANDBOXES, require_root

TEST_STATE_DIR = Path("/var/lib/sandlot-test")
TEST_RUN_DIR = Path("/run/sandlot-test")
TEST_CGROUP = "sandlot-test"
TEST_UID_BASE = 910_000_000  # apart from a real install's boxes on the same host


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Not root: skip, with the reason, every test marked ``root`` (``root(why)`` says why)."""
    if IS_ROOT:
        return
    for item in items:
        marker = item.get_closest_marker("root")
        if marker is not None:
            item.add_marker(pytest.mark.skip(reason=f"needs root: {marker.args[0] if marker.args else SANDBOXES}"))


def make_settings(**overrides: object) -> Settings:
    base = load_settings(environ={})
    return dataclasses.replace(
        base,
        state_dir=TEST_STATE_DIR,
        run_dir=TEST_RUN_DIR,
        cgroup_name=TEST_CGROUP,
        box_uid_base=TEST_UID_BASE,
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="session")
def settings() -> Settings:
    return make_settings()


@pytest.fixture(scope="session")
def sandbox(settings: Settings) -> Iterator[Sandbox]:
    require_root()  # and so every test that reaches a sandbox through any fixture
    sb = Sandbox(settings)
    sb.sweep_stale()
    yield sb
    sb.sweep_stale()


@pytest.fixture(scope="session")
def languages(settings: Settings) -> LanguageRegistry:
    return LanguageRegistry.load(settings.languages_file)


@pytest.fixture(scope="session")
def engine(settings: Settings, languages: LanguageRegistry) -> Engine:
    return Engine(settings, languages)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Modules with ``BOTH_LEVELS = True`` are the behaviour suite: every test runs at each isolation level."""
    if "isolation" in metafunc.fixturenames and getattr(metafunc.module, "BOTH_LEVELS", False):
        metafunc.parametrize("isolation", ISOLATION_LEVELS, indirect=True)


@pytest.fixture
def isolation(request: pytest.FixtureRequest, sandbox: Sandbox) -> str:
    """The level under test ("jail" unless the module runs at both).

    A test whose property is the jail's own mechanism (seccomp, the host uid of
    its processes, ...) is marked ``jail_only`` with the reason; at gvisor it is
    reported as skipped with that reason, never silently passed.
    """
    level: str = getattr(request, "param", "jail")
    if level == "gvisor":
        only = request.node.get_closest_marker("jail_only")
        if only is not None:
            pytest.skip(f"jail only: {only.args[0]}")
        sandbox.check_isolation("gvisor")  # a missing runsc fails the suite with runsc's own words
    return level


@pytest.fixture
def box(sandbox: Sandbox, isolation: str) -> Iterator[Box]:
    b = sandbox.open_box(isolation=isolation)
    try:
        yield b
    finally:
        b.close()


@dataclass
class Run:
    """Everything one job produced."""

    result: Result
    events: list[Event] = field(default_factory=list)

    @property
    def stdout(self) -> str:
        return self.result.stdout.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.result.stderr.decode("utf-8", "replace")

    @property
    def output_events(self) -> list[OutputEvent]:
        return [e for e in self.events if isinstance(e, OutputEvent)]


async def run_job(
    engine: Engine,
    box: Box,
    language: str,
    code: str | bytes,
    *,
    stdin: bytes = b"",
    args: tuple[str, ...] = (),
    limits: LimitRequest | None = None,
    exact_limits: Limits | None = None,
    extra_files: tuple[SourceFile, ...] = (),
    environment: str = "",
) -> Run:
    """Validate and run one job in box, collecting every event."""
    content = code.encode() if isinstance(code, str) else code
    job = Job(
        language=language,
        files=(SourceFile("main", content), *extra_files),
        stdin=stdin,
        args=args,
        limits=exact_limits,
        environment=environment,
    )
    prepared = engine.prepare(job, limits)
    events: list[Event] = []
    async for event in engine.execute(prepared, box):
        events.append(event)
    last = events[-1]
    assert isinstance(last, ExitEvent)
    return Run(last.result, events)


async def run_in(box: Box, command: list[str], limits: Limits, *, stdin: bytes = b"") -> Result:
    """Run a raw command in a box (no language), returning its Result."""
    result: Result | None = None
    async for item in box.run(command, limits=limits, stdin=stdin):
        if isinstance(item, Result):
            result = item
    assert result is not None
    return result


def leftover_mounts() -> list[Path]:
    return mounts_below(TEST_STATE_DIR / "boxes")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Leave nothing behind even if a test died mid-run.

    Only slots no live process holds are cleaned (a concurrent test session may
    still be using others), and the lock directory stays. Not root, no test ran a box.
    """
    if IS_ROOT:
        Sandbox(make_settings()).sweep_stale()


@pytest.fixture
def fresh_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, without persistence, stopped after it."""
    with running_redis(tmp_path / "redis", append_only=False) as server:
        yield server
