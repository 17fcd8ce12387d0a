"""The MCP tools' definitions: descriptions, input and output JSON Schemas, annotations.

Written by hand rather than derived from signatures: they are the contract a
model reads, so each argument says its unit and the limits say their default
and maximum (from the settings). Arguments are checked against the names here
(``tools``); the output schemas describe the structured content, which
clients validate.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mcp import types

from sandlot.config import Settings
from sandlot.models import Result, Status

_MIB = 1024 * 1024

_SESSION_ID = {"type": "string", "description": "A session id from create_session."}
_PATH = {"type": "string", "description": "A path relative to the session's workdir, e.g. data/input.txt."}


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


def _input_schemas(settings: Settings) -> dict[str, dict[str, Any]]:
    defaults, maxima = settings.run_defaults, settings.run_maxima
    return {
        "run_code": _object(
            {
                "language": {"type": "string", "description": "A language name or alias from list_languages."},
                "code": {"type": "string", "description": "The program's source code."},
                "stdin": {"type": "string", "description": "Text fed to the program's standard input."},
                "args": {"type": "array", "items": {"type": "string"}, "description": "Command-line arguments."},
                "environment": {
                    "type": "string",
                    "description": "Run in this environment (GET /api/v1/environments) instead of the host's.",
                },
                "session_id": {
                    **_SESSION_ID,
                    "description": "Run in this session's workdir, where files written earlier are found.",
                },
                "time_limit": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "description": f"CPU time limit in seconds (default {defaults.time_limit_s:g}, "
                    f"at most {maxima.time_limit_s:g}).",
                },
                "memory_limit": {
                    "type": "integer",
                    "exclusiveMinimum": 0,
                    "description": f"Memory limit in MB (default {defaults.memory_limit_bytes // _MIB}, "
                    f"at most {maxima.memory_limit_bytes // _MIB}).",
                },
            },
            ("language", "code"),
        ),
        "judge": _object(
            {
                "language": {"type": "string", "description": "A language name or alias from list_languages."},
                "code": {"type": "string", "description": "The solution's source code."},
                "tests": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": settings.judge_max_tests,
                    "items": _object(
                        {"name": _STRING, "stdin": _STRING, "expected_output": _STRING},
                    ),
                    "description": "Each test's input and the expected output (compiled once, each run fresh).",
                },
                "checker": {
                    "description": "exact (default), lines, tokens, float:EPS, or a checker program {language, "
                    "code} run with input.txt output.txt answer.txt, answering by testlib's exit codes",
                },
                "interactor": _object({"language": _STRING, "code": _STRING}, ("language", "code")),
                "stop_on_first_failure": {"type": "boolean"},
                "time_limit": {"type": "number", "exclusiveMinimum": 0, "description": "CPU seconds per test."},
                "memory_limit": {"type": "integer", "exclusiveMinimum": 0, "description": "MB per test."},
            },
            ("language", "code", "tests"),
        ),
        "list_languages": _object({}),
        "open_session": _object(
            {
                "language": {"type": "string", "default": "python", "description": "The interpreter: python."},
                "memory_limit": {
                    "type": "integer",
                    "exclusiveMinimum": 0,
                    "description": f"Memory limit in MB for the session's whole life (default "
                    f"{defaults.memory_limit_bytes // _MIB}, at most {maxima.memory_limit_bytes // _MIB}).",
                },
            }
        ),
        "close_session": _object({"session_id": _SESSION_ID}, ("session_id",)),
        "create_session": _object({}),
        "end_session": _object({"session_id": _SESSION_ID}, ("session_id",)),
        "write_file": _object(
            {
                "session_id": _SESSION_ID,
                "path": _PATH,
                "content": {"type": "string", "description": "The file's content, as text or base64."},
                "encoding": {"enum": ["utf8", "base64"], "default": "utf8", "description": "How content is encoded."},
            },
            ("session_id", "path", "content"),
        ),
        "read_file": _object({"session_id": _SESSION_ID, "path": _PATH}, ("session_id", "path")),
        "list_files": _object({"session_id": _SESSION_ID}, ("session_id",)),
    }


_STRING = {"type": "string"}
_RESULT_SCHEMA = {
    "type": "object",
    "properties": {
        "status": {"enum": [status.value for status in Status]},
        "exit_code": {"type": ["integer", "null"]},
        "signal": {"type": ["integer", "null"]},
        "stdout": _STRING,
        "stderr": _STRING,
        "compile_output": _STRING,
        "wall_time": {"type": "number", "description": "seconds"},
        "cpu_time": {"type": "number", "description": "seconds"},
        "memory_peak": {"type": "integer", "description": "bytes"},
        "truncated": {"type": "boolean"},
        "language": _STRING,
        "message": _STRING,
        "value": {
            "type": ["string", "null"],
            "description": "in a stateful session: the repr of the code's last expression (capped)",
        },
    },
    "required": [field.name for field in dataclasses.fields(Result)],  # every one, as Result.to_dict gives
}
_OPENED = {
    "type": "object",
    "properties": {
        "session_id": _STRING,
        "expires_in_s": {"type": "number"},
        "language": _STRING,
        "isolation": _STRING,
    },
    "required": ["session_id", "expires_in_s", "language", "isolation"],
}
_OUTPUT_SCHEMAS: dict[str, dict[str, Any]] = {
    "run_code": _RESULT_SCHEMA,
    "judge": {
        "type": "object",
        "properties": {
            "verdict": _STRING,
            "passed": {"type": "integer"},
            "total": {"type": "integer"},
            "max_time": {"type": "number"},
            "max_memory": {"type": "integer"},
            "first_failure": {"type": ["integer", "null"]},
            "compile_output": _STRING,
            "tests": {"type": "array", "items": {"type": "object"}},
        },
        "required": [
            "verdict",
            "passed",
            "total",
            "max_time",
            "max_memory",
            "first_failure",
            "compile_output",
            "tests",
        ],
    },
    "list_languages": {
        "type": "object",
        "properties": {
            "languages": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": _STRING,
                        "display_name": _STRING,
                        "version": _STRING,
                        "aliases": {"type": "array", "items": _STRING},
                        "extensions": {"type": "array", "items": _STRING},
                        "compiled": {"type": "boolean"},
                    },
                    "required": ["name", "display_name", "version", "aliases", "extensions", "compiled"],
                },
            }
        },
        "required": ["languages"],
    },
    "open_session": _OPENED,
    "close_session": {
        "type": "object",
        "properties": {"session_id": _STRING, "ended": {"type": "boolean"}},
        "required": ["session_id", "ended"],
    },
    "create_session": {
        "type": "object",
        "properties": {"session_id": _STRING, "expires_in_s": {"type": "number"}},
        "required": ["session_id", "expires_in_s"],
    },
    "end_session": {
        "type": "object",
        "properties": {"session_id": _STRING, "ended": {"type": "boolean"}},
        "required": ["session_id", "ended"],
    },
    "write_file": {
        "type": "object",
        "properties": {"path": _STRING, "size": {"type": "integer"}},
        "required": ["path", "size"],
    },
    "read_file": {
        "type": "object",
        "properties": {
            "path": _STRING,
            "size": {"type": "integer"},
            "encoding": {"enum": ["utf8", "base64"]},
            "content": _STRING,
        },
        "required": ["path", "size", "encoding", "content"],
    },
    "list_files": {
        "type": "object",
        "properties": {
            "files": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"path": _STRING, "size": {"type": "integer"}},
                    "required": ["path", "size"],
                },
            },
            "truncated": {"type": "boolean"},
        },
        "required": ["files", "truncated"],
    },
}
_DESCRIPTIONS = {
    "run_code": "Run a program in a fresh, isolated sandbox (no network) and return its result: status "
    "(ok, runtime_error, compile_error, timeout, memory_limit, ...), exit code, stdout, stderr, compiler output, "
    "times and peak memory. Output is also reported as progress while the program runs. Pass session_id to run "
    "in a session's workdir, next to the files written there.",
    "judge": "Judge a program against many tests, as an online judge does: compiled once, each test run in a "
    "fresh sandbox and checked (exact, lines, tokens, float tolerance, a custom checker, or an interactor). "
    "Returns the verdict (accepted, wrong_answer, timeout, ...), passed/total, and each test's verdict, time "
    "and memory.",
    "list_languages": "The languages run_code accepts, with their versions and aliases.",
    "open_session": "Open a stateful session: a Python interpreter kept for you. Pass its session_id to run_code "
    "and each call runs as a notebook cell: variables and imports stay for the next call, and the result's value "
    "is the repr of the code's last expression. A cell past its time limit is interrupted; the session lives on.",
    "close_session": "Close a session (stateful or not): its interpreter and files are gone.",
    "create_session": "Create a session: a workdir kept for you, whose files persist between run_code calls "
    "until end_session or expiry.",
    "end_session": "End a session and wipe its files.",
    "write_file": "Write a file into a session's workdir (text, or base64 for binary content).",
    "read_file": "Read a file from a session's workdir (text, or base64 when it is not UTF-8).",
    "list_files": "List the files in a session's workdir with their sizes.",
}
_READ_ONLY = frozenset({"list_languages", "read_file", "list_files"})


def tool_definitions(settings: Settings) -> list[types.Tool]:
    """Every tool: name, description, input and output schemas (limits described from settings), hints."""
    return [
        types.Tool(
            name=name,
            description=_DESCRIPTIONS[name],
            input_schema=schema,
            output_schema=_OUTPUT_SCHEMAS[name],
            annotations=types.ToolAnnotations(
                read_only_hint=name in _READ_ONLY,
                destructive_hint=name in ("end_session", "close_session"),
                open_world_hint=False,
            ),
        )
        for name, schema in _input_schemas(settings).items()
    ]
