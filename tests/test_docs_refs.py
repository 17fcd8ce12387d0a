"""The docs name code that exists (pure: runs without root).

README.md and docs/*.md point at files (``sandbox/box.py``), functions in them
(``box.py::Box.prepare``, ``policy.BOX_RLIMITS``) and the tests that prove a
claim (``test_limits.py::test_memory_bomb_hits_memory_limit``, or a bare
``test_...`` name). Code moves; this keeps every such pointer true, so
docs/security.md cannot again send a reader to a function that is gone.

What counts as a pointer (backticked): a ``.py`` path (with ``::Name`` or
``::Class.name`` after it, and pytest's ``[params]``); ``module.name`` where
module is one of sandlot's own (``policy``, ``sandlot.broker.redis``); a bare
``test_...`` name. Paths inside a box (``/box/main.py``) and names of users'
programs are not the repository's and are left alone.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "sandlot"
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
_SKIP_DIRS = {".venv", "node_modules", ".git", "__pycache__", "gen"}
# Names the docs use for a user's program, not for a file of this repository.
USER_PROGRAMS = {"main.py", "hello.py", "solution.py"}

_FILE_EXTENSIONS = {"c", "h", "go", "java", "js", "json", "toml", "gz", "env", "cache", "lock", "txt", "md", "proto"}
_CGROUP_CONTROLLERS = {"memory", "cpu", "cpuacct", "cpuset", "pids", "freezer", "io", "cgroup"}
_BACKTICKED = re.compile(r"`([^`\s]+)`")
_PATH_REF = re.compile(r"^(?P<path>[\w./-]*\w\.py)(?:::(?P<name>[\w.]+))?(?:\[[^\]]*\])?$")
_DOTTED_REF = re.compile(r"^(?P<dotted>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?:\(\))?$")
_TEST_REF = re.compile(r"^(?P<name>test_\w+)(?:\[[^\]]*\])?$")


@functools.cache
def _python_files() -> tuple[Path, ...]:
    return tuple(path for path in ROOT.rglob("*.py") if not _SKIP_DIRS.intersection(path.relative_to(ROOT).parts[:-1]))


def _files_named(ref: str) -> list[Path]:
    """The repository's files a path pointer may mean: the path itself, or any file whose path ends with it."""
    return [p for p in _python_files() if p.relative_to(ROOT).as_posix() == ref or p.as_posix().endswith("/" + ref)]


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _names_in(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    names: dict[str, ast.stmt] = {}
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            names.update((t.id, node) for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
    return names


def _defines(path: Path, dotted: str) -> bool:
    """Whether the module at path defines dotted (``name``, or ``Class.attribute``)."""
    body = _tree(path).body
    for part in dotted.split("."):
        node = _names_in(body).get(part)
        if node is None:
            return False
        body = node.body if isinstance(node, ast.ClassDef) else []
    return True


def _module(dotted: str) -> tuple[Path, str] | None:
    """(the sandlot module, the rest) that a dotted pointer starts with, or None if it is not sandlot's."""
    parts = dotted.split(".")
    if parts[-1] in _FILE_EXTENSIONS or parts[0] in _CGROUP_CONTROLLERS:
        return None  # a file name: ``helper.c``, a cgroup's ``memory.current``
    if parts[0] != "sandlot" and importlib.util.find_spec(parts[0]) is not None:
        return None  # another library's module: ``redis.asyncio``, ``os.stat``
    if parts[0] == "sandlot":
        parts = parts[1:]
        candidates = [SRC]
    else:  # a module's own name, as the docs shorten it: ``policy.BOX_RLIMITS``
        candidates = [p.parent for p in SRC.rglob(f"{parts[0]}.py")] + [p.parent for p in SRC.rglob(parts[0])]
    for base in candidates:
        found: tuple[Path, str] | None = None
        here = base
        for i, part in enumerate(parts):
            if (here / part / "__init__.py").is_file():
                here = here / part
                found = (here / "__init__.py", ".".join(parts[i + 1 :]))
            elif (here / f"{part}.py").is_file():
                found = (here / f"{part}.py", ".".join(parts[i + 1 :]))
                break
            else:
                break
        if found is not None:
            return found
    return None


@functools.cache
def _test_names() -> frozenset[str]:
    names: set[str] = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_"):
                names.add(node.name)
    return frozenset(names)


def broken_pointers(text: str) -> list[str]:
    """Every pointer in text to code that does not exist, with what is wrong."""
    broken: list[str] = []
    for token in _BACKTICKED.findall(text):
        if token.startswith(("/", "~", "$")) or "://" in token:
            continue  # a path in the box or on the host, a URL
        if (match := _PATH_REF.match(token)) is not None:
            path, name = match["path"], match["name"]
            if path in USER_PROGRAMS:
                continue
            files = _files_named(path)
            if not files:
                broken.append(f"`{token}`: no file {path}")
            elif name is not None and not any(_defines(f, name) for f in files):
                broken.append(f"`{token}`: {path} defines no {name}")
        elif (match := _TEST_REF.match(token)) is not None:
            if match["name"] not in _test_names():
                broken.append(f"`{token}`: no such test in tests/")
        elif (match := _DOTTED_REF.match(token)) is not None:
            found = _module(match["dotted"])
            if found is not None and found[1] and not _defines(*found):
                broken.append(f"`{token}`: {found[0].relative_to(ROOT)} defines no {found[1]}")
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_code_pointer_in_the_docs_exists(doc: Path) -> None:
    assert broken_pointers(doc.read_text()) == []


def test_the_checker_catches_pointers_to_code_that_is_gone() -> None:
    text = (
        "`sandbox/box.py::Box.prepare_gone` `policy.NO_SUCH_LIMIT` `no_such_module.py` "
        "`test_limits.py::test_gone` `test_no_such_test` `sandlot.broker.redis.NoSuchBroker`"
    )
    assert len(broken_pointers(text)) == 6
    real = (
        "`sandbox/box.py::Box` `box.py::Box.run` `policy.BOX_RLIMITS` `models.py` `/box/main.py` `main.py` "
        "`test_docs_refs.py::test_the_checker_catches_pointers_to_code_that_is_gone` `os.stat` `net.Interfaces` "
        "`sandlot.broker.redis` `sandlot.models.Result.to_dict`"
    )
    assert broken_pointers(real) == []
