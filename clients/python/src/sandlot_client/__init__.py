"""sandlot-client: run code on a sandlot server from Python, sync or async. Depends only on httpx.

    from sandlot_client import Sandlot

    with Sandlot("http://127.0.0.1:8080", api_key=None) as client:
        result = client.run("python", "print(1)", on_stdout=print)
        with client.session() as s:
            s.files.write("data.csv", "a,b\\n1,2\\n")
            s.run("print(open('data.csv').read())")

Theory of operation
-------------------
A run is queued (``POST /api/v1/execute``) and followed through its Server-Sent Events, so output
reaches ``on_stdout``/``on_stderr`` while the program runs, and the ``exit`` event carries the
``Result``. A session is ``POST /api/v1/sessions`` and ``DELETE`` at the end; its files are the
session file routes; a stateful session's cells are runs
naming the session (no language: the session's), whose exit event adds ``value``. ``_wire`` builds every
request and checks every answer, ``_sse`` follows event streams, for both clients (``_sync``,
``_async``), which only do the I/O.

A program that fails is a Result (its ``status``); the server refusing or failing to serve a
request is a ``SandlotError`` subclass: Rejected, Unauthorized, NotFound, Conflict, Busy (with
``retry_after``) or Unavailable.
"""

from sandlot_client._async import AsyncSandlot, AsyncSession, AsyncSessionFiles, AsyncTask
from sandlot_client._errors import Busy, Conflict, NotFound, Rejected, SandlotError, Unauthorized, Unavailable
from sandlot_client._sync import Sandlot, Session, SessionFiles, Task
from sandlot_client._types import FileInfo, Limits, Output, Result, SessionInfo, Status, TaskState
from sandlot_client._version import __version__

__all__ = [
    "AsyncSandlot",
    "AsyncSession",
    "AsyncSessionFiles",
    "AsyncTask",
    "Busy",
    "Conflict",
    "FileInfo",
    "Limits",
    "NotFound",
    "Output",
    "Rejected",
    "Result",
    "Sandlot",
    "SandlotError",
    "Session",
    "SessionFiles",
    "SessionInfo",
    "Status",
    "Task",
    "TaskState",
    "Unauthorized",
    "Unavailable",
    "__version__",
]
