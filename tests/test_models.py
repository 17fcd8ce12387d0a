"""models.py: the event and result types (pure: runs without root)."""

from __future__ import annotations

from sandlot.models import ExitEvent, Status, terminal_event


def test_terminal_event_carries_what_it_is_given_and_nothing_else() -> None:
    event = terminal_event(
        Status.INTERNAL_ERROR, "the server shut down during the run", language="python", stdout=b"so far", seq=3
    )
    assert isinstance(event, ExitEvent)
    assert (event.seq, event.stages, event.files) == (3, (), ())
    result = event.result
    assert (result.status, result.message, result.language) == (
        Status.INTERNAL_ERROR,
        "the server shut down during the run",
        "python",
    )
    assert (result.stdout, result.stderr, result.exit_code, result.signal) == (b"so far", b"", None, None)
    assert event.time > 0


def test_terminal_event_of_a_cancelled_task_names_its_signal() -> None:
    result = terminal_event(Status.SIGNALED, "cancelled before it started", language="c", signal=9).result
    assert (result.status, result.signal, result.wall_time) == (Status.SIGNALED, 9, 0.0)
