"""The Python REPL driver: run inside the box as the program of a stateful session (``python3 -c``).

It is never imported on the host: ``repl.py`` reads this file's text and passes it
as the interpreter's ``-c`` argument, with the session's marker as ``argv[1]``.

Protocol (the host's side is ``stateful/protocol.py``):

- stdin carries cells, each framed as ``<decimal length>\\n<JSON>``; the JSON is
  ``{"code": str, "stdin": str}``. The driver keeps stdin for itself: fd 0 of the
  cell (and of what it starts) is ``/dev/null``, ``sys.stdin`` the cell's stdin text.
- A cell's output goes to fds 1 and 2 as any program's. When the cell is over the
  driver writes the marker on both: on stderr ``MARKER\\n``, on stdout
  ``MARKER <JSON>\\n`` with ``{"outcome": "ok" | "error" | "interrupted" | "exit",
  "value": str | null, "value_chars": int, "error": str}``. Each pipe is in order,
  so what comes before a marker on its stream is the cell's.
- SIGINT (the host's wall or CPU limit) raises KeyboardInterrupt only while a cell
  runs; between cells it is ignored.
"""

import ast
import contextlib
import io
import json
import linecache
import os
import signal
import sys
import traceback
from types import CodeType

VALUE_MAX_CHARS = 64 * 1024

MARKER = sys.argv[1].encode()
del sys.argv[1:]
_control_in = os.fdopen(os.dup(0), "rb", buffering=0)
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)
_state = {"in_cell": False}  # SIGINT is a KeyboardInterrupt only while a cell runs


def _on_sigint(signum: int, frame: object) -> None:
    if _state["in_cell"]:
        raise KeyboardInterrupt


signal.signal(signal.SIGINT, _on_sigint)


def _read_exact(n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = _control_in.read(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _read_cell() -> dict[str, str]:
    header = b""
    while not header.endswith(b"\n"):
        byte = _control_in.read(1)
        if not byte:
            raise EOFError
        header += byte
    cell: dict[str, str] = json.loads(_read_exact(int(header)))
    return cell


def _compile(code: str) -> tuple[CodeType, CodeType | None]:
    linecache.cache["<cell>"] = (len(code), None, code.splitlines(True), "<cell>")  # lines in tracebacks
    tree = ast.parse(code, "<cell>", "exec")
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body[-1].value)
        tree.body.pop()
    body = compile(tree, "<cell>", "exec")
    return body, (compile(last, "<cell>", "eval") if last is not None else None)


def _user_traceback(exc: BaseException) -> str:
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == "<string>":
        tb = tb.tb_next  # the driver's own frames are noise to the user
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _run(cell: dict[str, str], namespace: dict[str, object]) -> dict[str, object]:
    report: dict[str, object] = {"outcome": "ok", "value": None, "value_chars": 0, "error": ""}
    sys.stdin = io.StringIO(cell.get("stdin", ""))
    try:
        try:
            _state["in_cell"] = True
            body, last = _compile(cell["code"])
            exec(body, namespace)  # noqa: S102 - running the cell is the point (inside the box)
            if last is not None:
                value = eval(last, namespace)  # noqa: S307 - the cell's last expression, inside the box
                if value is not None:
                    namespace["_"] = value
                    text = repr(value)
                    report["value_chars"] = len(text)
                    report["value"] = text[:VALUE_MAX_CHARS]
        finally:
            _state["in_cell"] = False
    except KeyboardInterrupt:
        report["outcome"] = "interrupted"
    except SystemExit as exc:
        code = exc.code
        report["outcome"] = "exit"
        report["error"] = str(code if isinstance(code, int) else (0 if code is None else 1))
        if code is not None and not isinstance(code, int):
            print(code, file=sys.stderr)
    except BaseException as exc:
        report["outcome"] = "error"
        report["error"] = type(exc).__name__
        sys.stderr.write(_user_traceback(exc))
    return report


def _finish(report: dict[str, object]) -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):  # a stream the cell broke or closed must not end the session
            if stream is not None:
                stream.flush()
    os.write(2, MARKER + b"\n")
    line = MARKER + b" " + json.dumps(report).encode() + b"\n"
    while line:
        line = line[os.write(1, line) :]


def main() -> None:
    namespace: dict[str, object] = {"__name__": "__main__", "__builtins__": __builtins__}
    while True:
        try:
            cell = _read_cell()
        except EOFError:
            return
        except KeyboardInterrupt:
            continue
        report: dict[str, object]
        try:
            report = _run(cell, namespace)
        except KeyboardInterrupt:  # arrived between the cell's end and the bookkeeping
            report = {"outcome": "interrupted", "value": None, "value_chars": 0, "error": ""}
        sys.stdin = sys.__stdin__
        _finish(report)


main()
