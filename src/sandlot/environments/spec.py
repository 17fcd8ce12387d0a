"""A declared environment: a TOML spec naming a Debian suite and packages from apt, PyPI and npm.

    [environment]
    name = "python-datasci"
    suite = "bookworm"
    apt = ["python3-numpy"]
    pip = ["tabulate==0.9.0"]
    npm = []

    [languages.python]               # optional: languages of its own, as in languages.toml
    run = ["/usr/bin/python3", "-X", "utf8", "{source}"]

Every package name reaches a command line (mmdebstrap, pip, npm), so each is checked against a strict
pattern: no spaces, no options, no URLs or paths, only a name and an optional exact or ranged version.
Unknown keys are refused. The spec's identity (:meth:`Spec.digest`) is the hash of its canonical content
(suite and the sorted package lists, not its name), so the same spec builds once and is then found cached.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandlot.environments.store import check_name
from sandlot.errors import RejectedError, SpecRejected

BUILD_RECIPE_VERSION = 1  # part of every spec's hash: a change to how we build invalidates cached builds
DEFAULT_SUITE = "bookworm"
MAX_PACKAGES = 500  # per list
_SUITE = re.compile(r"^[a-z][a-z0-9-]{1,31}$")
_APT = re.compile(r"^[a-z0-9][a-z0-9+.-]{0,99}(=[A-Za-z0-9.+~:-]{1,64})?$")
_PIP = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,99}[A-Za-z0-9])?"  # a PyPI project name
    r"(?:\[[A-Za-z0-9._-]+(?:,[A-Za-z0-9._-]+)*\])?"  # extras
    r"(?:(?:==|>=|<=|~=|!=|<|>)[A-Za-z0-9.*+!]{1,64}(?:,(?:==|>=|<=|~=|!=|<|>)[A-Za-z0-9.*+!]{1,64})*)?$"
)
_NPM = re.compile(r"^(?:@[a-z0-9][a-z0-9._-]{0,99}/)?[a-z0-9][a-z0-9._-]{0,99}(?:@[A-Za-z0-9.^~<>=*+-]{1,64})?$")
_KEYS = {"name", "suite", "apt", "pip", "npm"}


@dataclass(frozen=True)
class Spec:
    name: str
    suite: str = DEFAULT_SUITE
    apt: tuple[str, ...] = ()
    pip: tuple[str, ...] = ()
    npm: tuple[str, ...] = ()
    languages: dict[str, dict[str, Any]] = field(default_factory=dict)  # [languages.NAME] tables

    def canonical(self) -> dict[str, Any]:
        """What the environment depends on: the name is only a label on it. Its language tables are part
        of what it is (they are stored with it), so a spec that changes them is another environment;
        a spec without any hashes as before they existed."""
        canonical: dict[str, Any] = {
            "recipe": BUILD_RECIPE_VERSION,
            "suite": self.suite,
            "apt": sorted(set(self.apt)),
            "pip": sorted(set(self.pip)),
            "npm": sorted(set(self.npm)),
        }
        if self.languages:
            canonical["languages"] = self.languages
        return canonical

    def digest(self) -> str:
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def load_spec(path: Path) -> Spec:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecRejected(f"{path}: cannot read the spec: {exc}") from exc
    return parse_spec(text, str(path))


def parse_spec(text: str, where: str = "spec") -> Spec:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecRejected(f"{where}: not valid TOML: {exc}") from exc
    extra = sorted(set(data) - {"environment", "languages"})
    if extra or not isinstance(data.get("environment"), dict):
        unknown_tables = f"; unknown: {', '.join(extra)}" if extra else ""
        raise SpecRejected(f"{where}: expected one [environment] table (and [languages.NAME] ones){unknown_tables}")
    languages = data.get("languages", {})
    if not isinstance(languages, dict) or not all(isinstance(t, dict) for t in languages.values()):
        raise SpecRejected(f"{where}: languages must be [languages.NAME] tables, as in languages.toml")
    table: dict[str, Any] = data["environment"]
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        known = ", ".join(sorted(_KEYS))
        raise SpecRejected(f"{where}: unknown key(s) in [environment]: {', '.join(unknown)} (known: {known})")
    name = table.get("name")
    if not isinstance(name, str):
        raise SpecRejected(f"{where}: [environment] name is required (a string)")
    try:
        check_name(name)
    except RejectedError as exc:
        raise SpecRejected(f"{where}: {exc}") from exc
    suite = table.get("suite", DEFAULT_SUITE)
    if not isinstance(suite, str) or not _SUITE.match(suite):
        raise SpecRejected(f"{where}: suite {suite!r} is not a Debian suite name (for example 'bookworm')")
    return Spec(
        name=name,
        suite=suite,
        apt=_packages(table, "apt", _APT, where),
        pip=_packages(table, "pip", _PIP, where),
        npm=_packages(table, "npm", _NPM, where),
        languages=languages,
    )


def _packages(table: dict[str, Any], key: str, pattern: re.Pattern[str], where: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SpecRejected(f"{where}: {key} must be a list of package names")
    if len(value) > MAX_PACKAGES:
        raise SpecRejected(f"{where}: {key} lists {len(value)} packages; at most {MAX_PACKAGES}")
    for item in value:
        if not pattern.match(item):
            raise SpecRejected(f"{where}: {key} package {item!r} is not a plain name (with an optional version)")
    return tuple(value)
