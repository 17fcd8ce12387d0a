"""How a run ends for every sandlot command: the --json object, the one line on stderr, the exit code.

Stdlib only: ``sandlot run``'s warm path (cli_warm.py) ends with it before
click or any other sandlot module is loaded; cli_output.finish calls it with
``Result.to_dict()``. The program's own code (128+N for signal N), 1 for a
compile error, 2 for anything that is not the program's doing.
"""

from __future__ import annotations

import json
import sys

TYPE_CHECKING = False  # not typing's: the warm path does not load it
if TYPE_CHECKING:
    from typing import Any

EXIT_NOT_PROGRAM = 2
EXIT_COMPILE_ERROR = 1


def say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


# models.Result.to_dict's keys, in its order: the --json object.
RESULT_KEYS = (
    "status",
    "exit_code",
    "signal",
    "stdout",
    "stderr",
    "compile_output",
    "wall_time",
    "cpu_time",
    "memory_peak",
    "truncated",
    "language",
    "message",
)


def finish_body(result: dict[str, Any], as_json: bool) -> int:
    """The CLI contract's ending for a result (``Result.to_dict``'s shape): the --json line, the one
    line on stderr, and the exit code (cli_output.finish calls this too)."""
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    status, message = result["status"], result["message"]
    if status in ("internal_error", "rejected"):
        say(f"sandlot: {message}")
        return EXIT_NOT_PROGRAM
    if status == "compile_error":
        if not as_json and not result["compile_output"]:
            say(f"sandlot: {message}")
        return EXIT_COMPILE_ERROR
    if status in ("timeout", "memory_limit", "output_limit") and not as_json:
        say(f"sandlot: {status}: {message}")
    if result["signal"] is not None:
        return 128 + int(result["signal"])
    return int(result["exit_code"]) if result["exit_code"] is not None else 1
