"""The doors' import contract: a door parses and renders; it reaches nothing past ``api/common`` and the service.

DESIGN.md: every door (``api/http``, ``api/grpc``, ``api/judge0``, ``api/piston``,
``api/mcp``) calls one door-neutral core, ``api/common`` (submit and follow,
auth, parsing, rendering), and the service layer (``service``, ``sessions``
and the shared types: models, errors, requests, languages, config, paths, the
broker protocol). No door, and not ``api/common`` either, imports what runs or
holds a box (``pool``, ``sandbox``, ``worker``), a broker implementation
(``broker.memory``, ``broker.redis*``), or another door.

The exceptions, each for a reason written here rather than found by accident:

- ``api/http/app.py`` builds the one ASGI app and mounts the Judge0, Piston and
  MCP doors on it: wiring, so it imports their ``install``.
- Judge0, Piston and MCP are served by that app, whose body cap and route
  machinery answer with the HTTP door's ``ApiError``; they may import
  ``api.http.errors`` (and nothing else of the HTTP door) to render it in their
  own shapes.
- ``api/server.py`` is the process's entry point (``sandlot serve``), not a door.

Pure: reads the sources with ``ast``; needs no root and starts nothing.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import sandlot.api

API_DIR = Path(sandlot.api.__file__).parent
DOORS = ("http", "grpc", "judge0", "piston", "mcp")
FORBIDDEN = (
    "sandlot.pool",
    "sandlot.sandbox",
    "sandlot.worker",
    "sandlot.worker_process",
    "sandlot.worker_sessions",
    "sandlot.broker.",  # an implementation; the protocol (sandlot.broker itself) is shared
)
# (importing module, imported module prefix): the documented exceptions above.
ALLOWED_CROSSINGS = {
    ("sandlot.api.http.app", "sandlot.api.judge0.routes"),
    ("sandlot.api.http.app", "sandlot.api.piston.routes"),
    ("sandlot.api.http.app", "sandlot.api.mcp.server"),
    ("sandlot.api.judge0.errors", "sandlot.api.http.errors"),
    ("sandlot.api.piston.routes", "sandlot.api.http.errors"),
    ("sandlot.api.mcp.server", "sandlot.api.http.errors"),
}


def _module_name(path: Path) -> str:
    parts = ("sandlot", "api", *path.relative_to(API_DIR).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str, *, is_package: bool = False) -> Iterator[str]:
    """Every module ``source`` imports, anywhere in it (lazy imports in functions included), absolute.

    ``from a.b import c`` yields ``a.b.c`` when c is a module, else ``a.b``.
    """
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing package
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names]
            submodules = [name for name in names if _is_module(name)]
            yield from submodules
            if len(submodules) < len(names):  # some names are the module's attributes
                yield base


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # its parent is no package
        return False


def _door_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 3 and parts[:2] == ["sandlot", "api"]:
        return parts[2]
    return None


def _matches(imported: str, prefix: str) -> bool:
    if prefix.endswith("."):
        return imported.startswith(prefix)
    return imported == prefix or imported.startswith(prefix + ".")


def violations(module: str, imported_modules: set[str]) -> set[tuple[str, str]]:
    """The (module, rule it breaks) pairs of one module of api/ (a door's, or api/common's)."""
    own = _door_of(module)
    found: set[tuple[str, str]] = set()
    for imported in imported_modules:
        for prefix in FORBIDDEN:
            if _matches(imported, prefix):
                found.add((module, prefix.rstrip(".")))
        other = _door_of(imported)
        if other in DOORS and other != own:
            found.add((module, imported))
    return found


def _api_modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(API_DIR.rglob("*.py")):
        module = _module_name(path)
        if _door_of(module) in (*DOORS, "common") and ".gen" not in module:
            yield module, path


def _all_violations() -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for module, path in _api_modules():
        found |= violations(module, set(imports(path.read_text(), module, is_package=path.name == "__init__.py")))
    return found


def test_no_door_reaches_past_common_and_the_service() -> None:
    broken = _all_violations() - ALLOWED_CROSSINGS
    assert not broken, "\n".join(
        f"{module} imports {target}: a door calls api/common and the service only (see this test's docstring)"
        for module, target in sorted(broken)
    )


def test_every_exception_is_still_needed() -> None:
    stale = ALLOWED_CROSSINGS - _all_violations()
    assert not stale, f"no longer needed, remove from test_api_layout: {sorted(stale)}"


def test_every_door_and_common_is_read() -> None:
    """The walk finds every package: a renamed folder must not silently leave the contract unchecked."""
    packages = {_door_of(module) for module, _ in _api_modules()}
    assert packages == {*DOORS, "common"}
    assert sum(1 for _ in _api_modules()) > 30


def test_the_checker_sees_each_kind_of_import() -> None:
    """Direct, from-, lazy and relative imports of what a door may not use are each caught."""
    source = """
import sandlot.pool
from sandlot.sandbox.hostfs import FileMissing
from sandlot import worker
from ..http import door
from sandlot.broker.redis import RedisBroker
from sandlot.broker import TaskSpec
from sandlot.api.common.core import Core
from . import state

def lazy():
    from sandlot.api.grpc.server import create_grpc_server
"""
    module = "sandlot.api.judge0.routes"
    found = {target for _, target in violations(module, set(imports(source, module)))}
    assert found == {
        "sandlot.pool",
        "sandlot.sandbox",
        "sandlot.worker",
        "sandlot.broker",  # the redis implementation, not the protocol
        "sandlot.api.http.door",
        "sandlot.api.grpc.server",
    }
