"""Redis replies to sandlot's types: stream entries, events, control messages (no I/O here)."""

from __future__ import annotations

import json
from typing import Any

from sandlot.broker import Control, TaskSpec, event_from_wire
from sandlot.models import Event, ExitEvent


def to_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def entries(raw: Any) -> list[tuple[str, dict[bytes, bytes]]]:
    """Stream entries as (id, fields); a deleted entry (XAUTOCLAIM's nil fields) has empty fields."""
    return [(to_str(entry_id), dict(fields or {})) for entry_id, fields in raw or ()]


def read_entries(reply: Any) -> list[tuple[str, dict[bytes, bytes]]]:
    """The entries of a one-stream XREAD/XREADGROUP reply (RESP2 list or RESP3 map), or none."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else [found for _, found in reply]
    return [entry for found in streams for entry in entries(found)]


def text(raw: dict[Any, Any]) -> dict[str, str]:
    return {to_str(k): to_str(v) for k, v in raw.items()}


def exit_of(fields: dict[str, str]) -> ExitEvent | None:
    """The stored exit event of a task's state hash, if it has one."""
    if "exit" not in fields:
        return None
    wire: dict[str, Any] = json.loads(fields["exit"])
    wire["seq"] = int(fields["exit_seq"])
    stored = event_from_wire(wire)
    assert isinstance(stored, ExitEvent)
    return stored


def spec_of(fields: dict[str, str]) -> TaskSpec | None:
    """The spec a task's state hash holds, or None if it is missing or unreadable."""
    try:
        return TaskSpec.from_json(fields["spec"])
    except (KeyError, ValueError, TypeError):
        return None


def event(fields: dict[bytes, bytes]) -> Event:
    wire: dict[str, Any] = json.loads(fields[b"event"])
    wire["seq"] = int(fields[b"seq"])  # the stamped seq, which may differ from the publisher's
    return event_from_wire(wire)


def control_message(fields: dict[bytes, bytes]) -> Control:
    kind = fields.get(b"kind", b"").decode()
    if kind not in ("stdin", "close_stdin", "signal", "cancel"):
        kind = "cancel"  # unreadable: the safe reading of a message nobody should have sent
    return Control(kind, fields.get(b"data", b""), int(fields.get(b"signal", b"0")))  # type: ignore[arg-type]
