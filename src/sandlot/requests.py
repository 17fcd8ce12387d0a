"""Door-neutral parsing of an execution request into a TaskSpec.

HTTP JSON, the WebSocket's first message and the MCP tools all send the same
shape; every mistake is a RejectedError naming the field, never a traceback.

    {"language": "python", "code": "print(1)"            # or "files": [{name, content, encoding}]
     "stdin": "", "stdin_encoding": "utf8",               # or "base64": stdin is any bytes
     "args": [], "limits": {...}, "compile_limits": {...},
     "session_id": null, "isolation": "gvisor", "commands": [], "fetch_files": [],
     "environment": "NAME"}                                # run in that environment (sandlot env list)
"""

from __future__ import annotations

import base64
import binascii
import secrets
import threading
from collections.abc import Mapping
from typing import Any

from sandlot.broker import TaskSpec
from sandlot.config import LimitRequest
from sandlot.errors import RejectedError
from sandlot.models import SourceFile

_FIELDS = {
    "language",
    "code",
    "files",
    "stdin",
    "stdin_encoding",
    "args",
    "limits",
    "compile_limits",
    "session_id",
    "isolation",
    "commands",
    "fetch_files",
    "environment",
}


_ID_BYTES = 16  # 128 random bits: ids are not guessable, and never collide
_IDS_PER_READ = 256
_random = bytearray()
_random_lock = threading.Lock()


def new_task_id() -> str:
    """128 bits from the OS's CSPRNG, as hex; read for 256 ids at a time (a getrandom call per id
    was a visible share of an execute's cost)."""
    with _random_lock:
        if not _random:
            _random.extend(secrets.token_bytes(_ID_BYTES * _IDS_PER_READ))
        chunk = _random[:_ID_BYTES]
        del _random[:_ID_BYTES]
    return chunk.hex()


def _str(data: Mapping[str, Any], key: str, default: str | None = None) -> str | None:
    value = data.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RejectedError(f"{key}: must be a string", field=key)
    return value


def _str_list(data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key)
    if not value:  # absent, null or empty, as most requests have it
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RejectedError(f"{key}: must be a list of strings", field=key)
    return tuple(value)


def decode_content(content: str, encoding: object, *, where: str = "") -> bytes:
    """A file's content as sent in JSON: utf8 text or base64; ``where`` prefixes the field names."""
    if encoding in ("utf8", "utf-8"):
        return content.encode()
    if encoding == "base64":
        try:
            return base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RejectedError(f"{where}content: invalid base64", field=f"{where}content") from exc
    raise RejectedError(f"{where}encoding: must be utf8 or base64", field=f"{where}encoding")


def _files(raw: Any) -> tuple[SourceFile, ...]:
    if not isinstance(raw, list) or not raw:
        raise RejectedError("files: must be a non-empty list", field="files")
    files: list[SourceFile] = []
    for i, item in enumerate(raw):
        where = f"files[{i}]"
        if not isinstance(item, dict):
            raise RejectedError(f"{where}: must be an object", field=where)
        name = item.get("name")
        content = item.get("content")
        encoding = item.get("encoding", "utf8")
        if not isinstance(name, str) or not name:
            raise RejectedError(f"{where}.name: must be a non-empty string", field=f"{where}.name")
        if not isinstance(content, str):
            raise RejectedError(f"{where}.content: must be a string", field=f"{where}.content")
        files.append(SourceFile(name, decode_content(content, encoding, where=f"{where}.")))
    # The file named main (any extension), else the first, is the program.
    main = next((i for i, f in enumerate(files) if f.name.rsplit(".", 1)[0] == "main"), 0)
    files.insert(0, files.pop(main))
    return tuple(files)


def parse_execution(
    data: Any,
    *,
    tenant: str,
    default_language: str | None = None,
    default_isolation: str = "",
    interactive: bool = False,
) -> TaskSpec:
    if not isinstance(data, dict):
        raise RejectedError("the request body must be a JSON object", field="body")
    unknown = data.keys() - _FIELDS
    if unknown:
        first = min(unknown)
        raise RejectedError(f"{first}: unknown field", field=first)
    language = _str(data, "language", default_language)
    if not language and data.get("session_id") is None:
        # A cell of a stateful session may leave it out (the session's); ``Service.validate`` checks.
        raise RejectedError("language: required", field="language")
    code = _str(data, "code")
    if code is not None and data.get("files") is not None:
        raise RejectedError("code: give either code or files, not both", field="code")
    if code is not None:
        files: tuple[SourceFile, ...] = (SourceFile("main", code.encode()),)
        user_file_name = None
    elif data.get("files") is not None:
        files = _files(data["files"])
        user_file_name = files[0].name
    else:
        raise RejectedError("code: required (or files)", field="code")
    stdin = _str(data, "stdin", "") or ""
    stdin_encoding = data.get("stdin_encoding", "utf8")
    if stdin_encoding not in ("utf8", "utf-8", "base64"):
        raise RejectedError("stdin_encoding: must be utf8 or base64", field="stdin_encoding")
    try:
        stdin_bytes = decode_content(stdin, stdin_encoding)
    except RejectedError as exc:
        raise RejectedError("stdin: invalid base64", field="stdin") from exc
    limits = data.get("limits")
    compile_limits = data.get("compile_limits")
    for key, value in (("limits", limits), ("compile_limits", compile_limits)):
        if value is not None and not isinstance(value, dict):
            raise RejectedError(f"{key}: must be an object", field=key)
    return TaskSpec(
        id=new_task_id(),
        tenant=tenant,
        language=language or "",
        files=files,
        stdin=stdin_bytes,
        args=_str_list(data, "args"),
        limits=LimitRequest.from_mapping(limits, where="limits") if limits else None,
        compile_limits=LimitRequest.from_mapping(compile_limits, where="compile_limits") if compile_limits else None,
        session_id=_str(data, "session_id"),
        isolation=_str(data, "isolation", default_isolation) or default_isolation,
        commands=_str_list(data, "commands"),
        fetch_files=_str_list(data, "fetch_files"),
        interactive=interactive,
        user_file_name=user_file_name,
        environment=_str(data, "environment", "") or "",
    )
