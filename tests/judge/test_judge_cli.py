"""``sandlot judge`` as a real subprocess: tests from a directory or a JSON file, a checker file, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.test_cli import _json, _sandlot
from tests.judge import programs

pytestmark = pytest.mark.root("sandlot judge runs boxes")


def _tests_dir(tmp_path: Path, count: int) -> Path:
    tests = tmp_path / "tests"
    tests.mkdir()
    for i in range(1, count + 1):  # 1..count: "10" must sort after "9"
        (tests / f"{i}.in").write_text(f"{i} {i}\n")
        (tests / f"{i}.out").write_text(f"{2 * i}\n")
    return tests


def test_a_directory_of_tests(tmp_path: Path) -> None:
    solution = tmp_path / "sum.cpp"
    solution.write_text(programs.CPP_SUM_WRONG)
    proc = _sandlot("judge", solution, _tests_dir(tmp_path, 10))
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert "test 7: wrong_answer" in "\n".join(lines) and len(lines) == 11
    assert lines[-1].startswith("wrong_answer: 9/10 tests passed")


def test_a_json_file_and_a_checker_file(tmp_path: Path) -> None:
    solution = tmp_path / "divisor.cpp"
    solution.write_text(programs.CPP_SMALLEST_DIVISOR)
    checker = tmp_path / "checker.py"
    checker.write_text(programs.PY_DIVISOR_CHECKER)
    tests = tmp_path / "tests.json"
    tests.write_text(json.dumps([{"stdin": "15\n", "expected_output": "5\n"}, {"stdin": "49\n"}]))
    proc = _sandlot("judge", solution, tests, "--checker", checker, "--json")
    assert proc.returncode == 0, proc.stderr
    answer = _json(proc)
    assert (answer["verdict"], answer["passed"]) == ("accepted", 2)


def test_mistakes_are_usage_errors(tmp_path: Path) -> None:
    solution = tmp_path / "sum.py"
    solution.write_text(programs.PY_SUM)
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _sandlot("judge", solution, empty)
    assert proc.returncode == 2 and b"no N.in files" in proc.stderr
    proc = _sandlot("judge", solution, _tests_dir(tmp_path, 1), "--checker", "nearly")
    assert proc.returncode == 2 and b"unknown checker" in proc.stderr
