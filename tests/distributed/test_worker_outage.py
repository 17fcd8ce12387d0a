"""A Redis outage under a claimed job is no result of the program's: the job goes back and runs again.

A real Service (pool, worker) over a real redis-server; the broker is wrapped
so that one of its calls finds Redis unreachable at the worst moment (marking
the job running, or publishing its output mid-run), as a restart would. Before
the fix, each case stored an internal_error ("sandbox failure: ...") as the
job's result while Redis was back a moment later.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

import pytest

from sandlot.broker import Control, Presence
from sandlot.broker.redis import RedisBroker
from sandlot.errors import BrokerUnavailable
from sandlot.models import NOTICE_REQUEUED, Event, ExitEvent, NoticeEvent, OutputEvent, Status
from sandlot.requests import parse_execution
from tests.api.http.test_http import running_service, wait_done
from tests.nodes import RedisServer

TWO_LINES = "import time\nprint('one', flush=True)\ntime.sleep(0.3)\nprint('two')\n"


class _Outage(RedisBroker):
    """Redis 'unreachable' for the first ``times`` calls: of mark_running, or of publish from the first
    output event on (so with times=2 the requeued notice's first attempt fails too)."""

    def __init__(self, url: str, *, at: str, times: int) -> None:
        super().__init__(url, max_queued=16, claim_idle_ms=60_000)
        self.at = at
        self.times = times
        self.outages = 0

    def _outage(self, where: str) -> None:
        if self.at == where and self.outages < self.times:
            self.outages += 1
            raise BrokerUnavailable("redis is unreachable: injected by the test")

    async def mark_running(self, task_id: str) -> None:
        self._outage("mark_running")
        await super().mark_running(task_id)

    async def publish(self, task_id: str, event: Event) -> None:
        if isinstance(event, OutputEvent) or self.outages:
            self._outage("publish")
        await super().publish(task_id, event)


@pytest.mark.parametrize(("at", "times"), [("mark_running", 1), ("publish", 1), ("publish", 2)])
async def test_the_job_is_handed_back_and_runs_again(fresh_redis: RedisServer, at: str, times: int) -> None:
    broker = _Outage(fresh_redis.url, at=at, times=times)
    async with running_service(broker=broker, redis_url=fresh_redis.url) as service:
        spec = parse_execution({"language": "python", "code": TWO_LINES}, tenant="public")
        await service.broker.submit(service.validate(spec))
        exit_event = await wait_done(service, "public", spec.id)
        assert broker.outages == times
        assert (exit_event.result.status, exit_event.result.stdout) == (Status.OK, b"one\ntwo\n"), exit_event
        notices = [
            event.code async for event in service.broker.subscribe("public", spec.id) if isinstance(event, NoticeEvent)
        ]
        # Interrupted mid-run, the client is told it starts again; before the run, there is nothing to say.
        assert notices == ([NOTICE_REQUEUED] if at == "publish" else [])


PRESENCE_TTL_S = 0.9  # the worker's presence TTL here: the outage below outlasts it at once
WAIT_FOR_STDIN = "import sys\nprint('one', flush=True)\nsys.stdin.read()\nprint('two')\n"


class _PresenceOutage(RedisBroker):
    """The worker's presence finds Redis 'unreachable' from the run's first output until the run was cut off
    (its requeued notice); everything else reaches Redis, as when only the worker's presence is lost."""

    def __init__(self, url: str) -> None:
        super().__init__(url, max_queued=16, claim_idle_ms=60_000, presence_ttl_s=PRESENCE_TTL_S)
        self.output_seen = False
        self.cut_off = False

    async def publish(self, task_id: str, event: Event) -> None:
        if isinstance(event, NoticeEvent) and event.code == NOTICE_REQUEUED:
            self.cut_off = True
        await super().publish(task_id, event)
        self.output_seen |= isinstance(event, OutputEvent)

    async def presence(self, sessions: Sequence[tuple[str, str]], levels: Sequence[str] = ("jail",)) -> Presence:
        if self.output_seen and not self.cut_off:
            raise BrokerUnavailable("redis is unreachable: injected by the test")
        return await super().presence(sessions, levels)


async def test_a_worker_cut_off_past_its_presence_stops_the_run_and_hands_the_job_back(
    fresh_redis: RedisServer,
) -> None:
    broker = _PresenceOutage(fresh_redis.url)
    async with running_service(broker=broker, redis_url=fresh_redis.url) as service:
        spec = parse_execution({"language": "python", "code": WAIT_FOR_STDIN}, tenant="public")
        spec = dataclasses.replace(service.validate(spec), interactive=True)  # reads stdin until it is closed
        await service.broker.submit(spec)
        seen: list[str] = []
        text = ""  # output, by whole lines (a line may come in several chunks)
        async with asyncio.timeout(60):
            async for event in service.broker.subscribe("public", spec.id):
                if isinstance(event, NoticeEvent):
                    seen.append(f"<{event.code}>")
                    # The first run never ends by itself (it waits for stdin): only the cut-off stopped it.
                    await service.broker.control("public", spec.id, Control("close_stdin"))
                elif isinstance(event, OutputEvent):
                    *lines, text = (text + event.data.decode()).split("\n")
                    seen += [line + "\n" for line in lines]
                elif isinstance(event, ExitEvent):
                    seen.append(f"<exit {event.result.status.value}>")
        assert seen == ["one\n", "<requeued>", "one\n", "two\n", "<exit ok>"], seen
