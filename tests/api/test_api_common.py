"""api/common/core.py: the submit-and-follow every door calls, tested on its own over a real Service."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import pytest

from sandlot.api.common.auth import Authenticator, AuthError, Principal, bearer_token
from sandlot.api.common.core import SHUTTING_DOWN, Core
from sandlot.broker import TaskSpec
from sandlot.config import ApiKey
from sandlot.errors import RejectedError, Unavailable
from sandlot.models import ExitEvent, OutputEvent, SourceFile, Status
from sandlot.requests import new_task_id
from tests.api.http.test_http import running_service, wait_running

_BOUND_S = 60.0  # a guard against a hang, never a pace
_SLEEPER = b"import time\nprint('started', flush=True)\ntime.sleep(60)\n"
_KEY = ApiKey(key="k-one", tenant="alice", max_concurrent=1)


def _spec(code: bytes, tenant: str = "alice") -> TaskSpec:
    return TaskSpec(id=new_task_id(), tenant=tenant, language="python", files=(SourceFile("main.py", code),))


async def test_a_follower_that_stops_before_the_exit_cancels_the_run() -> None:
    async with running_service(api_keys=(_KEY,)) as service:
        core = Core(service, Authenticator(service.server.api_keys))
        principal = core.auth.authenticate("k-one")
        spec = await core.submit(principal, _spec(_SLEEPER), waits=True)
        async with asyncio.timeout(_BOUND_S):
            async with contextlib.aclosing(core.follow(spec.tenant, spec.id)) as events:
                async for event in events:
                    if isinstance(event, OutputEvent) and b"started" in event.data:
                        break  # the reader leaves mid-run: aclosing closes the follow
            exit_event = await core.wait_exit(spec.tenant, spec.id)
        assert exit_event is not None
        assert exit_event.result.status is Status.SIGNALED
        assert exit_event.result.message == "cancelled by request"
        assert not await core.still_running(spec.tenant, spec.id)
        # The key's one slot was freed with its task: the next submit is admitted.
        again = await core.submit(principal, _spec(b"print('again')\n"))
        done = await core.wait_exit(again.tenant, again.id)
        assert done is not None and done.result.stdout == b"again\n"


async def test_the_quota_slot_is_held_while_the_task_runs() -> None:
    async with running_service(api_keys=(_KEY,)) as service:
        core = Core(service, Authenticator(service.server.api_keys))
        principal = core.auth.authenticate("k-one")
        spec = await core.submit(principal, _spec(_SLEEPER))
        async with asyncio.timeout(_BOUND_S):
            await wait_running(service, spec.tenant, spec.id)
        assert await core.still_running(spec.tenant, spec.id)
        with pytest.raises(AuthError) as refused:
            await core.submit(principal, _spec(b"print(1)\n"))
        assert refused.value.status == 429
        await core.cancel(spec.tenant, spec.id)
        async with asyncio.timeout(_BOUND_S):
            assert await core.wait_exit(spec.tenant, spec.id) is not None


async def test_collect_gives_every_event_through_the_exit_and_nothing_for_an_unknown_task() -> None:
    async with running_service() as service:
        core = Core(service, Authenticator(()))
        spec = await core.submit(Principal("public"), _spec(b"print('hi')\n", tenant="public"))
        async with asyncio.timeout(_BOUND_S):
            events = await core.collect(spec.tenant, spec.id)
            assert events is not None and isinstance(events[-1], ExitEvent)
            assert b"".join(e.data for e in events if isinstance(e, OutputEvent)) == b"hi\n"
            assert await core.collect("public", new_task_id()) is None
            assert await core.wait_exit("public", new_task_id()) is None


async def test_a_bad_spec_is_refused_before_the_quota_and_a_draining_server_refuses_the_rest() -> None:
    async with running_service(api_keys=(_KEY,)) as service:
        core = Core(service, Authenticator(service.server.api_keys))
        principal = core.auth.authenticate("k-one")
        with pytest.raises(RejectedError):
            await core.submit(principal, dataclasses.replace(_spec(b""), language="cobol"))
        service.accepting = False
        with pytest.raises(Unavailable, match=SHUTTING_DOWN):
            await core.submit(principal, _spec(b"print(1)\n"))
        service.accepting = True
        # Neither refusal kept the key's one slot.
        spec = await core.submit(principal, _spec(b"print(1)\n"))
        async with asyncio.timeout(_BOUND_S):
            assert await core.wait_exit(spec.tenant, spec.id) is not None


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer k", "k"),
        ("bearer  k ", "k"),
        (" Bearer k", "k"),
        ("Basic k", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token
