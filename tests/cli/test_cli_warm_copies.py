"""The warm path's copies stay equal to what they copy (pure: runs without root).

``sandlot.cli_warm`` and ``sandlot.cli_finish`` may import nothing of the server,
the settings or the models (every import is paid on each call), so they keep
their own copies of a few names. Each copy is checked here against its original.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sandlot import cli_finish, cli_warm
from sandlot.api import server
from sandlot.api.common import render
from sandlot.config import Settings
from sandlot.models import Result


def test_the_socket_is_where_the_server_puts_it() -> None:
    assert cli_warm.SOCKET_NAME == server.SOCKET_NAME
    assert Path(cli_warm.DEFAULT_RUN_DIR) == Settings().run_dir


def test_the_result_fields_are_results() -> None:
    assert tuple(field.name for field in dataclasses.fields(Result)) == cli_finish.RESULT_KEYS
    output = tuple(field.name for field in dataclasses.fields(Result) if field.type == "bytes")
    assert cli_warm._OUTPUT_FIELDS == output == render._OUTPUT_FIELDS
