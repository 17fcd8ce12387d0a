"""Pieces of service.py that need no sandbox (pure: runs without root)."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from sandlot.service import stop_on_signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_stop_on_signals_sets_the_event_and_removes_its_handlers_after(sig: signal.Signals) -> None:
    with stop_on_signals() as stop:
        assert not stop.is_set()
        os.kill(os.getpid(), sig)
        await asyncio.wait_for(stop.wait(), timeout=30)  # delivered through the loop's wakeup fd
    # Python's default handling is back (asyncio's remove_signal_handler restores it, not the Runner's).
    assert signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler)
