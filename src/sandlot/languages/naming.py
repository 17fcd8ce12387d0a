"""The name a program's main source gets in the box, and the class a JVM runs.

Theory of operation
-------------------
A language's commands name its source as ``{source}`` and its entry point as
``{main_class}``; the engine fills both in per job from ``SourceName``:

- ``user`` (most languages): the user's own file name when it is a plain, safe
  name with one of the language's extensions (``sandlot run hello.py`` runs
  ``/box/hello.py``, so tracebacks show the user's name), else the language's
  default ``source_file`` (HTTP ``code`` with no name).
- ``public_class`` (Java): javac insists that a public class ``Foo`` lives in
  ``Foo.java``, and Judge0/Piston/playground users paste ``Main``, ``Solution``,
  anything. The source is named after its public top-level type and that type
  (qualified by its package) is run. With no public type, the first top-level
  type is run, as ``java File.java`` (the source launcher) does.

Only names matched by ``_SAFE_NAME`` reach a command line: never a path, an
option or an undecodable byte.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

SOURCE_NAMING = ("user", "public_class", "default")

_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}")
_JAVA_IDENT = r"[A-Za-z_$][A-Za-z0-9_$]*"
# Comments and literals go first, so a "class X" inside them is never taken for a declaration.
_JAVA_NOISE = re.compile(r'"""[\s\S]*?"""|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|//[^\n]*|/\*[\s\S]*?\*/')
_JAVA_PACKAGE = re.compile(
    rf"^\s*(?:@{_JAVA_IDENT}(?:\([^)]*\))?\s*)*package\s+({_JAVA_IDENT}(?:\s*\.\s*{_JAVA_IDENT})*)\s*;"
)
_JAVA_TYPE = re.compile(
    rf"(?<![\w$@.])((?:(?:public|protected|private|abstract|final|static|strictfp|sealed|non-sealed)\s+)*)"
    rf"(?:class|interface|enum|record)\s+({_JAVA_IDENT})"
)


@dataclass(frozen=True)
class SourceName:
    """The box file name of the main source, and what ``{main_class}`` runs."""

    file: str
    main_class: str


def choose(naming: str, default: str, extensions: tuple[str, ...], user_name: str | None, code: bytes) -> SourceName:
    """The main source's name in the box (see the module docstring)."""
    if naming == "public_class":
        return _java(default, code)
    keep = naming == "user" and user_name is not None and _SAFE_NAME.fullmatch(user_name) is not None
    name = user_name if keep and user_name and PurePosixPath(user_name).suffix.lower() in extensions else default
    return SourceName(name, PurePosixPath(name).stem)


def _java(default: str, code: bytes) -> SourceName:
    text = _JAVA_NOISE.sub(" ", code.decode("utf-8", "replace"))
    package = _JAVA_PACKAGE.search(text)
    prefix = re.sub(r"\s+", "", package.group(1)) + "." if package else ""
    first: str | None = None
    depth, seen = 0, 0  # brace depth at text[seen], counted incrementally (linear in the source)
    for match in _JAVA_TYPE.finditer(text):
        depth += text.count("{", seen, match.start()) - text.count("}", seen, match.start())
        seen = match.start()
        if depth != 0:
            continue  # a nested type: never the file's own
        name = match.group(2)
        if "public" in match.group(1).split():
            return SourceName(f"{name}.java", prefix + name)
        first = first or name
    if first is not None:
        return SourceName(default, prefix + first)
    return SourceName(default, prefix + PurePosixPath(default).stem)
