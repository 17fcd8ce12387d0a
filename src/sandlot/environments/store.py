"""The environment store: content-addressed, read-only roots under ``<state_dir>/environments/``.

Layout::

    environments/
      names.json            name -> digest hex (written whole, then renamed into place; never in place,
                            which is what lets ``names_file`` re-read it only after a change)
      <hex>/meta.json       what the environment is (kind, source, size, Env/WorkingDir/User, versions)
      <hex>/rootfs/         the root a box binds read-only (root-owned, dirs 0555, files 0444/0555)
      .locks/<hex>.lock     held while <hex> is made or removed; .locks/names.lock guards names.json
      .tmp-<hex>-*/         an environment being made; renamed to <hex> when complete, removed on failure

Theory of operation: an environment appears by one ``rename`` of a finished directory, so a reader sees it
whole or not at all, and a crash leaves only a ``.tmp-*`` directory that ``gc`` removes. Two imports of
the same digest serialise on its lock file; the second finds it made and only records its name. Lock order
is digest, then names; ``gc`` (names, then digests) takes digest locks without waiting, skipping any busy.

Disk cap: ``disk_cap_bytes`` (the ``environments_max_bytes`` setting) bounds every environment in the store
together, named or not (an unnamed one takes its disk until ``gc``). An import or build is refused before it
starts when the store is already at the cap, and after it is unpacked (its size is known only then) when it
would take the store past it (checked and renamed into place under one lock, so imports finishing at once
are counted one after the other); either way nothing of it is left behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandlot.environments.names_file import NamesFile
from sandlot.environments.oci import ImageSource
from sandlot.environments.unpack import UnpackLimits, seal, unpack
from sandlot.errors import EnvironmentLimitExceeded, EnvironmentNotFound, RejectedError, SandboxError

if TYPE_CHECKING:
    from sandlot.config import Settings

STORE_SUBDIR = "environments"  # under the state dir
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")
_META = "meta.json"
_NAMES = "names.json"
_BOX_OWNED_ENV = frozenset({"HOME", "TMPDIR"})  # never an image's: see Environment.box_env


@dataclass(frozen=True)
class Environment:
    """One environment as recorded in its ``meta.json`` (plus the name it was asked by)."""

    digest: str  # "sha256:<hex>": the image's config digest, or the spec's canonical hash
    kind: str  # "image" or "built"
    source: str  # the archive or spec path it came from
    name: str = ""
    created: str = ""  # ISO 8601, UTC
    size_bytes: int = 0
    file_count: int = 0
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    architecture: str = ""
    image_format: str = ""
    manifest_digest: str | None = None
    dropped: dict[str, int] = field(default_factory=dict)  # entries neutralised on import, by kind
    spec: dict[str, Any] = field(default_factory=dict)  # a built environment's spec, canonical
    packages: dict[str, dict[str, str]] = field(default_factory=dict)  # apt/pip/npm -> name -> version
    languages: dict[str, dict[str, Any]] = field(default_factory=dict)  # its own languages.toml tables

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def box_env(self) -> dict[str, str]:
        """The image's ``Env`` as a box gets it, under the language's own env (its PATH replaces sandlot's).

        ``HOME`` and ``TMPDIR`` stay the box's (``/box``, ``/tmp``: where it may write; an image's
        ``/root`` is read-only and not the box user's). Entries without ``=``, with an empty name or a
        NUL (which no process environment can hold) are left out.
        """
        env: dict[str, str] = {}
        for item in self.env:
            key, sep, value = item.partition("=")
            if sep and key and "\x00" not in item and key not in _BOX_OWNED_ENV:
                env[key] = value
        return env

    @classmethod
    def from_json(cls, data: dict[str, Any], name: str) -> Environment:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        for key in ("env", "entrypoint", "cmd"):
            values[key] = tuple(values.get(key) or ())
        return cls(**{**values, "name": name})


@dataclass(frozen=True)
class Outcome:
    environment: Environment
    cached: bool  # True: it was already in the store, nothing was unpacked or built


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise RejectedError(
            f"environment name {name!r} is invalid: 1-64 of a-z 0-9 . _ -, starting with a letter or digit",
            field="environment",
        )
    return name


class EnvironmentStore:
    """Environments under ``root`` (default ``<state_dir>/environments``); ``limits`` caps each import,
    ``disk_cap_bytes`` all of them together (0: no cap)."""

    def __init__(
        self,
        state_dir: Path,
        *,
        limits: UnpackLimits | None = None,
        disk_cap_bytes: int = 0,
        root: Path | None = None,
    ) -> None:
        self.root = root or state_dir / STORE_SUBDIR
        self.limits = limits or UnpackLimits()
        self.disk_cap_bytes = disk_cap_bytes
        self._names = NamesFile(self.root / _NAMES)

    @classmethod
    def from_settings(cls, settings: Settings) -> EnvironmentStore:
        """The store the settings describe: its directory, the per-import caps and the disk cap."""
        return cls(
            settings.state_dir,
            root=settings.environments_dir,
            limits=UnpackLimits(
                max_total_bytes=settings.environment_import_max_bytes,
                max_files=settings.environment_import_max_files,
            ),
            disk_cap_bytes=settings.environments_max_bytes,
        )

    def used_bytes(self) -> int:
        """What every complete environment in the store takes (named or not), from their metadata."""
        total = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in os.listdir(self.root):
                if _HEX.match(entry):
                    try:
                        total += int(json.loads((self.root / entry / _META).read_text()).get("size_bytes", 0))
                    except (OSError, ValueError, AttributeError):
                        continue  # not (yet) an environment: a directory without a readable meta.json
        return total

    def _check_disk_cap(self, adding: int, hexd: str) -> None:
        if self.disk_cap_bytes <= 0:
            return
        used = self.used_bytes()
        if used + adding > self.disk_cap_bytes or (adding == 0 and used >= self.disk_cap_bytes):
            what = f"sha256:{hexd} ({adding} bytes)" if adding else f"sha256:{hexd}"
            raise EnvironmentLimitExceeded(
                f"environment {what} would take the store over its disk cap "
                f"environments_max_bytes={self.disk_cap_bytes} (in use: {used} bytes); "
                "remove some (sandlot env rm NAME, then sandlot env gc) or raise the setting",
                limit="environments_max_bytes",
            )

    def import_image(
        self,
        name: str,
        path: Path,
        *,
        architecture: str | None = None,
        languages: dict[str, dict[str, Any]] | None = None,
    ) -> Outcome:
        """Import a docker-save archive or OCI layout as ``name``; every blob verified, nothing half-left.

        ``languages`` (the operator's tables for this image) are recorded with it; given for an image
        already stored, they replace the ones it had (they describe the image, whichever name asks).
        """
        check_name(name)
        self._ensure()
        with ImageSource(path, architecture=architecture) as source:
            image = source.image
            made = Environment(
                digest=image.digest,
                kind="image",
                source=str(path.resolve()),
                env=image.config.env,
                working_dir=image.config.working_dir,
                user=image.config.user,
                entrypoint=image.config.entrypoint,
                cmd=image.config.cmd,
                architecture=image.config.architecture,
                image_format=image.format,
                manifest_digest=image.manifest_digest,
                languages=languages or {},
            )

            def produce(rootfs: Path) -> Environment:
                stats = unpack(source, rootfs, self.limits)
                return dataclasses.replace(made, dropped=stats.dropped)

            outcome = self.materialise(name, image.digest, produce)
        if outcome.cached and languages is not None and outcome.environment.languages != languages:
            self.set_languages(image.digest, languages)
            outcome = Outcome(self.inspect(name), cached=True)
        return outcome

    def set_languages(self, digest: str, languages: dict[str, dict[str, Any]]) -> None:
        """Replace a stored environment's language tables (meta.json rewritten whole, then renamed)."""
        hexd = digest.removeprefix("sha256:")
        with self._lock(hexd):
            final = self.root / hexd
            data = json.loads((final / _META).read_text())
            data["languages"] = languages
            tmp = final / f".{_META}.{os.getpid()}"
            final.chmod(0o755)
            try:
                tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
                tmp.chmod(0o444)
                tmp.replace(final / _META)
            finally:
                final.chmod(0o555)

    def materialise(self, name: str, digest: str, produce: Callable[[Path], Environment]) -> Outcome:
        """Make environment ``digest`` with ``produce(empty_rootfs)`` unless it exists; then name it."""
        check_name(name)
        self._ensure()
        hexd = digest.removeprefix("sha256:")
        assert _HEX.match(hexd), digest
        with self._lock(hexd):
            final = self.root / hexd
            cached = (final / _META).is_file()
            if not cached:
                self._check_disk_cap(0, hexd)  # full already: refused before any download or unpacking
                self._make(final, hexd, produce)
            self._set_name(name, hexd)
        return Outcome(self.inspect(name), cached)

    def _make(self, final: Path, hexd: str, produce: Callable[[Path], Environment]) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{hexd}-", dir=self.root))  # 0700: ours alone meanwhile
        try:
            rootfs = tmp / "rootfs"
            rootfs.mkdir()
            made = produce(rootfs)
            sealed = seal(rootfs)
            dropped = dict(made.dropped)
            for kind, count in sealed.dropped.items():
                dropped[kind] = max(dropped.get(kind, 0), count)
            made = dataclasses.replace(
                made,
                name="",
                created=datetime.now(UTC).isoformat(timespec="seconds"),
                size_bytes=sealed.size_bytes,
                file_count=sealed.file_count,
                dropped=dropped,
            )
            meta = tmp / _META
            meta.write_text(json.dumps(made.to_json(), indent=2, sort_keys=True) + "\n")
            meta.chmod(0o444)
            tmp.chmod(0o555)
            # Checked and made visible under one lock: imports finishing at once cannot pass the cap together.
            with self._lock("disk"):
                self._check_disk_cap(sealed.size_bytes, hexd)
                if final.exists():  # a directory without meta.json is no environment: never trust it
                    _rmtree(final)
                tmp.rename(final)
        except BaseException:
            _rmtree(tmp)
            raise

    def names(self) -> dict[str, str]:
        """Every name and the digest hex it points to (the file parsed again only after a change)."""
        return self._names.read()

    def inspect(self, name: str) -> Environment:
        hexd = self.names().get(name)
        if hexd is None:
            raise EnvironmentNotFound(name)
        try:
            data = json.loads((self.root / hexd / _META).read_text())
        except (OSError, ValueError) as exc:
            raise SandboxError(f"environment {name!r}: {self.root / hexd / _META} unreadable: {exc}") from exc
        return Environment.from_json(data, name)

    def rootfs(self, name: str) -> Path:
        """The read-only root a box binds for ``name``."""
        hexd = self.names().get(name)
        if hexd is None:
            raise EnvironmentNotFound(name)
        return self.root / hexd / "rootfs"

    def rootfs_of(self, env: Environment) -> Path:
        """The root of an environment already inspected (its name may have been re-pointed since)."""
        return self.root / env.digest.removeprefix("sha256:") / "rootfs"

    def by_digest(self, digest: str) -> Environment | None:
        """The environment stored under ``digest`` ("sha256:<hex>"), whatever names point to it; None if absent."""
        hexd = digest.removeprefix("sha256:")
        if not _HEX.match(hexd):
            return None
        try:
            data = json.loads((self.root / hexd / _META).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise SandboxError(f"environment {digest}: {self.root / hexd / _META} unreadable: {exc}") from exc
        names = [name for name, value in self.names().items() if value == hexd]
        return Environment.from_json(data, min(names) if names else "")

    def environments(self) -> list[Environment]:
        return [self.inspect(name) for name in sorted(self.names())]

    def remove(self, name: str) -> bool:
        """Forget ``name``; its data goes too unless another name points to it. True if data was removed."""
        self._ensure()
        with self._lock("names"):
            names = self.names()
            hexd = names.pop(name, None)
            if hexd is None:
                raise EnvironmentNotFound(name)
            self._write_names(names)
        if hexd in self.names().values():
            return False
        return self._remove_unnamed(hexd)

    def gc(self) -> list[str]:
        """Remove every environment no name points to, and what failed imports left; returns what went
        (environments and temp directories; the small files below go silently).

        Litter is: an interrupted import's or build's ``.tmp-<hex>-*`` directory (unless that import still
        runs: it holds the digest's lock), a names file half-written by a process that died (``.names.json.*``:
        writers hold the names lock, so under it any such file is dead), and the lock files of digests that
        are gone.
        """
        self._ensure()
        removed = self._gc_environments()
        with self._lock("names"):
            for entry in sorted(os.listdir(self.root)):
                if entry.startswith(f".{_NAMES}."):
                    (self.root / entry).unlink(missing_ok=True)
        present = set(os.listdir(self.root))
        for entry in sorted(os.listdir(self.root / ".locks")):
            hexd = entry.removesuffix(".lock")
            if not _HEX.match(hexd) or hexd in present or any(p.startswith(f".tmp-{hexd}-") for p in present):
                continue
            with self._lock(hexd, wait=False) as held:
                if held and not (self.root / hexd).exists():
                    (self.root / ".locks" / entry).unlink(missing_ok=True)  # holders re-check the inode
        return removed

    def _gc_environments(self) -> list[str]:
        removed = []
        for entry in sorted(os.listdir(self.root)):
            hexd = entry[len(".tmp-") :].split("-")[0] if entry.startswith(".tmp-") else entry
            if not _HEX.match(hexd) or (entry == hexd and hexd in self.names().values()):
                continue
            if entry == hexd:
                if self._remove_unnamed(hexd):
                    removed.append(f"sha256:{hexd}")
            else:
                with self._lock(hexd, wait=False) as held:
                    if held:  # an import holding it is still running: its temp dir is not litter
                        _rmtree(self.root / entry)
                        removed.append(entry)
        return removed

    def _remove_unnamed(self, hexd: str) -> bool:
        with self._lock("names"), self._lock(hexd, wait=False) as held:
            if not held or hexd in self.names().values():
                return False  # being made again right now, or named again meanwhile
            _rmtree(self.root / hexd)
            return True

    def _set_name(self, name: str, hexd: str) -> None:
        with self._lock("names"):
            names = self.names()
            names[name] = hexd
            self._write_names(names)

    def _write_names(self, names: dict[str, str]) -> None:
        tmp = self.root / f".{_NAMES}.{os.getpid()}"
        tmp.write_text(json.dumps(names, indent=2, sort_keys=True) + "\n")
        tmp.chmod(0o644)
        tmp.replace(self.root / _NAMES)

    def _ensure(self) -> None:
        (self.root / ".locks").mkdir(parents=True, exist_ok=True, mode=0o700)
        self.root.chmod(0o755)

    @contextlib.contextmanager
    def _lock(self, key: str, *, wait: bool = True) -> Iterator[bool]:
        path = self.root / ".locks" / f"{key}.lock"
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                yield False
                return
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                break
            os.close(fd)  # gc removed the file while we waited on it: lock the one in place now
        try:
            yield True
        finally:
            os.close(fd)


def _rmtree(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)  # as root: the read-only modes of a sealed tree do not stop it
