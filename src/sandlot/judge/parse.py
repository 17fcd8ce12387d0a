"""Door-neutral parsing of a judge request into a TaskSpec (``TaskSpec.judge`` holds the JudgeSpec's JSON).

    {"language": "cpp", "code": "..." | "files": [...], "environment": "NAME",
     "limits": {...}, "compile_limits": {...}, "isolation": "jail",
     "tests": [{"name": "1", "stdin": "1 2\\n", "expected_output": "3\\n", "args": [], "limits": {...},
                "encoding": "utf8" | "base64"}],             # of stdin and expected_output
     "checker": "exact" | "lines" | "tokens" | "float:1e-6" | {"language": "python", "code": "..."},
     "interactor": {"language": "python", "code": "..."},
     "stop_on_first_failure": false}

Every mistake is a RejectedError naming the field; the bounds that need settings (how many tests, how
large) are checked by ``validate.prepare_judge``, which every door reaches through ``Service.validate``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from sandlot.broker import TaskSpec
from sandlot.config import LimitRequest
from sandlot.errors import RejectedError
from sandlot.judge.checkers import parse_builtin
from sandlot.judge.model import JudgeSpec, JudgeTest, Program
from sandlot.requests import decode_content, parse_execution

JUDGE_FIELDS = ("tests", "checker", "interactor", "stop_on_first_failure")
_NOT_WITH_JUDGE = ("stdin", "stdin_encoding", "args", "commands", "fetch_files", "session_id")
_TEST_FIELDS = {"name", "stdin", "expected_output", "args", "limits", "encoding"}


def parse_judge(data: Any, *, tenant: str, default_isolation: str = "") -> TaskSpec:
    if not isinstance(data, dict):
        raise RejectedError("the request body must be a JSON object", field="body")
    for key in _NOT_WITH_JUDGE:
        if key in data:
            raise RejectedError(f"{key}: not a judge request's field (a test has its own stdin and args)", field=key)
    run = {k: v for k, v in data.items() if k not in JUDGE_FIELDS}
    spec = parse_execution(run, tenant=tenant, default_isolation=default_isolation)
    return dataclasses.replace(spec, judge=parse_judge_fields(data).to_json())


def parse_judge_fields(data: Mapping[str, Any]) -> JudgeSpec:
    tests = data.get("tests")
    if not isinstance(tests, list) or not tests:
        raise RejectedError("tests: must be a non-empty list", field="tests")
    stop = data.get("stop_on_first_failure", False)
    if not isinstance(stop, bool):
        raise RejectedError("stop_on_first_failure: must be true or false", field="stop_on_first_failure")
    checker_data = data.get("checker", "exact")
    checker = parse_builtin(checker_data) if isinstance(checker_data, str) else _program(checker_data, "checker")
    interactor = None if data.get("interactor") is None else _program(data["interactor"], "interactor")
    if interactor is not None and "checker" in data:
        raise RejectedError("checker: an interactive problem's interactor is its checker", field="checker")
    return JudgeSpec(
        tests=tuple(_test(t, f"tests[{i}]") for i, t in enumerate(tests)),
        checker=checker,
        interactor=interactor,
        stop_on_first_failure=stop,
    )


def _program(data: Any, field: str) -> Program:
    if not isinstance(data, dict) or set(data) != {"language", "code"}:
        raise RejectedError(f"{field}: must be {{language, code}}", field=field)
    language, code = data["language"], data["code"]
    if not isinstance(language, str) or not language or not isinstance(code, str) or not code.strip():
        raise RejectedError(f"{field}: language and code must be non-empty strings", field=field)
    return Program(language, code)


def _test(data: Any, where: str) -> JudgeTest:
    if not isinstance(data, dict):
        raise RejectedError(f"{where}: must be an object", field=where)
    unknown = data.keys() - _TEST_FIELDS
    if unknown:
        raise RejectedError(f"{where}.{min(unknown)}: unknown field", field=f"{where}.{min(unknown)}")
    encoding = data.get("encoding", "utf8")

    def content(key: str) -> bytes | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise RejectedError(f"{where}.{key}: must be a string", field=f"{where}.{key}")
        return decode_content(value, encoding, where=f"{where}.")

    name = data.get("name", "")
    if not isinstance(name, str):
        raise RejectedError(f"{where}.name: must be a string", field=f"{where}.name")
    args = data.get("args") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise RejectedError(f"{where}.args: must be a list of strings", field=f"{where}.args")
    limits = data.get("limits")
    if limits is not None and not isinstance(limits, dict):
        raise RejectedError(f"{where}.limits: must be an object", field=f"{where}.limits")
    return JudgeTest(
        stdin=content("stdin") or b"",
        expected_output=content("expected_output"),
        name=name,
        args=tuple(args),
        limits=LimitRequest.from_mapping(limits, where=f"{where}.limits") if limits else None,
    )
