"""Languages as data: ``languages.toml`` declares them, this module loads and probes them.

A language whose ``requires`` executables are missing is simply not offered.
In an environment (a root filesystem, see sandlot/environments) the same probe
runs against that root (``installed_in``): its links resolved inside the root,
never on the host. An environment's own language tables (``with_tables``) add
languages or override declared ones there, and are probed the same way.
A language may declare a ``cache``: a host directory warmed once (by running
``warm`` on the language's sample, on the host, as root) and then shown to each
box as a copy-on-write overlay, so builds start warm but no box can write into
what other boxes read.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from sandlot.errors import ConfigError, RejectedError
from sandlot.languages.naming import SOURCE_NAMING, SourceName, choose

_VERSION_TIMEOUT_S = 20
_WARM_TIMEOUT_S = 300
INSTALLED_RECHECK_S = 5.0  # how long "this toolchain is (not) installed" is believed
_SAFE_ENV_KEYS = re.compile(r"^[A-Z_][A-Z0-9_]*$")


@dataclass(frozen=True)
class CacheSpec:
    name: str
    dest: str
    warm: tuple[str, ...]
    warm_stdout: str | None = None  # save warm's stdout here, host cache path rewritten to dest
    warm_usual_s: int = 0  # how long warming usually takes, for the first-use notice


@dataclass(frozen=True)
class Language:
    name: str
    display_name: str
    source_file: str
    run: tuple[str, ...]
    compile: tuple[str, ...] | None = None
    aliases: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    version_command: tuple[str, ...] = ()
    version_regex: str = r"(\S+)"
    env: Mapping[str, str] = field(default_factory=dict)
    binds: tuple[str, ...] = ()
    cache: CacheSpec | None = None
    drop_compile_lines: tuple[str, ...] = ()
    sample: str = ""
    source_naming: str = "user"  # see sandlot/languages/naming.py

    def source_name(self, user_name: str | None, code: bytes) -> SourceName:
        """The main source's name in the box and the entry point, for this job's file name and code."""
        return choose(self.source_naming, self.source_file, self.extensions, user_name, code)

    def argv(self, template: tuple[str, ...], source: SourceName) -> list[str]:
        """A compile or run command with ``{source}`` and ``{main_class}`` filled in."""
        return [arg.replace("{source}", source.file).replace("{main_class}", source.main_class) for arg in template]

    def describe(self, version: str) -> dict[str, Any]:
        """What the doors and `sandlot languages` show of the language."""
        return {
            "name": self.name,
            "display_name": self.display_name,
            "version": version,
            "aliases": list(self.aliases),
            "extensions": list(self.extensions),
            "compiled": self.compile is not None,
        }

    @property
    def installed(self) -> bool:
        return all(os.access(path, os.X_OK) for path in self.requires)

    def installed_in(self, root: Path) -> bool:
        """``installed``, for an environment's root: every ``requires`` path an executable file there."""
        return all(_executable_in(root, path) for path in self.requires)

    def probe_version(self) -> str:
        """Ask the toolchain for its version (on the host; trusted binaries only)."""
        if not self.version_command:
            return "unknown"
        try:
            proc = subprocess.run(
                list(self.version_command),
                capture_output=True,
                timeout=_VERSION_TIMEOUT_S,
                check=False,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/nonexistent"},
            )
        except (OSError, subprocess.TimeoutExpired):
            return "unknown"
        text = (proc.stdout + proc.stderr).decode("utf-8", "replace")
        match = re.search(self.version_regex, text)
        return match.group(1) if match else text.strip().splitlines()[0] if text.strip() else "unknown"


_MAX_LINKS = 40  # as Linux's path walk (ELOOP)


def _executable_in(root: Path, path: str) -> bool:
    """Is path, read as if root were /, an executable regular file? Links are resolved inside root
    (an image's ``/usr/bin/python3 -> /usr/bin/python3.11`` means root's, not the host's)."""
    parts = [p for p in path.split("/") if p]
    current: list[str] = []
    links = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if current:
                current.pop()
            continue
        candidate = root.joinpath(*current, part)
        try:
            info = os.lstat(candidate)
        except OSError:
            return False
        if stat.S_ISLNK(info.st_mode):
            links += 1
            if links > _MAX_LINKS:
                return False
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        current.append(part)
    try:
        info = os.lstat(root.joinpath(*current))
    except OSError:
        return False
    return bool(current) and stat.S_ISREG(info.st_mode) and bool(info.st_mode & 0o111)


def _tuple(data: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}.{key}: must be a list of strings")
    return tuple(value)


def _parse(name: str, data: Mapping[str, Any]) -> Language:
    where = f"languages.{name}"
    for key in ("source_file", "run"):
        if key not in data:
            raise ConfigError(f"{where}: missing {key}")
    env = data.get("env", {})
    if not isinstance(env, dict) or not all(_SAFE_ENV_KEYS.match(k) and isinstance(v, str) for k, v in env.items()):
        raise ConfigError(f"{where}.env: must map UPPER_CASE names to strings")
    cache = None
    if "cache" in data:
        raw = data["cache"]
        if not isinstance(raw, dict) or not {"name", "dest", "warm"} <= raw.keys():
            raise ConfigError(f"{where}.cache: needs name, dest and warm")
        stdout_name = raw.get("warm_stdout")
        cache = CacheSpec(
            str(raw["name"]),
            str(raw["dest"]),
            _tuple(raw, "warm", where + ".cache"),
            str(stdout_name) if stdout_name else None,
            int(raw.get("warm_usual_s", 0)),
        )
    compile_cmd = _tuple(data, "compile", where) or None
    naming = str(data.get("source_naming", "user"))
    if naming not in SOURCE_NAMING:
        raise ConfigError(f"{where}.source_naming: must be one of {', '.join(SOURCE_NAMING)}")
    return Language(
        name=name,
        display_name=str(data.get("display_name", name)),
        source_file=str(data["source_file"]),
        run=_tuple(data, "run", where),
        compile=compile_cmd,
        aliases=_tuple(data, "aliases", where),
        extensions=_tuple(data, "extensions", where),
        requires=_tuple(data, "requires", where),
        version_command=_tuple(data, "version", where),
        version_regex=str(data.get("version_regex", r"(\S+)")),
        env=dict(env),
        binds=_tuple(data, "binds", where),
        cache=cache,
        drop_compile_lines=_tuple(data, "drop_compile_lines", where),
        sample=str(data.get("sample", "")).lstrip("\n"),
        source_naming=naming,
    )


LanguageTables = Mapping[str, Mapping[str, Any]]  # languages.toml's form: name -> its table


@dataclass(frozen=True)
class OfferedThere:
    """An environment another node probed (the distributed mode, on a node whose store lacks it): the names
    of the languages it offers there, and the environment's own ``tables``, which may add a language this
    node's table lacks (a name alone would be "unknown" here) or change a declared one."""

    names: tuple[str, ...]
    tables: LanguageTables = field(default_factory=dict)


class LanguageRegistry:
    """The declared languages and which of them this host offers.

    An environment may carry language tables of its own (``LanguageTables``, from its spec or the operator's
    ``--languages`` file): each adds a language, or overrides a declared one key by key (the keys it gives
    replace the declared table's). They are probed in the environment's root like every other language.
    """

    def __init__(
        self,
        languages: Mapping[str, Language],
        *,
        clock: Callable[[], float] = time.monotonic,
        tables: LanguageTables | None = None,
    ) -> None:
        self._all = dict(languages)
        self._tables = dict(tables or {})  # the declared tables, for an environment's key-by-key overrides
        self._versions: dict[str, str] = {}
        self._clock = clock
        self._installed: dict[str, tuple[float, bool]] = {}  # name -> (checked at, installed)

    @classmethod
    def load(cls, path: Path | None = None) -> LanguageRegistry:
        try:
            text = path.read_text() if path else resources.files(__name__).joinpath("languages.toml").read_text()
            data = tomllib.loads(text)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"languages file {path or 'languages.toml'}: {exc}") from exc
        tables = {name: spec for name, spec in data.items() if isinstance(spec, dict)}
        return cls({name: _parse(name, spec) for name, spec in tables.items()}, tables=tables)

    def with_tables(self, tables: LanguageTables | None) -> dict[str, Language]:
        """Every language an environment with these tables declares (not probed): its own first, so its
        names and aliases win; a table naming a declared language overrides that one's keys."""
        if not tables:
            return self._all
        own: dict[str, Language] = {}
        for name, table in tables.items():
            if not isinstance(table, Mapping):
                raise ConfigError(f"languages.{name}: must be a table")
            own[name] = _parse(name, {**self._tables.get(name, {}), **table})
        return {**own, **{name: lang for name, lang in self._all.items() if name not in own}}

    def offered(self) -> list[Language]:
        return [lang for lang in self._all.values() if self._is_installed(lang)]

    def _is_installed(self, lang: Language) -> bool:
        """``lang.installed``, looked at again after INSTALLED_RECHECK_S: a toolchain installed (or removed)
        while serving counts soon, without a stat of every toolchain file on every request."""
        now = self._clock()
        checked = self._installed.get(lang.name)
        if checked is None or now - checked[0] >= INSTALLED_RECHECK_S:
            checked = (now, lang.installed)
            self._installed[lang.name] = checked
        return checked[1]

    def offered_in(self, root: Path, tables: LanguageTables | None = None) -> list[Language]:
        """The languages an environment's root offers, with its own ``tables`` (probed each time: a root
        never changes)."""
        return [lang for lang in self.with_tables(tables).values() if lang.installed_in(root)]

    def get_in(self, name: str, root: Path, environment: str, tables: LanguageTables | None = None) -> Language:
        """Resolve a name or alias to a language environment ``environment`` (at root, with its own
        ``tables``) offers."""
        return self._get_where(name, lambda lang: lang.installed_in(root), environment, tables)

    def get_among(
        self, name: str, offered: Collection[str], environment: str, tables: LanguageTables | None = None
    ) -> Language:
        """As ``get_in``, for an environment another node probed: ``offered`` names its languages."""
        return self._get_where(name, lambda lang: lang.name in offered, environment, tables)

    def _get_where(
        self, name: str, offered: Callable[[Language], bool], environment: str, tables: LanguageTables | None
    ) -> Language:
        key = name.strip().lower()
        languages = self.with_tables(tables)
        for lang in languages.values():
            if key == lang.name or key in lang.aliases:
                if not offered(lang):
                    raise RejectedError(
                        f"language {lang.name!r} is not available in environment {environment!r}", field="language"
                    )
                return lang
        names = ", ".join(sorted(lang.name for lang in languages.values() if offered(lang)))
        raise RejectedError(f"unknown language {name!r}; environment {environment!r} offers: {names}", field="language")

    def get(self, name: str) -> Language:
        """Resolve a name or alias to an offered language, or reject with a clear message."""
        key = name.strip().lower()
        for lang in self._all.values():
            if key == lang.name or key in lang.aliases:
                if not self._is_installed(lang):
                    raise RejectedError(f"language {lang.name!r} is not installed on this server", field="language")
                return lang
        offered = ", ".join(sorted(lang.name for lang in self.offered()))
        raise RejectedError(f"unknown language {name!r}; offered: {offered}", field="language")

    def for_file(self, filename: str) -> Language:
        """The offered language for a file's extension (rejected if declared but not installed)."""
        return self.get(self.declared_for_file(filename).name)

    def declared_for_file(self, filename: str, tables: LanguageTables | None = None) -> Language:
        """The declared language for a file's extension, installed here or not (a client's question);
        with an environment's own ``tables`` applied when given."""
        suffix = Path(filename).suffix.lower()
        for lang in self.with_tables(tables).values():
            if suffix and suffix in lang.extensions:
                return lang
        raise RejectedError(
            f"cannot tell the language of {filename!r} from its extension; use -l LANG", field="language"
        )

    def version(self, lang: Language) -> str:
        if lang.name not in self._versions:
            self._versions[lang.name] = lang.probe_version()
        return self._versions[lang.name]

    async def probe_versions(self) -> dict[str, str]:
        """Probe every offered language's version concurrently (once; cached)."""
        missing = [lang for lang in self.offered() if lang.name not in self._versions]
        results = await asyncio.gather(*(asyncio.to_thread(lang.probe_version) for lang in missing))
        for lang, version in zip(missing, results, strict=False):
            self._versions[lang.name] = version
        return {lang.name: self._versions[lang.name] for lang in self.offered()}


def warm_cache(lang: Language, cache_root: Path, notice: Callable[[str], None] | None = None) -> Path:
    """Return the language's warm cache directory, warming it once per host (flock-guarded).

    ``notice`` hears one line before a (slow) warming or a wait for another process's.
    """
    assert lang.cache is not None
    cache_root.mkdir(parents=True, exist_ok=True)
    os.chmod(cache_root, 0o700)  # only root (and overlays it mounts) reach the caches
    target = cache_root / lang.cache.name
    marker = cache_root / f"{lang.cache.name}.warm"
    if marker.exists():
        return target
    if notice is not None:
        usual = f"; usually about {lang.cache.warm_usual_s} s" if lang.cache.warm_usual_s else ""
        notice(f"preparing the {lang.display_name} build cache (first use on this host only{usual})")
    with open(cache_root / f"{lang.cache.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return target
        target.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="sandlot-warm-") as tmp:
            Path(tmp, lang.source_file).write_text(lang.sample)
            env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "LANG": "C.UTF-8", "TMPDIR": tmp, **lang.env}
            env[_cache_env_key(lang)] = str(target)
            try:
                proc = subprocess.run(
                    list(lang.cache.warm), cwd=tmp, env=env, capture_output=True, timeout=_WARM_TIMEOUT_S, check=False
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise ConfigError(f"warming the {lang.name} cache failed: {exc}") from exc
            if proc.returncode != 0:
                raise ConfigError(f"warming the {lang.name} cache failed: {proc.stderr.decode(errors='replace')}")
            if lang.cache.warm_stdout:
                text = proc.stdout.decode().replace(str(target), lang.cache.dest)
                (target / lang.cache.warm_stdout).write_text(text)
        # Boxes create entries through their overlay, which checks these modes.
        for dirpath, _dirnames, filenames in os.walk(target):
            os.chmod(dirpath, 0o777)
            for name in filenames:
                os.chmod(os.path.join(dirpath, name), 0o644)
        marker.write_text(lang.probe_version())
    return target


def _cache_env_key(lang: Language) -> str:
    """The env var that points the toolchain at its cache (the one whose value is the cache's dest)."""
    assert lang.cache is not None
    for key, value in lang.env.items():
        if value == lang.cache.dest:
            return key
    raise ConfigError(f"languages.{lang.name}.cache: no env var points at {lang.cache.dest}")


def remove_caches(cache_root: Path) -> None:
    shutil.rmtree(cache_root, ignore_errors=True)
