"""The box pool with real boxes: leases, fair waiting, sessions, expiry, prelaunch and close.

Orders are asserted, never durations: waiters are queued one at a time (each
attempt reaches the queue before its first await returns), and grants are
recorded as they happen. Time-driven behaviour runs either on a fake clock the
test moves, or on the real clock with a bounded wait for the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from sandlot.config import Settings
from sandlot.errors import AtCapacity, SessionNotFound
from sandlot.models import Status
from sandlot.pool import BoxPool, Session
from sandlot.sandbox import Bind, Box, Sandbox, hostfs, slots
from sandlot.sandbox.chain import _await_ready
from sandlot.sandbox.protocol import is_ready
from tests.conftest import run_in

_WAIT_S = 10.0  # a bound for what should happen promptly, never a measurement


# ------------------------------------------------------------------ helpers


@contextlib.asynccontextmanager
async def _started_pool(sandbox: Sandbox, size: int, **options: Any) -> AsyncIterator[BoxPool]:
    options.setdefault("max_waiting", 8)
    pool = BoxPool(sandbox, size, **options)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.close()


async def _record(pool: BoxPool, tenant: str, name: str, granted: list[str]) -> None:
    """Lease a box, note the grant, and give the box back at once."""
    async with pool.lease(tenant):
        granted.append(name)


async def _enqueue(pool: BoxPool, attempt: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    """Start a lease attempt and return once it waits in the queue, so queue order is the call order."""
    before = pool.waiting
    task = asyncio.create_task(attempt)
    for _ in range(10):  # it queues on its first step; a few yields leave margin
        await asyncio.sleep(0)
        if pool.waiting > before:
            return task
    task.cancel()
    raise AssertionError("the lease attempt never queued")


async def _within(awaitable: Awaitable[Any]) -> Any:
    async with asyncio.timeout(_WAIT_S):
        return await awaitable


async def _eventually(predicate: Callable[[], bool]) -> None:
    """For state no event announces (the expiry task's work): check until true, within a bound."""
    async with asyncio.timeout(_WAIT_S):
        while not predicate():
            await asyncio.sleep(0.01)


async def _sh(box: Box, script: str, settings: Settings) -> bytes:
    """Run a shell script in the box's jail; its stdout."""
    result = await run_in(box, ["/bin/sh", "-c", script], settings.run_defaults)
    assert result.status is Status.OK, result
    return result.stdout


class _FakeClock:
    """A clock the test moves by hand; counts its reads."""

    def __init__(self) -> None:
        self.start = self.now = 1000.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now

    def at(self, offset_s: float) -> None:
        self.now = self.start + offset_s


async def _expiry_pass(pool: BoxPool) -> None:
    """Wake the expiry task and let it scan: it scans as soon as it resumes, before any await."""
    pool.sessions._wakeup.set()
    for _ in range(5):
        await asyncio.sleep(0)


def _no_binds(box: Box) -> list[Bind]:
    return []


def _slot_is_clean(sandbox: Sandbox, index: int) -> bool | None:
    """No mount under the slot's directory and no cgroup of it; None if another process holds it now."""
    slot = slots.try_acquire(sandbox.settings.run_dir, index, sandbox.settings.box_uid_base)
    if slot is None:
        return None  # another test session took the freed slot: what is there is its own
    try:
        mounts = hostfs.mounts_below(sandbox.boxes_dir / str(index))
        return not mounts and sandbox.driver.open_existing(f"box-{index}") is None
    finally:
        slot.release()


# ------------------------------------------------------------------ leases


async def test_leases_hand_out_distinct_boxes(sandbox: Sandbox) -> None:
    async with _started_pool(sandbox, 2) as pool, pool.lease("a") as first, pool.lease("a") as second:
        assert first is not second
        assert first.slot.index != second.slot.index
        assert first.workdir != second.workdir
        assert pool.busy == 2
        assert pool.available == 0


async def test_a_box_comes_back_reset(sandbox: Sandbox, settings: Settings) -> None:
    async with _started_pool(sandbox, 1) as pool:
        async with pool.lease("a") as box:
            await _sh(box, "echo secret > /box/left.txt", settings)
            assert box.read_file("left.txt", 100) == b"secret\n"
        assert pool.busy == 0
        assert pool.available == 1
        async with pool.lease("b") as again:
            assert again is box  # the only box: the same slot, a fresh workdir
            assert again.list_files() == []
            assert await _sh(again, "ls -A /box", settings) == b""


async def test_a_cancel_of_one_lease_does_not_reach_the_next(sandbox: Sandbox, settings: Settings) -> None:
    """A cancel kills the run and any the same lease starts later; the box's next lease (a judge test, a
    stateful session's interpreter, a run) starts clean, whoever takes it."""
    async with _started_pool(sandbox, 1) as pool:
        async with pool.lease("a") as box:
            box.cancel_run()  # a door's cancel, after the run has ended: the flag stays with this lease
            cancelled = await run_in(box, ["/bin/sh", "-c", "echo late"], settings.run_defaults)
            assert cancelled.cancelled, cancelled
        async with pool.lease("b") as again:
            assert again is box
            assert await _sh(again, "echo fresh", settings) == b"fresh\n"


async def test_waiters_are_served_fifo_per_tenant_and_in_rotation_across_tenants(sandbox: Sandbox) -> None:
    granted: list[str] = []
    async with _started_pool(sandbox, 1) as pool:
        async with pool.lease("holder"):
            waiters = [
                await _enqueue(pool, _record(pool, tenant, name, granted))
                for tenant, name in (("a", "a1"), ("a", "a2"), ("a", "a3"), ("b", "b1"))
            ]
            assert pool.waiting == 4
            assert granted == []
        async with asyncio.timeout(_WAIT_S):
            await asyncio.gather(*waiters)
        assert granted == ["a1", "b1", "a2", "a3"]  # B second, not fourth; A's own in order
        assert pool.waiting == 0
        assert pool.available == 1


async def test_past_max_waiting_a_lease_fails_at_once(sandbox: Sandbox) -> None:
    granted: list[str] = []
    async with _started_pool(sandbox, 1, max_waiting=2) as pool:
        async with pool.lease("holder"):
            waiters = [await _enqueue(pool, _record(pool, t, t, granted)) for t in ("a", "b")]
            # While the box is still held: the third attempt cannot have waited for it.
            with pytest.raises(AtCapacity) as refused:
                async with asyncio.timeout(_WAIT_S), pool.lease("c"):
                    pytest.fail("leased past max_waiting")
            assert refused.value.retry_after_s > 0
            assert pool.waiting == 2
        async with asyncio.timeout(_WAIT_S):
            await asyncio.gather(*waiters)
        assert granted == ["a", "b"]


async def test_a_cancelled_waiter_leaves_the_queue_without_taking_a_box(sandbox: Sandbox) -> None:
    granted: list[str] = []
    async with _started_pool(sandbox, 1, max_waiting=2) as pool:
        async with pool.lease("holder"):
            gone = await _enqueue(pool, _record(pool, "a", "gone", granted))
            kept = await _enqueue(pool, _record(pool, "a", "kept", granted))
            gone.cancel()
            with pytest.raises(asyncio.CancelledError):
                await gone
            assert pool.waiting == 1
            # Its place counts no more against max_waiting.
            other = await _enqueue(pool, _record(pool, "b", "other", granted))
        async with asyncio.timeout(_WAIT_S):
            await asyncio.gather(kept, other)
        assert granted == ["kept", "other"]
        assert pool.available == 1
        assert pool.busy == 0


async def test_a_waiter_cancelled_as_it_is_handed_a_box_passes_it_on(sandbox: Sandbox) -> None:
    granted: list[str] = []
    async with _started_pool(sandbox, 1) as pool:
        async with pool.lease("holder"):
            first = await _enqueue(pool, _record(pool, "a", "first", granted))
            second = await _enqueue(pool, _record(pool, "b", "second", granted))
        # The release has just handed the box to `first`, which has not run since: cancel it now.
        assert pool.waiting == 1
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        async with asyncio.timeout(_WAIT_S):
            await second
        assert granted == ["second"]
        assert pool.available == 1


# ---------------------------------------------------------------- sessions


def _files(session: Session) -> Path:
    """The session's workdir as a path for the test's own host-side looks (through its fd)."""
    return Path(f"/proc/self/fd/{session.workdir.fd}")


def _freed(session: Session) -> bool:
    """Its workdir's last reference is gone, and the tmpfs with it."""
    try:
        os.fstat(session.workdir.fd)
    except OSError:
        return session.workdir.closed
    return False


async def test_sessions_pin_no_box_and_outnumber_the_pool(sandbox: Sandbox, settings: Settings) -> None:
    async with _started_pool(sandbox, 1, max_sessions=20) as pool:
        sessions = [await pool.create_session("a") for _ in range(20)]
        assert pool.session_count == 20
        assert pool.available == 1  # no session took the box
        ids = [s.id for s in sessions]
        assert len(set(ids)) == 20
        assert all(len(i) >= 32 for i in ids)
        assert len({i[:8] for i in ids}) == 20  # random, not a counter behind a common prefix
        for n, session in enumerate(sessions):
            async with pool.lease("a", session.id) as box:
                await _sh(box, f"echo {n} > /box/mine.txt; ls /box > /tmp/seen; mv /tmp/seen /box/seen.txt", settings)
        for n, session in enumerate(sessions):
            async with pool.lease("a", session.id) as box:
                assert await _sh(box, "cat /box/mine.txt; cat /box/seen.txt", settings) == f"{n}\nmine.txt\n".encode()


async def test_a_sessions_files_survive_between_runs_in_different_boxes(sandbox: Sandbox, settings: Settings) -> None:
    async with _started_pool(sandbox, 2, prelaunch_binds=_no_binds) as pool:
        session = await pool.create_session("a")
        async with pool.lease("holder"), pool.lease("a", session.id) as first:
            await _sh(first, "mkdir -p /box/d && echo kept > /box/d/kept.txt", settings)
        # The box the session ran in comes back first: held now, the session's next run takes the other.
        async with pool.lease("holder") as held, pool.lease("a", session.id) as second:
            assert held is first
            assert second is not first
            # Writable there too (another host uid), and the cwd is the session's workdir.
            out = await _sh(second, "cat d/kept.txt && echo more >> d/kept.txt && cat /box/d/kept.txt", settings)
            assert out == b"kept\nkept\nmore\n"
        assert pool.get_session("a", session.id) is session


async def test_a_sessions_next_run_does_not_wait_for_the_last_boxs_reset(
    sandbox: Sandbox, settings: Settings, monkeypatch: Any
) -> None:
    """The session is let go once its workdir is off the box; the box's reset (held here) follows apart."""
    async with _started_pool(sandbox, 2, prelaunch_binds=_no_binds) as pool:
        session = await pool.create_session("a")
        resetting, go_on = threading.Event(), threading.Event()
        real_reset = Box.reset

        def slow_reset(box: Box) -> None:
            resetting.set()
            go_on.wait(_WAIT_S)  # the first box's reset does not end until the session's next run ran
            real_reset(box)

        monkeypatch.setattr(Box, "reset", slow_reset)
        boxes: list[Box] = []

        async def first_run() -> None:
            async with pool.lease("a", session.id) as first:
                boxes.append(first)
                await _sh(first, "echo kept > kept.txt", settings)

        first = asyncio.create_task(first_run())  # it ends once its box is reset: after the next run here
        try:
            assert await asyncio.to_thread(resetting.wait, _WAIT_S)  # the first box is being reset now...
            assert session.active_runs == 0 and not session.lock.locked()  # ...and the session is free
            monkeypatch.setattr(Box, "reset", real_reset)
            async with asyncio.timeout(_WAIT_S), pool.lease("a", session.id) as second:
                assert second is not boxes[0]
                assert await _sh(second, "cat kept.txt", settings) == b"kept\n"
        finally:
            go_on.set()
            await first


async def test_a_session_run_takes_the_jail_launched_ahead(sandbox: Sandbox, settings: Settings) -> None:
    """The session's workdir reaches a jail launched before the run (mount propagation + the init's chdir)."""
    async with _started_pool(sandbox, 1, prelaunch_binds=_no_binds) as pool:
        session = await pool.create_session("a")
        _files(session).joinpath("in.txt").write_text("from the host\n")
        (waiting,) = pool._boxes
        assert waiting._warm is not None
        # Its jail set up (bubblewrap's binds done): the workdir can reach it only by propagation now.
        await _await_ready(waiting._warm.launched, _WAIT_S)
        assert is_ready(waiting._warm.launched.status_seen)
        async with pool.lease("a", session.id) as box:
            assert box.prelaunched
            assert await _sh(box, "cat in.txt; cat /box/in.txt; pwd", settings) == b"from the host\n" * 2 + b"/box\n"
            assert not box.prelaunched  # the run used it: it did not start cold
        async with pool.lease("b") as plain:  # the box's own workdir never saw the session's files
            assert await _sh(plain, "ls -A /box", settings) == b""


async def test_a_gvisor_sessions_files_survive_between_runs(sandbox: Sandbox, settings: Settings) -> None:
    """gVisor's sandbox holds its workdir open: a session's run there starts cold, with the session's files."""
    sandbox.check_isolation("gvisor")
    async with _started_pool(sandbox, 1, isolation="gvisor", prelaunch_binds=_no_binds) as pool:
        session = await pool.create_session("a")
        async with pool.lease("a", session.id) as box:
            await _sh(box, "echo kept > /box/kept.txt", settings)
        async with pool.lease("b") as plain:  # the box's own workdir never saw the session's files
            assert await _sh(plain, "test -e /box/kept.txt || echo clean", settings) == b"clean\n"
        async with pool.lease("a", session.id) as box:
            assert await _sh(box, "cat kept.txt; cat /box/kept.txt", settings) == b"kept\nkept\n"


async def test_a_full_session_workdir_is_enospc_to_the_program(sandbox: Sandbox, settings: Settings) -> None:
    async with _started_pool(sandbox, 1) as pool:
        session = await pool.create_session("a")
        quota = sandbox.settings.server.session_disk_bytes
        async with pool.lease("a", session.id) as box:
            chunk = 1024 * 1024  # under the run's file size limit: the quota is what stops it
            script = f"for i in $(seq {quota // chunk + 2}); do head -c {chunk} /dev/zero > /box/f$i; done"
            result = await run_in(box, ["/bin/sh", "-c", script], settings.run_defaults)
        assert b"No space left on device" in result.stderr, result
        assert session.usage().bytes_used <= quota


async def test_another_tenant_cannot_find_use_or_end_a_session(sandbox: Sandbox) -> None:
    async with _started_pool(sandbox, 1) as pool:
        session = await pool.create_session("a")
        with pytest.raises(SessionNotFound):
            pool.get_session("b", session.id)
        with pytest.raises(SessionNotFound):
            async with pool.lease("b", session.id):
                pytest.fail("leased another tenant's session")
        with pytest.raises(SessionNotFound):
            await pool.end_session("b", session.id)
        assert pool.get_session("a", session.id) is session
        assert pool.session_count == 1


async def test_ending_a_session_frees_its_workdir(sandbox: Sandbox, settings: Settings) -> None:
    async with _started_pool(sandbox, 1) as pool:
        session = await pool.create_session("a")
        async with pool.lease("a", session.id) as box:
            await _sh(box, "echo private > /box/private.txt", settings)
        assert not _freed(session)
        assert (_files(session) / "private.txt").read_text() == "private\n"
        await pool.end_session("a", session.id)
        assert pool.session_count == 0
        assert _freed(session)
        with pytest.raises(SessionNotFound):
            pool.get_session("a", session.id)
        with pytest.raises(SessionNotFound):
            await pool.end_session("a", session.id)


async def test_max_sessions_is_enforced(sandbox: Sandbox) -> None:
    async with _started_pool(sandbox, 2, max_sessions=1) as pool:
        first = await pool.create_session("a")
        with pytest.raises(AtCapacity) as refused:
            await pool.create_session("b")
        assert refused.value.retry_after_s > 0
        await pool.end_session("a", first.id)
        second = await pool.create_session("b")
        assert pool.get_session("b", second.id) is second


async def test_an_adopted_session_keeps_its_id(sandbox: Sandbox, settings: Settings) -> None:
    """Distributed mode: a session named elsewhere gets a workdir here when its first job arrives."""
    async with _started_pool(sandbox, 1, max_sessions=1) as pool:
        assert pool.session_room
        assert not pool.has_session("a", "named-elsewhere")
        async with pool.lease("x"):  # every box busy: adopting needs none
            session = await _within(pool.adopt_session("a", "named-elsewhere", expires_in_s=60))
        assert session.id == "named-elsewhere"
        assert pool.has_session("a", "named-elsewhere")
        assert not pool.has_session("b", "named-elsewhere")
        assert pool.session_keys() == [("a", "named-elsewhere")]
        assert await pool.adopt_session("a", "named-elsewhere", expires_in_s=60) is session  # already here
        async with pool.lease("a", "named-elsewhere") as box:
            await _sh(box, "echo kept > /box/kept.txt", settings)
        assert not pool.session_room
        with pytest.raises(AtCapacity):
            await pool.adopt_session("b", "another", expires_in_s=60)
        await pool.end_session("a", "named-elsewhere")
        assert pool.session_room
        assert pool.session_keys() == []


# ------------------------------------------------------------------ expiry


async def test_an_idle_session_expires_by_itself_and_frees_its_disk(sandbox: Sandbox) -> None:
    async with _started_pool(sandbox, 1, session_ttl_s=0.3, session_idle_s=0.2) as pool:
        session = await pool.create_session("a")
        (_files(session) / "left.txt").write_bytes(b"x" * 65536)
        assert session.usage().bytes_used >= 65536
        await _eventually(lambda: pool.session_count == 0 and _freed(session))
        with pytest.raises(SessionNotFound):
            pool.get_session("a", session.id)


async def test_a_runs_end_does_not_make_the_expiry_task_look_over_every_session(sandbox: Sandbox) -> None:
    """A run only pushes its session's deadline later: with many idle sessions, no look over all per run."""
    clock = _FakeClock()
    async with _started_pool(sandbox, 1, session_ttl_s=30.0, session_idle_s=10.0, clock=clock) as pool:
        sessions = [await pool.create_session("a") for _ in range(5)]
        for _ in range(5):
            await asyncio.sleep(0)  # the looks the creations asked for
        looks = pool.sessions.looks
        clock.at(1.0)
        for _ in range(3):
            async with pool.lease("a", sessions[-1].id):
                pass
            await asyncio.sleep(0)
        assert pool.sessions.looks == looks
        # A run that ends past its session's absolute expiry still wakes it: the session goes at once.
        for other in sessions[1:]:
            await pool.end_session("a", other.id)
        async with pool.lease("a", sessions[0].id):
            await _expiry_pass(pool)  # as its timer would: it finds only a running session, nothing to sleep to
            clock.at(31.0)
        await _eventually(lambda: pool.session_count == 0)


async def test_idle_expiry_is_pushed_back_by_use(sandbox: Sandbox) -> None:
    clock = _FakeClock()
    async with _started_pool(sandbox, 1, session_ttl_s=30.0, session_idle_s=0.2, clock=clock) as pool:
        session = await pool.create_session("a")
        clock.at(0.15)
        async with pool.lease("a", session.id):
            pass
        clock.at(0.3)  # past the first idle deadline (0.2), before the pushed one (0.35)
        assert pool.get_session("a", session.id) is session
        await _expiry_pass(pool)
        assert pool.session_count == 1
        clock.at(0.4)
        with pytest.raises(SessionNotFound):
            pool.get_session("a", session.id)
        await _eventually(lambda: pool.session_count == 0)


async def test_the_absolute_ttl_ends_a_session_in_regular_use(sandbox: Sandbox) -> None:
    clock = _FakeClock()
    async with _started_pool(sandbox, 1, session_ttl_s=0.3, session_idle_s=0.2, clock=clock) as pool:
        session = await pool.create_session("a")
        for at in (0.15, 0.28):
            clock.at(at)
            async with pool.lease("a", session.id):
                pass
        clock.at(0.31)  # idle only since 0.28, but 0.3 after creation
        with pytest.raises(SessionNotFound):
            pool.get_session("a", session.id)
        await _eventually(lambda: pool.session_count == 0)


async def test_a_session_in_use_is_not_expired_mid_run(sandbox: Sandbox, settings: Settings) -> None:
    async with _started_pool(sandbox, 1, session_ttl_s=0.3, session_idle_s=0.2) as pool:
        session = await pool.create_session("a")
        async with pool.lease("a", session.id) as box:
            # The run outlasts both the idle period and the TTL.
            out = await _sh(box, "echo mine > /box/mine.txt; sleep 0.6; cat /box/mine.txt", settings)
            assert out == b"mine\n"
            assert pool.session_count == 1
            assert box.read_file("mine.txt", 100) == b"mine\n"
        await _eventually(lambda: pool.session_count == 0 and pool.available == 1)


async def test_the_expiry_task_sleeps_while_an_overdue_session_runs(sandbox: Sandbox, settings: Settings) -> None:
    clock = _FakeClock()
    async with _started_pool(sandbox, 1, session_ttl_s=0.3, session_idle_s=0.2, clock=clock) as pool:
        session = await pool.create_session("a")
        async with pool.lease("a", session.id) as box:
            clock.at(1.0)  # overdue, but running: nothing to do until the run ends
            await _expiry_pass(pool)
            reads = clock.reads
            await _sh(box, "sleep 0.2", settings)
            # A sleeping task reads the clock a few times at most; a spinning one, thousands.
            assert clock.reads - reads < 20, f"the expiry task read the clock {clock.reads - reads} times"


# ----------------------------------------------------------- close, prelaunch


async def test_close_releases_every_box_and_fails_pending_waiters(sandbox: Sandbox) -> None:
    pool = BoxPool(sandbox, 2, max_waiting=4, max_sessions=2, prelaunch_binds=_no_binds)
    await pool.start()
    try:
        session = await pool.create_session("a")
        async with contextlib.AsyncExitStack() as held:
            boxes = [await held.enter_async_context(pool.lease(t)) for t in ("a", "b")]  # leases have to wait
            indexes = [box.slot.index for box in boxes]
            for index in indexes:  # a mounted workdir each
                assert hostfs.mounts_below(sandbox.boxes_dir / str(index))
            granted: list[str] = []
            waiters = [await _enqueue(pool, _record(pool, t, t, granted)) for t in ("c", "d")]
            await pool.close()
        for waiter in waiters:
            with pytest.raises(AtCapacity):
                async with asyncio.timeout(_WAIT_S):
                    await waiter
        assert granted == []
        assert pool.session_count == 0
        assert _freed(session)
        assert pool.available == 0
        cleanliness = [_slot_is_clean(sandbox, index) for index in indexes]
        assert False not in cleanliness, cleanliness
        with pytest.raises(AtCapacity):
            async with pool.lease("e"):
                pytest.fail("leased from a closed pool")
    finally:
        await pool.close()  # idempotent; only matters if an assertion failed above


async def test_a_lease_ending_after_close_leaves_nothing_mounted(sandbox: Sandbox) -> None:
    pool = BoxPool(sandbox, 1, max_waiting=1)
    await pool.start()
    try:
        async with pool.lease("a") as box:
            index = box.slot.index
            await pool.close()  # a drain that gave up on this run, say
            assert _slot_is_clean(sandbox, index) is not False
        assert _slot_is_clean(sandbox, index) is not False
    finally:
        await pool.close()
        sandbox.sweep_stale()  # should this regress: leave no mount to the next test


async def test_free_boxes_wait_with_their_next_jail_launched(sandbox: Sandbox, settings: Settings) -> None:
    async with _started_pool(sandbox, 2, max_sessions=1, prelaunch_binds=_no_binds) as pool:
        async with pool.lease("a") as one, pool.lease("a") as two:
            assert one.prelaunched  # since start
            assert two.prelaunched
            await _sh(one, "true", settings)
            assert not one.prelaunched  # used up by the run
        assert pool.available == 2
        async with pool.lease("a") as one, pool.lease("a") as two:
            assert one.prelaunched  # relaunched when the lease ended, reset or not used
            assert two.prelaunched
        session = await pool.create_session("a")
        async with pool.lease("a", session.id) as box:
            await _sh(box, "true", settings)
            assert not box.prelaunched
        assert box.prelaunched  # a session's box too, between its runs


async def test_without_prelaunch_binds_nothing_is_launched_ahead(sandbox: Sandbox) -> None:
    async with _started_pool(sandbox, 1) as pool, pool.lease("a") as box:
        assert not box.prelaunched


# ------------------------------------------------------------ box lifecycle races


def test_a_reset_in_flight_ends_before_close_gives_the_slot_away(sandbox: Sandbox, monkeypatch: Any) -> None:
    """A pool closing while a box's reset still runs in its thread (a cancelled give-back keeps running there)
    must not let that reset mount over the slot's next holder: close waits for it, and the next box keeps
    its files. Without the box's lifecycle lock, the late reset hid the next run's sources ("open *.go")."""
    box = sandbox.open_box()
    entered, resume = threading.Event(), threading.Event()
    real_prepare = Box.prepare

    def held_prepare(self: Box) -> None:
        if self is box:
            entered.set()
            resume.wait(_WAIT_S)
        real_prepare(self)

    monkeypatch.setattr(Box, "prepare", held_prepare)
    resetting = threading.Thread(target=box.reset)
    resetting.start()
    assert entered.wait(_WAIT_S)
    closing = threading.Thread(target=box.close)
    closing.start()
    closing.join(1.0)  # with the lock it waits for the reset; without, it is done by now
    successor: Box | None = None
    try:
        if not closing.is_alive():
            successor = sandbox.open_box(box.slot.index)
            successor.write_file("keep.txt", b"mine")
        resume.set()
        resetting.join(_WAIT_S)
        closing.join(_WAIT_S)
        assert not resetting.is_alive() and not closing.is_alive()
        if successor is None:
            successor = sandbox.open_box(box.slot.index)
            successor.write_file("keep.txt", b"mine")
        assert successor.read_file("keep.txt", 100) == b"mine"
    finally:
        resume.set()
        if successor is not None:
            successor.close()
