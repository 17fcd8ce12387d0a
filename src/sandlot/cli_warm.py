"""``sandlot run``'s warm path: hand the job to a running ``sandlot serve`` on this host.

Theory of operation
-------------------
The console script starts here, before click or any other sandlot module is
imported. ``sandlot run FILE`` is handed to the server listening on
``<run_dir>/serve.sock`` (api/server.py) when all of these hold:

- stdin and stdout are not terminals (scripts and judges; at a terminal the
  local path streams output and stdin live), stdin is not a pipe or socket
  (a conversation with an interactor must stay live: the local path forwards
  it as it comes), and ``--local`` is not given;
- every flag is one this module knows (anything else goes to click);
- the socket is root's or ours, and accepts a connection (a server with the
  same run_dir is up).

The job (the file's bytes, args, stdin, limits, isolation) goes as
``POST /api/v1/run`` with ``output_encoding: base64``, and the answer is
printed as the local path prints it (``finish_body``: the same bytes, exit
codes and ``--json`` object). stdin (a file, ``--stdin FILE`` or /dev/null)
is read whole before sending, at most ``STDIN_CAP_BYTES``.

Only a few stdlib modules are loaded on this path (socket, json, binascii,
signal; not typing, base64 or threading): benchmarks/cli_startup.py --warm.
The job falls back to the local path (``sandlot.cli``) only when the server
certainly did not run it: no connection, the request not fully sent, or an
answer refusing it before the run (400 the local path then words with its
flag names, 401/403 the server has API keys, 413 too large, 429, 503 not
ready or draining). An answer that breaks off after the request was sent
(the server may have run the job) is an error (exit 2), never a second run.
Ctrl-C, SIGTERM or SIGHUP closes the connection, which cancels the run on the
server (``POST /api/v1/run`` watches for the client leaving), and exits 128+N.
"""

from __future__ import annotations

import binascii
import json
import os
import signal
import socket
import stat
import sys

from sandlot.cli_finish import RESULT_KEYS, finish_body

TYPE_CHECKING = False  # not typing's: importing typing costs this path ~3 ms
if TYPE_CHECKING:
    from typing import Any

SOCKET_NAME = "serve.sock"  # api/server.py's SOCKET_NAME (not imported: it loads the server stack)
DEFAULT_RUN_DIR = "/run/sandlot"  # config.Settings.run_dir's default
STDIN_CAP_BYTES = 1024 * 1024  # under the server's 2 MiB body cap once base64'd; more: the local path
_FALLBACK_STATUSES = frozenset({400, 401, 403, 413, 429, 503})  # refused before anything ran
_OUTPUT_FIELDS = ("stdout", "stderr", "compile_output")

_VALUE_OPTIONS = {"-l": "language", "--language": "language", "--stdin": "stdin", "--isolation": "isolation"}
_LIMIT_OPTIONS = {
    "--time-limit": ("time_limit", float),
    "--wall-time-limit": ("wall_time_limit", float),
    "--memory-limit": ("memory_limit", int),
    "--max-processes": ("max_processes", int),
    "--max-file-size": ("max_file_size", int),
    "--max-output": ("max_output", int),
}
_FLAGS = {"--no-stdin": "no_stdin", "--json": "json", "--local": "local"}


class _NotWarm(Exception):
    """The warm path does not apply, or the server refused the job before running it."""


class _Interrupted(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def entrypoint() -> None:
    """The console script: the warm path when it applies, else the whole CLI."""
    code = try_warm(sys.argv[1:])
    if code is not None:
        os._exit(code)  # everything is flushed; skip the interpreter's teardown
    from sandlot.cli import entrypoint as whole_cli

    whole_cli()


def try_warm(argv: list[str]) -> int | None:
    """Run ``argv`` through the server's socket and return the exit code; None: take the local path."""
    try:
        parsed = _parse(argv)
        if parsed is None or parsed.get("local") or os.isatty(0) or os.isatty(1):
            return None
        path = _socket_path(parsed.get("config"))
        if path is None or not _trusted(os.stat(path)):
            return None
    except (OSError, ValueError):
        return None
    return _run(parsed, path)


# ----------------------------------------------------------------- the command line


def _parse(argv: list[str]) -> dict[str, Any] | None:
    """``[--config F] run [options] FILE [ARGS] [-- ARGS]`` as click reads it; None for anything else."""
    parsed: dict[str, Any] = {"limits": {}, "args": []}
    i = 0
    while i < len(argv) and argv[i] != "run":
        if argv[i] == "--config" and i + 1 < len(argv):
            parsed["config"] = argv[i + 1]
            i += 2
        elif argv[i].startswith("--config="):
            parsed["config"] = argv[i].partition("=")[2]
            i += 1
        else:
            return None
    if i == len(argv):
        return None
    positional: list[str] = []
    rest = iter(argv[i + 1 :])
    for word in rest:
        if word == "--":
            positional.extend(rest)
            break
        if not word.startswith("-") or word == "-":
            positional.append(word)
            continue
        name, has_value, given = word.partition("=")
        if name in _FLAGS and not has_value:
            parsed[_FLAGS[name]] = True
            continue
        if name not in _VALUE_OPTIONS and name not in _LIMIT_OPTIONS:
            return None  # --help, --env, a typo: click's to handle
        value = given if has_value else next(rest, None)
        if value is None:
            return None
        if name in _LIMIT_OPTIONS:
            key, kind = _LIMIT_OPTIONS[name]
            parsed["limits"][key] = kind(value)  # a ValueError: not warm, click says what is wrong
        else:
            parsed[_VALUE_OPTIONS[name]] = value
    if not positional:
        return None
    parsed["file"], parsed["args"] = positional[0], positional[1:]
    return parsed


def _socket_path(config: str | None) -> str | None:
    """``<run_dir>/serve.sock`` of the settings ``sandlot run`` would load (config.py's precedence)."""
    run_dir = os.environ.get("SANDLOT_RUN_DIR")
    config = config or os.environ.get("SANDLOT_CONFIG")
    if not run_dir and config:
        import tomllib  # only with a settings file

        try:
            with open(config, "rb") as file:
                value = tomllib.load(file).get("run_dir", DEFAULT_RUN_DIR)
        except (OSError, tomllib.TOMLDecodeError):
            return None  # the local path reports it
        if not isinstance(value, str):
            return None
        run_dir = value
    return os.path.join(run_dir or DEFAULT_RUN_DIR, SOCKET_NAME)


def _trusted(socket_stat: os.stat_result) -> bool:
    """A socket of root's or our own: no other user's server receives the program or makes up its result."""
    return stat.S_ISSOCK(socket_stat.st_mode) and socket_stat.st_uid in (0, os.geteuid())


# ----------------------------------------------------------------- the run


def _run(parsed: dict[str, Any], path: str) -> int | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None  # a stale socket, or not ours to use
    consumed: bytes | None = None
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        try:
            stdin, consumed = _stdin(parsed)
            request = _request(parsed, stdin)
        except _Consumed as taken:
            consumed = taken.data
            raise _NotWarm from taken
        except OSError as exc:  # an unreadable file: the local path words it
            raise _NotWarm from exc
        try:
            sock.sendall(request)
        except OSError as exc:  # not all of it sent: the server cannot have started the job
            raise _NotWarm from exc
        try:
            status, body = _answer(sock)
        except (OSError, ValueError) as exc:
            message = f"the local server's answer broke off ({exc}); the run may have happened"
            return _internal_error(message, bool(parsed.get("json")))
        if status in _FALLBACK_STATUSES:
            raise _NotWarm
        return _finish(status, body, bool(parsed.get("json")))
    except _NotWarm:
        sock.close()
        if consumed:
            _give_back_stdin(consumed)
        return None
    except _Interrupted as interrupted:
        return 128 + interrupted.signum  # the closed connection cancels the run on the server
    finally:
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_interrupted(signum: int, frame: object) -> None:
    raise _Interrupted(signum)


def _stdin(parsed: dict[str, Any]) -> tuple[bytes, bytes | None]:
    """(the program's stdin, what was taken from our own fd 0 or None); _NotWarm where the local path decides."""
    path = parsed.get("stdin")
    if parsed.get("no_stdin"):
        if path is not None:
            raise _NotWarm  # both: the local path words the mistake
        return b"", None
    if path is not None and path != "-":
        with open(path, "rb") as file:
            return file.read(), None
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return b"", None  # started with stdin closed: the local path gives EOF too
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        # A pipe may be a conversation (an interactor answering the program's output): reading it whole
        # first would deadlock both. The local path forwards it live; a file or /dev/null comes here.
        raise _NotWarm
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := os.read(0, 65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > STDIN_CAP_BYTES:  # `yes | sandlot run`: the local path streams it
                raise _Consumed(b"".join(chunks))
    except OSError:
        return b"", None  # started with stdin closed: the local path gives EOF too
    data = b"".join(chunks)
    return data, data


class _Consumed(_NotWarm):
    """Not warm, after taking these bytes from fd 0 (they are given back)."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data


def _request(parsed: dict[str, Any], stdin: bytes) -> bytes:
    file = parsed["file"]
    with open(file, "rb") as source:
        content = source.read()
    job: dict[str, Any] = {
        "files": [{"name": os.path.basename(file), "content": _b64(content), "encoding": "base64"}],
        "args": parsed["args"],
        "stdin": _b64(stdin),
        "stdin_encoding": "base64",
        "isolation": parsed.get("isolation") or "jail",  # as the local path: jail unless asked
        "output_encoding": "base64",
    }
    if parsed.get("language"):
        job["language"] = parsed["language"]
    if parsed["limits"]:
        job["limits"] = parsed["limits"]
    body = json.dumps(job).encode()
    head = (
        "POST /api/v1/run HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode()


def _answer(sock: socket.socket) -> tuple[int, bytes]:
    """The HTTP status and body (Content-Length, or up to the close); ValueError if it is not HTTP."""
    chunks: list[bytes] = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    data = b"".join(chunks)
    head, separator, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if not separator or len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ValueError("not an HTTP answer")
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and int(value) != len(body):
            raise ValueError(f"{len(body)} of {int(value)} bytes")
        if name.strip().lower() == b"transfer-encoding":
            raise ValueError("chunked answer")
    return int(parts[1]), body


def _give_back_stdin(data: bytes) -> None:
    """fd 0 becomes a pipe fed with ``data`` and then the rest of the old fd 0 (a thread copies it)."""
    import threading  # only on this rare way

    original = os.dup(0)
    reader, writer = os.pipe()
    os.dup2(reader, 0)
    os.close(reader)

    def feed() -> None:
        try:
            _write_all(writer, data)
            while chunk := os.read(original, 65536):
                _write_all(writer, chunk)
        except OSError:
            pass  # the program stopped reading
        finally:
            os.close(writer)
            os.close(original)

    threading.Thread(target=feed, name="sandlot-stdin", daemon=True).start()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _finish(status: int, body: bytes, as_json: bool) -> int:
    """Print the answer as the local path would print its Result; the exit code."""
    try:
        answer = json.loads(body)
        fields = {name: binascii.a2b_base64(answer[name], strict_mode=True) for name in _OUTPUT_FIELDS}
        str(answer["status"])
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        return _internal_error(f"the local server answered HTTP {status} with no result ({exc})", as_json)
    texts = {name: data.decode("utf-8", "replace") for name, data in fields.items()}  # as Result.to_dict
    result = {key: texts[key] if key in texts else answer.get(key) for key in RESULT_KEYS}
    try:
        if not as_json:
            _write(sys.stderr.buffer, fields["compile_output"])
            _write(sys.stdout.buffer, fields["stdout"])
            _write(sys.stderr.buffer, fields["stderr"])
        return finish_body(result, as_json)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)  # as cli_output.reader_left: no second failing flush
        os.dup2(devnull, 1)
        return 128 + signal.SIGPIPE


def _internal_error(message: str, as_json: bool) -> int:
    """Not the program's doing: one line on stderr (and the --json object), exit 2."""
    result: dict[str, Any] = dict.fromkeys(RESULT_KEYS, "")  # Result.to_dict of models.Result(INTERNAL_ERROR)
    result |= {"status": "internal_error", "exit_code": None, "signal": None, "wall_time": 0.0, "cpu_time": 0.0}
    result |= {"memory_peak": 0, "truncated": False, "message": message}
    return finish_body(result, as_json)


def _write(stream: Any, data: bytes) -> None:
    if data:
        stream.write(data)
        stream.flush()
