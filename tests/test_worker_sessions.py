"""SessionBoxes' bookkeeping (pure: runs without root).

The pool and the broker's session directory are stand-ins here: what is under
test is SessionBoxes' own record of which box generation it opened, not the
boxes (tests/distributed/test_distributed.py runs sessions on real workers).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

from sandlot.broker import Distributed, SessionBinding, TaskSpec
from sandlot.errors import SessionNotFound
from sandlot.models import SourceFile
from sandlot.pool import BoxPool
from sandlot.worker_sessions import SessionBoxes, SessionKey


@dataclass
class _Pool:
    """What SessionBoxes asks of a pool: which session boxes it holds, opening and ending one."""

    boxes: dict[SessionKey, int] = field(default_factory=dict)  # session -> which opening of a box it is
    opened: int = 0
    ended: list[tuple[SessionKey, int]] = field(default_factory=list)
    max_sessions: int = 10_000
    session_room: bool = True

    def has_session(self, tenant: str, session_id: str) -> bool:
        return (tenant, session_id) in self.boxes

    def session_keys(self) -> list[SessionKey]:
        return list(self.boxes)

    async def adopt_session(self, tenant: str, session_id: str, *, expires_in_s: float) -> None:
        self.opened += 1
        self.boxes[(tenant, session_id)] = self.opened

    async def end_session(self, tenant: str, session_id: str) -> None:
        box = self.boxes.pop((tenant, session_id), None)
        if box is None:
            raise SessionNotFound(session_id)
        self.ended.append(((tenant, session_id), box))


class _Directory:
    async def bind(self, tenant: str, session_id: str, *, have_box: bool, room: bool) -> SessionBinding:
        return SessionBinding("ready" if have_box else "new", expires_in_s=600.0)


@dataclass
class _Broker:
    sessions: _Directory = field(default_factory=_Directory)


def _boxes(pool: _Pool) -> SessionBoxes:
    return SessionBoxes({"jail": cast(BoxPool, pool)}, "jail")


def _spec(tenant: str) -> TaskSpec:
    return TaskSpec(id="t", tenant=tenant, language="python", files=(SourceFile("main", b""),))


async def _bind(boxes: SessionBoxes, tenant: str, session_id: str) -> str:
    broker = cast(Distributed, cast(Any, _Broker()))
    return await boxes.bind(broker, _spec(tenant), session_id)


async def test_the_generations_of_sessions_whose_box_is_gone_are_forgotten() -> None:
    pool = _Pool()
    boxes = _boxes(pool)
    for i in range(200):
        assert await _bind(boxes, "t", f"s{i}") == "here"
    assert len(boxes.held()) == 200
    for i in range(150):  # the pool ended them itself (idle or past their TTL)
        await pool.end_session("t", f"s{i}")
    assert sorted(boxes.held()) == [("t", f"s{i}") for i in range(150, 200)]
    # The record of every session ever seen would grow with a long-lived worker's whole history.
    assert len(boxes._generations) == 50
    boxes.release(boxes.held(), owned=set())  # none is this worker's any more
    await asyncio.gather(*boxes._chores)
    assert boxes.held() == {}
    assert len(boxes._generations) == 0


async def test_a_release_decided_before_the_box_was_reopened_leaves_the_new_box() -> None:
    pool = _Pool()
    boxes = _boxes(pool)
    await _bind(boxes, "t", "s")
    looked = boxes.held()  # presence said: not this worker's (the session moved while it looked dead)
    await pool.end_session("t", "s")
    assert boxes.held() == {}  # its generation is forgotten with its box
    await _bind(boxes, "t", "s")  # and back: a fresh box, opening number 2
    boxes.release(looked, owned=set())
    await asyncio.gather(*boxes._chores)
    assert pool.boxes == {("t", "s"): 2}
    assert pool.ended == [(("t", "s"), 1)]
