"""Typed settings: defaults, maxima, paths. One object, created at start-up, passed in.

Precedence: built-in defaults < TOML file (``--config`` or ``SANDLOT_CONFIG``) <
``SANDLOT_*`` environment variables < command-line flags (applied by the caller
with ``dataclasses.replace``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sandlot.errors import ConfigError, RejectedError
from sandlot.models import Limits

CLI_FLAGS = "--"  # resolve_limits(where=CLI_FLAGS): name limits as the CLI's flags
KIB = 1024
MIB = 1024 * KIB

DEFAULT_RUN_LIMITS = Limits(
    time_limit_s=5.0,
    wall_time_limit_s=10.0,
    memory_limit_bytes=256 * MIB,
    max_processes=64,
    max_file_size_bytes=16 * MIB,
    max_output_bytes=1 * MIB,
)
MAX_RUN_LIMITS = Limits(
    time_limit_s=60.0,
    wall_time_limit_s=120.0,
    memory_limit_bytes=4096 * MIB,
    max_processes=512,
    max_file_size_bytes=256 * MIB,
    max_output_bytes=64 * MIB,
)
DEFAULT_COMPILE_LIMITS = Limits(
    time_limit_s=20.0,
    wall_time_limit_s=30.0,
    memory_limit_bytes=1024 * MIB,
    max_processes=256,
    max_file_size_bytes=128 * MIB,
    max_output_bytes=256 * KIB,
)
MAX_COMPILE_LIMITS = Limits(
    time_limit_s=60.0,
    wall_time_limit_s=120.0,
    memory_limit_bytes=4096 * MIB,
    max_processes=512,
    max_file_size_bytes=512 * MIB,
    max_output_bytes=4 * MIB,
)


@dataclass(frozen=True)
class LimitRequest:
    """Limits as a user asks for them, in the CLI's units; None means the default."""

    time_limit: float | None = None  # seconds of CPU
    wall_time_limit: float | None = None  # seconds
    memory_limit: int | None = None  # MiB
    max_processes: int | None = None
    max_file_size: int | None = None  # KiB
    max_output: int | None = None  # KiB

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, where: str = "limits") -> LimitRequest:
        """Parse a JSON-ish mapping, naming the offending field on error."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise RejectedError(f"{where}.{key}: unknown limit", field=f"{where}.{key}")
            if value is None:
                continue
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not is_number:
                raise RejectedError(f"{where}.{key}: must be a number", field=f"{where}.{key}")
            wants_float = key in ("time_limit", "wall_time_limit")
            if not wants_float and isinstance(value, float) and not value.is_integer():
                raise RejectedError(f"{where}.{key}: must be a whole number", field=f"{where}.{key}")
            values[key] = float(value) if wants_float else int(value)
        return cls(**values)


@dataclass(frozen=True)
class Settings:
    """Everything configurable about sandlot."""

    state_dir: Path = Path("/var/lib/sandlot")  # boxes, caches, the built helper
    run_dir: Path = Path("/run/sandlot")  # slot locks
    cgroup_root: Path = Path("/sys/fs/cgroup")
    cgroup_name: str = "sandlot"
    bwrap_path: Path = Path("/usr/bin/bwrap")
    runsc_path: Path = Path("/usr/bin/runsc")  # gVisor, for isolation "gvisor"
    gvisor_platform: str = "ptrace"  # runsc --platform
    gvisor_memory_overhead_bytes: int = 32 * MIB  # gVisor's own kernel, on top of the run's memory limit
    gvisor_task_overhead: int = 256  # runsc's, the gofer's, the Sentry's own host threads (gvisor.host_task_limit)
    box_uid_base: int = 900_000_000  # box N runs as host uid/gid base+N
    max_boxes: int = 1024
    box_disk_bytes: int = 256 * MIB  # the workdir tmpfs (sources, build output)
    box_inodes: int = 16384
    tmp_size_bytes: int = 64 * MIB  # /tmp and /dev/shm inside the box, each
    cpu_cores_per_box: float = 1.0  # CPU quota of one box
    open_files: int = 256
    stack_bytes: int = 64 * MIB
    max_source_bytes: int = 1 * MIB
    # One job's total over all its stages (compile, run, each of up to 32 commands); each stage's limits
    # are capped by what is left. The defaults fit one compile and one run at their maxima.
    job_wall_time_budget_s: float = 240.0
    job_cpu_time_budget_s: float = 120.0
    run_defaults: Limits = DEFAULT_RUN_LIMITS
    run_maxima: Limits = MAX_RUN_LIMITS
    compile_defaults: Limits = DEFAULT_COMPILE_LIMITS
    compile_maxima: Limits = MAX_COMPILE_LIMITS
    languages_file: Path | None = None  # None: the built-in languages.toml
    extra: Mapping[str, Any] = field(default_factory=dict)  # sections other layers own

    def resolve_limits(self, request: LimitRequest | None, *, stage: str = "run", where: str | None = None) -> Limits:
        """Fill defaults and reject values out of range, naming the limit.

        Named ``where.name`` if given (a request's field), ``--name-with-dashes`` for
        ``where=CLI_FLAGS`` (the command line's flag), else plain ``name``.
        """
        defaults, maxima = (
            (self.compile_defaults, self.compile_maxima) if stage == "compile" else (self.run_defaults, self.run_maxima)
        )
        if request is None:  # nothing asked: every limit is its default (the common case, on every request)
            return defaults
        req = request

        def pick(name: str, given: float | None, default: float, maximum: float, unit: str, scale: int) -> float:
            name = "--" + name.replace("_", "-") if where == CLI_FLAGS else f"{where}.{name}" if where else name
            if given is None:
                return default
            if not math.isfinite(given) or given <= 0:
                raise RejectedError(f"{name} must be positive, got {given:g}", field=name)
            value = given * scale
            if value > maximum:
                raise RejectedError(f"{name} {given:g} exceeds the maximum of {maximum / scale:g} {unit}", field=name)
            return value

        return Limits(
            time_limit_s=pick("time_limit", req.time_limit, defaults.time_limit_s, maxima.time_limit_s, "s", 1),
            wall_time_limit_s=pick(
                "wall_time_limit", req.wall_time_limit, defaults.wall_time_limit_s, maxima.wall_time_limit_s, "s", 1
            ),
            memory_limit_bytes=int(
                pick(
                    "memory_limit", req.memory_limit, defaults.memory_limit_bytes, maxima.memory_limit_bytes, "MB", MIB
                )
            ),
            max_processes=int(
                pick("max_processes", req.max_processes, defaults.max_processes, maxima.max_processes, "", 1)
            ),
            max_file_size_bytes=int(
                pick(
                    "max_file_size",
                    req.max_file_size,
                    defaults.max_file_size_bytes,
                    maxima.max_file_size_bytes,
                    "KB",
                    KIB,
                )
            ),
            max_output_bytes=int(
                pick("max_output", req.max_output, defaults.max_output_bytes, maxima.max_output_bytes, "KB", KIB)
            ),
        )


_LIMIT_SECTIONS = ("run_defaults", "run_maxima", "compile_defaults", "compile_maxima")


def _coerce(name: str, raw: Any, target: Any) -> Any:
    """Convert a TOML or environment value to the type of the default it replaces."""
    try:
        if isinstance(target, bool):
            if isinstance(raw, bool):
                return raw
            return str(raw).strip().lower() in ("1", "true", "yes", "on")
        if isinstance(target, int):
            return int(raw)
        if isinstance(target, float):
            return float(raw)
        if isinstance(target, Path) or (target is None and name.endswith("_file")):
            return Path(str(raw))
        if isinstance(target, str):
            return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name}: cannot use {raw!r}: {exc}") from exc
    raise ConfigError(f"setting {name}: unsupported value {raw!r}")


def load_settings(config_file: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the optional TOML file and the SANDLOT_* environment."""
    env = os.environ if environ is None else environ
    base = Settings()
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    path = config_file or (Path(env["SANDLOT_CONFIG"]) if env.get("SANDLOT_CONFIG") else None)
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
        for key, raw in data.items():
            if key in _LIMIT_SECTIONS and isinstance(raw, dict):
                current: Limits = getattr(base, key)
                unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(Limits)})
                if unknown:
                    raise ConfigError(f"config section [{key}]: unknown limit {unknown[0]!r}")
                try:
                    values[key] = dataclasses.replace(
                        current, **{k: _coerce(k, v, getattr(current, k)) for k, v in raw.items()}
                    )
                except TypeError as exc:
                    raise ConfigError(f"config section [{key}]: {exc}") from exc
            elif key in {f.name for f in dataclasses.fields(Settings)} and key != "extra":
                values[key] = _coerce(key, raw, getattr(base, key))
            else:
                extra[key] = raw
    for f in dataclasses.fields(Settings):
        if f.name in _LIMIT_SECTIONS or f.name == "extra":
            continue
        raw_env = env.get("SANDLOT_" + f.name.upper())
        if raw_env is not None:
            values[f.name] = _coerce(f.name, raw_env, getattr(base, f.name))
    return dataclasses.replace(base, extra=extra, **values)


def check_state_dir_reachable(state_dir: Path) -> None:
    """Refuse a state dir that box users cannot reach, at start-up rather than on every run.

    Boxes run as unprivileged uids of their own, and bubblewrap (running as one)
    binds files from under the state dir: every directory above it must be
    searchable by others (o+x). A state dir under a 0700 home or a ``mktemp -d``
    would otherwise start fine and then fail every run with "Can't find source path".
    """
    path = Path(os.path.realpath(state_dir))  # the directories the kernel walks, links resolved
    for parent in reversed(path.parents):
        try:
            mode = os.stat(parent).st_mode
        except FileNotFoundError:
            return  # created below by sandlot itself, searchable
        except OSError as exc:
            raise ConfigError(f"state_dir {path}: cannot inspect {parent}: {exc.strerror}") from exc
        if not mode & stat.S_IXOTH:
            raise ConfigError(
                f"state_dir {path} is unreachable for the boxes' users: {parent} is mode {stat.S_IMODE(mode):04o}; "
                f"run `chmod o+x {parent}` or set SANDLOT_STATE_DIR outside it (default /var/lib/sandlot)"
            )
