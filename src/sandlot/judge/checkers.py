"""Checkers: does a program's output answer the test? Built-in comparisons, and a custom checker's exit code.

Built-ins (pure functions of the output and the expected answer):

- ``exact``: byte for byte. Same tokens but other whitespace: presentation_error.
- ``lines``: line by line, ignoring trailing whitespace on each line and trailing blank lines (and CR).
  Same tokens but other line breaks: presentation_error.
- ``tokens``: the whitespace-separated tokens.
- ``float:EPS``: tokens, numbers equal within an absolute or relative error of EPS, others exactly.

A custom checker answers by its exit code in testlib's convention (``verdict_of_exit``):
0 accepted, 1 wrong answer, 2 presentation error, anything else a judge failure (testlib's
``_fail`` is 3): never a wrong accepted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sandlot.errors import RejectedError
from sandlot.judge.model import BUILTIN_CHECKERS, Verdict
from sandlot.models import Result, Status

_MAX_COMMENT_CHARS = 400
_STATUS_VERDICTS = {
    Status.TIMEOUT: Verdict.TIMEOUT,
    Status.MEMORY_LIMIT: Verdict.MEMORY_LIMIT,
    Status.RUNTIME_ERROR: Verdict.RUNTIME_ERROR,
    Status.SIGNALED: Verdict.RUNTIME_ERROR,
    Status.OUTPUT_LIMIT: Verdict.OUTPUT_LIMIT,
}


@dataclass(frozen=True)
class Checked:
    verdict: Verdict
    comment: str = ""


def parse_builtin(name: str, *, field: str = "checker") -> str:
    """A built-in checker's name as given, checked (``float:EPS`` with a finite EPS >= 0)."""
    if name in BUILTIN_CHECKERS:
        return name
    if name.startswith("float:"):
        try:
            eps = float(name.removeprefix("float:"))
        except ValueError as exc:
            raise RejectedError(f"{field}: float:EPS needs a number, got {name!r}", field=field) from exc
        if not math.isfinite(eps) or eps < 0:
            raise RejectedError(f"{field}: EPS must be a finite number >= 0, got {name!r}", field=field)
        return name
    choices = ", ".join((*BUILTIN_CHECKERS, "float:EPS"))
    raise RejectedError(
        f"{field}: unknown checker {name!r}; choose one of {choices}, or {{language, code}}", field=field
    )


def check_builtin(name: str, output: bytes, expected: bytes) -> Checked:
    if name == "exact":
        if output == expected:
            return Checked(Verdict.ACCEPTED)
        return _near_miss(output, expected, "output differs from the expected output")
    if name == "lines":
        if _lines(output) == _lines(expected):
            return Checked(Verdict.ACCEPTED)
        return _near_miss(output, expected, _first_line_difference(output, expected))
    if name == "tokens":
        return _compare_tokens(output.split(), expected.split(), eps=None)
    return _compare_tokens(output.split(), expected.split(), eps=float(name.removeprefix("float:")))


def verdict_of_run(result: Result) -> Verdict | None:
    """The verdict a failed run is by itself (a sandbox failure: judge_error); None when it ran fine."""
    if result.status is Status.OK:
        return None
    return _STATUS_VERDICTS.get(result.status, Verdict.JUDGE_ERROR)


def verdict_of_exit(exit_code: int | None, comment: str, who: str) -> Checked:
    """A custom checker's or an interactor's answer by testlib's exit codes."""
    comment = comment.strip()[:_MAX_COMMENT_CHARS]
    if exit_code == 0:
        return Checked(Verdict.ACCEPTED, comment)
    if exit_code == 1:
        return Checked(Verdict.WRONG_ANSWER, comment)
    if exit_code == 2:
        return Checked(Verdict.PRESENTATION_ERROR, comment)
    why = f"the {who} failed (exit code {exit_code})"
    return Checked(Verdict.JUDGE_ERROR, f"{why}: {comment}" if comment else why)


def _near_miss(output: bytes, expected: bytes, why: str) -> Checked:
    if output.split() == expected.split():
        return Checked(Verdict.PRESENTATION_ERROR, "the tokens match but the whitespace differs")
    return Checked(Verdict.WRONG_ANSWER, why)


def _lines(data: bytes) -> list[bytes]:
    lines = [line.rstrip() for line in data.split(b"\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _first_line_difference(output: bytes, expected: bytes) -> str:
    got, want = _lines(output), _lines(expected)
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f"line {i + 1} differs"
    return f"{len(got)} lines, expected {len(want)}"


def _compare_tokens(got: list[bytes], want: list[bytes], *, eps: float | None) -> Checked:
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a == b:
            continue
        if eps is not None and _close(a, b, eps):
            continue
        return Checked(Verdict.WRONG_ANSWER, f"token {i + 1} differs: {_show(a)} vs expected {_show(b)}")
    if len(got) != len(want):
        return Checked(Verdict.WRONG_ANSWER, f"{len(got)} tokens, expected {len(want)}")
    return Checked(Verdict.ACCEPTED)


def _close(a: bytes, b: bytes, eps: float) -> bool:
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    if not (math.isfinite(x) and math.isfinite(y)):
        return False  # "nan" or "inf" must match as text (above): never close by arithmetic
    diff = abs(x - y)
    return diff <= eps or diff <= eps * abs(y)


def _show(token: bytes) -> str:
    text = token.decode("utf-8", "replace")
    return repr(text if len(text) <= 40 else text[:40] + "...")
