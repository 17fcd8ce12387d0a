"""Stateful sessions: an interpreter kept alive in a pinned box, run cell by cell (see ``sessions.py``)."""

from sandlot.stateful.session import StatefulSession
from sandlot.stateful.sessions import StatefulInfo, StatefulSessions

__all__ = ["StatefulInfo", "StatefulSession", "StatefulSessions"]
