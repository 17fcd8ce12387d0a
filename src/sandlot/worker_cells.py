"""A stateful session's cell on the worker: sent to the session's interpreter, its events published.

The worker has settled where the cell runs (its session's interpreter is in this
process: found in the embedded mode, bound and started if need be in the
distributed one) and marked the task running; ``run_cell`` streams the cell's
output through the broker as any run's and returns its exit event for the
worker to store. A door's cancel interrupts the cell, a signal is passed on to
it; the interpreter lives on either way.
"""

from __future__ import annotations

import asyncio
import contextlib

from sandlot.broker import Broker, TaskSpec
from sandlot.models import ExitEvent, Limits, OutputEvent
from sandlot.stateful.session import StatefulSession


async def run_cell(
    broker: Broker, spec: TaskSpec, session: StatefulSession, limits: Limits, output: dict[str, bytearray]
) -> ExitEvent | None:
    """Run the cell; its exit event (None if the interpreter gave none: the caller fails the task)."""
    follower = asyncio.create_task(_follow_controls(broker, spec.id, session))
    code = spec.files[0].content.decode("utf-8", "replace")
    ended: ExitEvent | None = None
    try:
        async with contextlib.aclosing(session.run_cell(code, spec.stdin, limits)) as events:
            async for event in events:
                if isinstance(event, ExitEvent):
                    ended = event
                    continue
                if isinstance(event, OutputEvent):
                    output[event.stream] += event.data
                await broker.publish(spec.id, event)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await follower
    return ended


async def _follow_controls(broker: Broker, task_id: str, session: StatefulSession) -> None:
    async for message in broker.controls(task_id):
        if message.kind == "cancel":
            session.cancel_cell()
        elif message.kind == "signal":
            session.signal_cell(message.signal)
