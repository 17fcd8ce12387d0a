"""Every setting of sandlot: typed frozen sections, one default each, one loader, one coercion.

Sections, as they appear in the TOML file (docs/configuration.md lists every key):

- top level: ``Settings``'s own fields (paths, the sandbox's sizes, the job budgets);
- ``[run_defaults]``, ``[run_maxima]``, ``[compile_defaults]``, ``[compile_maxima]``: ``Limits`` tables;
- ``[server]``: ``ServerSettings`` (the serving process: listeners, pool, broker, sessions, drain);
- ``[api_keys]``: ``KEY = "tenant"`` or ``KEY = { tenant = ..., max_concurrent = ..., ... }`` (``ApiKey``);
- ``[judge0]``: ``Judge0Settings`` (the Judge0 door's ``/about`` and callback policy).

Precedence, lowest first: the defaults written here < the TOML file (``--config`` or
``SANDLOT_CONFIG``) < ``SANDLOT_*`` environment variables < command-line flags
(``server_settings_from``'s overrides; ``run``'s limit flags go through ``resolve_limits``).
``load_settings`` is the one loader; ``coerce`` the one conversion of a file's value or an
environment string to a setting's type (one truthy parse among them).

Environment names: ``SANDLOT_`` + the key in capitals for the top level and ``[server]``
(``SANDLOT_MAX_BOXES``, ``SANDLOT_HTTP_PORT``), ``SANDLOT_JUDGE0_`` + key for ``[judge0]``,
``SANDLOT_API_KEYS="key:tenant,..."`` (added to the file's keys); limit tables have none.

Mistakes are start-up failures (``ConfigError``, the CLI prints one line and exits 2): an
unknown key or table in the file is refused with its name and the closest known one; a value
of the wrong type names the key, the value and what was expected. An unknown ``SANDLOT_*``
environment variable is only warned about (one line): other tools (the client's
``SANDLOT_SERVER``, a deployment's own) share the prefix, and a shell's stray export should
not stop a server, while a file is sandlot's alone.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import stat
import tomllib
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sandlot.errors import ConfigError, RejectedError
from sandlot.models import Limits

log = logging.getLogger(__name__)

CLI_FLAGS = "--"  # resolve_limits(where=CLI_FLAGS): name limits as the CLI's flags
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

# Every stage limit's four values: run default, run maximum, compile default, compile maximum.
_LIMIT_TABLE: dict[str, tuple[float, float, float, float]] = {
    "time_limit_s": (5.0, 60.0, 20.0, 60.0),
    "wall_time_limit_s": (10.0, 120.0, 30.0, 120.0),
    "memory_limit_bytes": (256 * MIB, 4096 * MIB, 1024 * MIB, 4096 * MIB),
    "max_processes": (64, 512, 256, 512),
    "max_file_size_bytes": (16 * MIB, 256 * MIB, 128 * MIB, 512 * MIB),
    "max_output_bytes": (1 * MIB, 64 * MIB, 256 * KIB, 4 * MIB),
}


def _limits_column(column: int) -> Limits:
    kinds = typing.get_type_hints(Limits)
    return Limits(**{name: kinds[name](row[column]) for name, row in _LIMIT_TABLE.items()})


DEFAULT_RUN_LIMITS, MAX_RUN_LIMITS, DEFAULT_COMPILE_LIMITS, MAX_COMPILE_LIMITS = map(_limits_column, range(4))


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
                raise RejectedError.at(f"{where}.{key}", "unknown limit")
            if value is None:
                continue
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not is_number:
                raise RejectedError.at(f"{where}.{key}", "must be a number")
            wants_float = key in ("time_limit", "wall_time_limit")
            if not wants_float and isinstance(value, float) and not value.is_integer():
                raise RejectedError.at(f"{where}.{key}", "must be a whole number")
            values[key] = float(value) if wants_float else int(value)
        return cls(**values)


@dataclass(frozen=True)
class ApiKey:
    """One ``[api_keys]`` entry: the bearer token, its tenant and its quotas."""

    key: str
    tenant: str
    max_concurrent: int = 0  # 0: unlimited
    requests_per_minute: int = 0  # 0: unlimited
    min_isolation: str = "jail"  # requests of this key never run at a weaker level
    environments: tuple[str, ...] | None = None  # the environments its jobs may name; None: every one


@dataclass(frozen=True)
class ServerSettings:
    """``[server]``: the serving process's own knobs (limits and paths are top-level settings)."""

    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 50051
    pool_size: int = 0  # 0: derived from the core count
    max_queued: int = 64  # tasks waiting for a worker before 429
    result_ttl_s: float = 600.0
    result_memory_bytes: int = 256 * MIB  # finished tasks' output kept in memory; the rest goes to disk
    session_ttl_s: float = 30 * 60.0
    session_idle_s: float = 20 * 60.0
    # File sessions: each owns a tmpfs workdir of this quota; none pins a box (docs/sessions.md).
    session_disk_bytes: int = 64 * MIB  # one session's files, all told
    session_inodes: int = 16384  # one session's files, directories and links
    session_memory_bytes: int = 0  # all sessions' files together at most; 0: half the host's memory
    max_sessions: int = 0  # live sessions per pool; 0: session_memory_bytes // session_disk_bytes
    max_body_bytes: int = 2 * MIB
    ws_max_stdin_bytes: int = 16 * MIB  # stdin one WebSocket connection may send in all (held until read)
    drain_deadline_s: float = 30.0
    api_keys: tuple[ApiKey, ...] = ()  # [api_keys] and SANDLOT_API_KEYS, not [server]
    start_worker: bool = True
    prelaunch: bool = True  # keep each idle box's next jail launched ahead of time
    redis_url: str = ""  # distributed mode's broker; "": the embedded memory broker
    claim_idle_ms: int = 0  # a live worker silent this long on a job (wedged) loses it; 0: derived
    presence_ttl_s: float = 6.0  # a worker silent this long is dead: its jobs go elsewhere
    max_deliveries: int = 3  # runs of one job before it ends as "worker lost"
    events_maxlen: int = 10_000  # events kept per task stream (approximate trim)
    worker_name: str = ""  # this worker's consumer name; "": hostname-pid-random
    default_isolation: str = "jail"  # a request's level when it names none (an API key may raise it)
    gvisor_pool_size: int = 2  # warm gVisor sandboxes; 0 turns the level off
    allowed_origins: str = ""  # comma-separated browser origins besides our own that may POST; "*": any
    worker_metrics_port: int = 0  # `sandlot worker`'s /metrics listener on host (0: none; serve has /metrics)
    # -- environments' pre-launched jails (env-warm; pool.py) --
    preload_environments: tuple[str, ...] = ()  # environments boxes are launched for at start-up (names)
    # Environments in the distributed mode (issue 15): the base URL workers fetch this API node's
    # environments from; "": http://HOST:HTTP_PORT (this host's name when HOST is a wildcard address).
    internal_url: str = ""
    # Stateful sessions (an interpreter kept in a pinned box). 0: derived, the jail pool's size - 1 (at least 1),
    # so plain runs always keep a box; a negative number turns them off.
    max_stateful_sessions: int = 0

    @property
    def effective_pool_size(self) -> int:
        return self.pool_size or max(2, (os.cpu_count() or 1) * 2)

    @property
    def effective_max_stateful_sessions(self) -> int:
        if self.max_stateful_sessions:
            return max(self.max_stateful_sessions, 0)
        return max(1, self.effective_pool_size - 1)


def effective_max_sessions(server: ServerSettings) -> int:
    """``max_sessions``, or as many sessions as fit ``session_memory_bytes`` if every one filled its quota."""
    if server.max_sessions > 0:
        return server.max_sessions
    budget = server.session_memory_bytes or _host_memory_bytes() // 2
    return max(1, budget // max(1, server.session_disk_bytes))


def _host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


SERVER_DEFAULTS = ServerSettings()  # for what is built without a ServerSettings (the pool's, the brokers' defaults)


@dataclass(frozen=True)
class Judge0EnvironmentLanguage:
    """One ``[judge0.languages]`` entry: a Judge0 language id for a language in an environment."""

    id: int  # Judge0's language_id, e.g. 1001 (not one of Judge0 CE's own)
    name: str  # what /languages shows, e.g. "Python 3.11 (datasci)"
    language: str  # ours, as the environment offers it
    environment: str


@dataclass(frozen=True)
class Judge0Settings:
    """``[judge0]``: the Judge0 door's ``/about`` answer, its callback policy, its extra language ids."""

    callback_allow_private: bool = False  # callbacks to loopback and private addresses (tests, one host)
    homepage: str | None = None
    source_code: str | None = None
    maintainer: str | None = None  # None: "sandlot <version>"
    languages: tuple[Judge0EnvironmentLanguage, ...] = ()  # [judge0.languages], not an environment variable


@dataclass(frozen=True)
class Settings:
    """Everything configurable about sandlot: the top-level settings and every section."""

    state_dir: Path = Path("/var/lib/sandlot")  # boxes, caches, the built helper
    run_dir: Path = Path("/run/sandlot")  # slot locks
    cgroup_name: str = "sandlot"  # the parent group of every box, in each hierarchy /proc/self/mountinfo shows
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
    languages_file: Path | None = None  # None: the built-in languages.toml
    # Environments (docs/environments.md "Operating environments"): where they are kept and what they may take.
    environments_dir: Path | None = None  # None: <state_dir>/environments
    environments_max_bytes: int = 64 * GIB  # all environments together on disk; an import or build past it is refused
    environment_import_max_bytes: int = 8 * GIB  # bytes one import may write (all layers)
    environment_import_max_files: int = 1_000_000  # entries one import may create
    environment_build_timeout_s: float = 1800.0  # one `sandlot env build`, downloads included
    # Judge mode (sandlot.judge): the bounds of one judge request, and its share of the pool.
    judge_max_tests: int = 512
    judge_max_test_bytes: int = 16 * MIB  # one test's input, or its expected output
    judge_max_artifact_bytes: int = 64 * MIB  # a compiled program, copied into each test's box
    judge_parallel_tests: int = 0  # tests of one submission running at once; 0: half the pool, at least 1
    run_defaults: Limits = DEFAULT_RUN_LIMITS
    run_maxima: Limits = MAX_RUN_LIMITS
    compile_defaults: Limits = DEFAULT_COMPILE_LIMITS
    compile_maxima: Limits = MAX_COMPILE_LIMITS
    server: ServerSettings = field(default_factory=ServerSettings)
    judge0: Judge0Settings = field(default_factory=Judge0Settings)

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
                raise RejectedError.at(name, f"must be positive, got {given:g}", separator=" ")
            value = given * scale
            if value > maximum:
                raise RejectedError.at(
                    name, f"{given:g} exceeds the maximum of {maximum / scale:g} {unit}", separator=" "
                )
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


_LIMIT_TABLES = ("run_defaults", "run_maxima", "compile_defaults", "compile_maxima")
_SECTIONS = {"server": "SANDLOT_", "judge0": "SANDLOT_JUDGE0_"}  # table -> its environment prefix
# Fields read from a table of their own, never from a variable ([server].api_keys has SANDLOT_API_KEYS, apart).
_NOT_VARIABLES: dict[str, tuple[str, ...]] = {"server": (), "judge0": ("languages",)}
_TABLES = (*_LIMIT_TABLES, *_SECTIONS, "api_keys")
_TOP_LEVEL = tuple(f.name for f in dataclasses.fields(Settings) if f.name not in _TABLES)
# SANDLOT_* variables that are not settings: the file's name, and the client commands' own.
_OTHER_VARIABLES = frozenset({"SANDLOT_CONFIG", "SANDLOT_SERVER", "SANDLOT_API_KEY"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
_S = TypeVar("_S")


def coerce(raw: object, kind: Any, name: str) -> Any:
    """A TOML value or an environment string as a setting of type ``kind``; ConfigError names ``name``.

    The one conversion every loader uses: numbers may come as strings (the environment's
    only type), a whole float is an int, booleans are true/false or 1/0, yes/no, on/off.
    """
    optional = type(None) in typing.get_args(kind)
    if optional:
        if raw == "":
            return None
        kind = next(k for k in typing.get_args(kind) if k is not type(None))
    text = raw.strip().lower() if isinstance(raw, str) else None
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise _bad_value(name, raw, "true or false (or 1/0, yes/no, on/off)")
    if kind is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        if text is not None and text.lstrip("+-").isdigit():
            return int(text)
        raise _bad_value(name, raw, "a whole number")
    if kind is float:
        number = _number(raw)
        if number is None or not math.isfinite(number):
            raise _bad_value(name, raw, "a number")
        return number
    if kind is str and isinstance(raw, str):
        return raw
    if kind == tuple[str, ...]:  # a TOML list of strings, or a comma-separated string (the environment's)
        items = raw.split(",") if isinstance(raw, str) else raw
        if isinstance(items, list) and all(isinstance(item, str) for item in items):
            return tuple(item.strip() for item in items if item.strip())
        raise _bad_value(name, raw, "a list of strings")
    if kind is Path and isinstance(raw, str) and raw:  # Path("") is the working directory: never meant
        return Path(raw)
    raise _bad_value(name, raw, "a path" if kind is Path else "a string")


def _number(raw: object) -> float | None:
    if isinstance(raw, bool):  # a bool is an int to Python, never a number to a user
        return None
    if isinstance(raw, int | float):
        return float(raw)
    try:
        return float(raw) if isinstance(raw, str) else None
    except ValueError:
        return None


def _bad_value(name: str, raw: object, expected: str) -> ConfigError:
    return ConfigError(f"setting {name}: expected {expected}, got {raw!r}")


def load_settings(config_file: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """The one loader: defaults < the TOML file < ``SANDLOT_*`` variables (see the module's docstring)."""
    env = os.environ if environ is None else environ
    path = config_file or (Path(env["SANDLOT_CONFIG"]) if env.get("SANDLOT_CONFIG") else None)
    data = _read_toml(path) if path is not None else {}
    in_file = f" in {path}" if path is not None else ""
    top: dict[str, Any] = {}
    tables: dict[str, dict[str, Any]] = {}
    for key, raw in data.items():
        if key not in _TABLES:
            if key not in _TOP_LEVEL:
                if isinstance(raw, dict):
                    raise _unknown(f"[{key}]", in_file, key, _TABLES, section=True)
                raise _unknown(key, in_file, key, _TOP_LEVEL)
            top[key] = raw
        elif isinstance(raw, dict):
            tables[key] = raw
        else:
            raise _bad_value(f"{key}{in_file}", raw, f"a table [{key}]")
    base = Settings()
    values: dict[str, Any] = _overlay(base, top, env, "SANDLOT_", "", in_file, skip=_TABLES)
    for name in _LIMIT_TABLES:
        if name in tables:
            values[name] = dataclasses.replace(
                getattr(base, name), **_overlay(getattr(base, name), tables[name], {}, None, name, in_file)
            )
    judge0_table = dict(tables.get("judge0", {}))
    judge0_languages = tuple(_judge0_languages(judge0_table.pop("languages", {}), in_file))
    judge0 = _overlay(
        base.judge0, judge0_table, env, _SECTIONS["judge0"], "judge0", in_file, skip=_NOT_VARIABLES["judge0"]
    )
    judge0["languages"] = judge0_languages
    server = _overlay(base.server, tables.get("server", {}), env, _SECTIONS["server"], "server", in_file)
    server["api_keys"] = tuple(_api_keys(tables.get("api_keys", {}), env, in_file))
    _warn_unknown_variables(env)
    return dataclasses.replace(
        base,
        server=dataclasses.replace(base.server, **server),
        judge0=dataclasses.replace(base.judge0, **judge0),
        **values,
    )


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc


def _overlay(
    current: object,
    table: Mapping[str, Any],
    env: Mapping[str, str],
    env_prefix: str | None,
    section: str,
    in_file: str,
    *,
    skip: tuple[str, ...] = ("api_keys",),
) -> dict[str, Any]:
    """The values a section's table, then its environment variables, set; unknown keys refused."""
    kinds = _kinds(type(current))
    names = [name for name in kinds if name not in skip]
    values: dict[str, Any] = {}
    for key, raw in table.items():
        label = f"[{section}].{key}" if section else key
        if key not in names:
            raise _unknown(label, in_file, key, names)
        values[key] = coerce(raw, kinds[key], label + in_file)
    for name in names if env_prefix is not None else ():
        variable = f"{env_prefix}{name.upper()}"
        if variable in env:
            label = f"[{section}].{name}" if section else name
            values[name] = coerce(env[variable], kinds[name], f"{label} ({variable})")
    return values


def _kinds(section: type) -> dict[str, Any]:
    return typing.get_type_hints(section)


def _unknown(label: str, in_file: str, key: str, known: typing.Iterable[str], *, section: bool = False) -> ConfigError:
    hint = _did_you_mean(key, known, "[{}]" if section else "{}")
    return ConfigError(f"unknown {'section' if section else 'setting'} {label}{in_file}{hint}")


def _did_you_mean(name: str, known: typing.Iterable[str], form: str = "{}") -> str:
    import difflib  # only on the way to an error or a warning: keeps a command's start-up import-light

    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {form.format(close[0])}?" if close else ""


def _api_keys(table: Mapping[str, Any], env: Mapping[str, str], in_file: str) -> Iterator[ApiKey]:
    for key, spec in table.items():
        if isinstance(spec, str):
            yield ApiKey(key, spec)
            continue
        if not isinstance(spec, dict):
            raise _bad_value(f"[api_keys].{key}{in_file}", spec, 'a tenant name or a table { tenant = "..." }')
        table = dict(spec)
        where = f"[api_keys].{key}.environments{in_file}"
        environments = _environment_names(table.pop("environments", None), where)
        fields = _overlay(ApiKey(key, key), table, {}, None, f"api_keys.{key}", in_file, skip=("key", "environments"))
        yield ApiKey(**{"key": key, "tenant": key, **fields, "environments": environments})
    for pair in filter(None, env.get("SANDLOT_API_KEYS", "").split(",")):
        key, _, tenant = pair.partition(":")
        yield ApiKey(key.strip(), tenant.strip() or key.strip())


def _judge0_languages(table: object, in_file: str) -> Iterator[Judge0EnvironmentLanguage]:
    """``[judge0.languages]``: ``ID = { name = "...", language = "...", environment = "..." }``."""
    if not isinstance(table, dict):
        raise _bad_value(f"[judge0].languages{in_file}", table, "a table [judge0.languages]")
    for key, entry in table.items():
        where = f"[judge0.languages].{key}{in_file}"
        if not key.isdigit() or int(key) <= 0:
            raise _bad_value(where, key, "a language id (a positive whole number)")
        if not isinstance(entry, dict) or set(entry) != {"name", "language", "environment"}:
            raise _bad_value(where, entry, '{ name = "...", language = "...", environment = "..." }')
        if not all(isinstance(value, str) and value for value in entry.values()):
            raise _bad_value(where, entry, "non-empty strings for name, language and environment")
        yield Judge0EnvironmentLanguage(int(key), entry["name"], entry["language"], entry["environment"])


def _environment_names(raw: object, name: str) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(item, str) and item for item in raw):
        raise _bad_value(name, raw, "a list of environment names")
    return tuple(raw)


def setting_variables() -> frozenset[str]:
    """Every ``SANDLOT_*`` environment variable a setting is read from."""
    names = {f"SANDLOT_{name.upper()}" for name in _TOP_LEVEL}
    for section, prefix in _SECTIONS.items():
        fields = _kinds(type(getattr(Settings(), section)))
        names.update(f"{prefix}{name.upper()}" for name in fields if name not in _NOT_VARIABLES[section])
    return frozenset(names)


def _warn_unknown_variables(env: Mapping[str, str]) -> None:
    known = setting_variables() | _OTHER_VARIABLES
    for variable in sorted(name for name in env if name.startswith("SANDLOT_") and name not in known):
        log.warning("sandlot: ignoring %s: no setting reads it%s", variable, _did_you_mean(variable, sorted(known)))


def server_settings_from(settings: Settings, **flags: object) -> ServerSettings:
    """The loaded ``[server]`` settings with the command line's flags (those not None) on top, checked."""
    from sandlot.sandbox.box import ISOLATION_LEVELS  # the box's own list; a lazy import keeps `run` light

    server = settings.server
    kinds = _kinds(ServerSettings)
    given: dict[str, Any] = {name: value for name, value in flags.items() if value is not None}
    for name in given:
        if name not in kinds:
            raise TypeError(f"server_settings_from: no server setting {name!r}")
    server = dataclasses.replace(server, **given)
    levels = [("[server].default_isolation", server.default_isolation)]
    levels += [(f"[api_keys].{k.key}.min_isolation", k.min_isolation) for k in server.api_keys]
    for name, level in levels:
        if level not in ISOLATION_LEVELS:
            raise _bad_value(name, level, "one of " + ", ".join(ISOLATION_LEVELS))
    return server


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
