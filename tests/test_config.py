"""Settings: precedence (defaults, TOML, environment, flags), unknown keys, coercion, limit resolution, LimitRequest."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import pytest

from sandlot.config import (
    DEFAULT_COMPILE_LIMITS,
    DEFAULT_RUN_LIMITS,
    KIB,
    MAX_COMPILE_LIMITS,
    MAX_RUN_LIMITS,
    MIB,
    ApiKey,
    LimitRequest,
    ServerSettings,
    Settings,
    coerce,
    load_settings,
    server_settings_from,
    setting_variables,
)
from sandlot.errors import ConfigError, RejectedError


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sandlot.toml"
    path.write_text(text)
    return path


# ------------------------------------------------------------ load_settings


def test_defaults_without_file_or_env() -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.run_defaults == DEFAULT_RUN_LIMITS
    assert settings.run_maxima == MAX_RUN_LIMITS


def test_toml_overrides_defaults(tmp_path: Path) -> None:
    path = _toml(
        tmp_path,
        'max_boxes = 8\ncpu_cores_per_box = 2\nstate_dir = "/srv/sandlot"\n\n[run_defaults]\ntime_limit_s = 2.5\n',
    )
    settings = load_settings(path, environ={})
    assert settings.max_boxes == 8
    assert settings.cpu_cores_per_box == 2.0
    assert isinstance(settings.cpu_cores_per_box, float)
    assert settings.state_dir == Path("/srv/sandlot")
    assert settings.run_defaults.time_limit_s == 2.5
    # The rest of the section keeps its defaults.
    assert settings.run_defaults.memory_limit_bytes == DEFAULT_RUN_LIMITS.memory_limit_bytes
    assert settings.run_maxima == MAX_RUN_LIMITS
    assert settings.compile_defaults == DEFAULT_COMPILE_LIMITS


def test_toml_limit_sections_coerce_types(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[compile_maxima]\ntime_limit_s = 90\nmemory_limit_bytes = 1073741824\n")
    settings = load_settings(path, environ={})
    assert settings.compile_maxima.time_limit_s == 90.0
    assert isinstance(settings.compile_maxima.time_limit_s, float)
    assert settings.compile_maxima.memory_limit_bytes == 1024 * MIB
    assert settings.compile_maxima.max_processes == MAX_COMPILE_LIMITS.max_processes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[serverr]\nhost = "::1"\n', r"unknown section \[serverr\] in \S+sandlot\.toml; did you mean \[server\]\?"),
        ("[server]\nhtp_port = 80\n", r"unknown setting \[server\]\.htp_port in \S+; did you mean http_port\?"),
        ("max_boxs = 3\n", r"unknown setting max_boxs in \S+; did you mean max_boxes\?"),
        ("[judge0]\nhomepag = 'x'\n", r"unknown setting \[judge0\]\.homepag in \S+; did you mean homepage\?"),
        ("[run_maxima]\ntime_limit = 3\n", r"\[run_maxima\]\.time_limit in \S+; did you mean time_limit_s\?"),
        ("[api_keys.k1]\nmax_concurent = 3\n", r"\[api_keys\.k1\]\.max_concurent .*did you mean max_concurrent\?"),
        ("[api]\nport = 8080\n", r"unknown section \[api\] in \S+sandlot\.toml$"),
        ("cgroup_root = '/sys/fs/cgroup'\n", r"unknown setting cgroup_root"),  # never read: removed
    ],
)
def test_unknown_keys_and_tables_are_refused_by_name(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(_toml(tmp_path, text), environ={})


def test_config_file_from_env(tmp_path: Path) -> None:
    path = _toml(tmp_path, "max_boxes = 3\n")
    settings = load_settings(environ={"SANDLOT_CONFIG": str(path)})
    assert settings.max_boxes == 3


def test_env_overrides_toml(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'max_boxes = 8\ncgroup_name = "from-toml"\n')
    env = {
        "SANDLOT_MAX_BOXES": "16",
        "SANDLOT_CGROUP_NAME": "from-env",
        "SANDLOT_RUN_DIR": "/run/elsewhere",
        "SANDLOT_CPU_CORES_PER_BOX": "0.5",
        "SANDLOT_LANGUAGES_FILE": "/etc/sandlot/languages.toml",
    }
    settings = load_settings(path, environ=env)
    assert settings.max_boxes == 16
    assert settings.cgroup_name == "from-env"
    assert settings.run_dir == Path("/run/elsewhere")
    assert settings.cpu_cores_per_box == 0.5
    assert settings.languages_file == Path("/etc/sandlot/languages.toml")


def test_explicit_environ_ignores_process_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SANDLOT_CONFIG", raising=False)
    monkeypatch.setenv("SANDLOT_MAX_BOXES", "5")
    assert load_settings(environ={}).max_boxes == Settings().max_boxes
    assert load_settings().max_boxes == 5


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ('max_boxes = "many"\n', "max_boxes"),
        ('cpu_cores_per_box = "fast"\n', "cpu_cores_per_box"),
        ('[run_defaults]\ntime_limit_s = "soon"\n', "time_limit_s"),
        ("run_defaults = 5\n", "run_defaults"),
        ("[run_maxima]\nbogus_limit = 1\n", "bogus_limit"),
    ],
)
def test_bad_toml_value_names_the_setting(tmp_path: Path, text: str, name: str) -> None:
    path = _toml(tmp_path, text)
    with pytest.raises(ConfigError, match=name):
        load_settings(path, environ={})


def test_bad_env_value_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="max_boxes"):
        load_settings(environ={"SANDLOT_MAX_BOXES": "lots"})


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="not found"):
        load_settings(missing, environ={})
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_settings(environ={"SANDLOT_CONFIG": str(missing)})


def test_invalid_toml(tmp_path: Path) -> None:
    path = _toml(tmp_path, "max_boxes = = 3\n")
    with pytest.raises(ConfigError, match=r"sandlot\.toml"):
        load_settings(path, environ={})


# ------------------------------------------------------------ resolve_limits


def test_resolve_fills_defaults() -> None:
    settings = Settings()
    assert settings.resolve_limits(None) == DEFAULT_RUN_LIMITS
    assert settings.resolve_limits(LimitRequest()) == DEFAULT_RUN_LIMITS
    assert settings.resolve_limits(None, stage="compile") == DEFAULT_COMPILE_LIMITS


def test_resolve_units() -> None:
    limits = Settings().resolve_limits(
        LimitRequest(
            time_limit=1.5,
            wall_time_limit=3,
            memory_limit=100,
            max_processes=7,
            max_file_size=10,
            max_output=64,
        )
    )
    assert limits.time_limit_s == 1.5
    assert limits.wall_time_limit_s == 3.0
    assert limits.memory_limit_bytes == 100 * MIB
    assert limits.max_processes == 7
    assert limits.max_file_size_bytes == 10 * KIB
    assert limits.max_output_bytes == 64 * KIB
    assert isinstance(limits.memory_limit_bytes, int)
    assert isinstance(limits.max_output_bytes, int)
    assert isinstance(limits.max_processes, int)


def test_resolve_partial_request_keeps_other_defaults() -> None:
    limits = Settings().resolve_limits(LimitRequest(memory_limit=32))
    assert limits.memory_limit_bytes == 32 * MIB
    assert limits.time_limit_s == DEFAULT_RUN_LIMITS.time_limit_s
    assert limits.max_output_bytes == DEFAULT_RUN_LIMITS.max_output_bytes


def test_resolve_accepts_exact_maximum() -> None:
    limits = Settings().resolve_limits(LimitRequest(time_limit=60, memory_limit=4096, max_output=64 * 1024))
    assert limits.time_limit_s == MAX_RUN_LIMITS.time_limit_s
    assert limits.memory_limit_bytes == MAX_RUN_LIMITS.memory_limit_bytes
    assert limits.max_output_bytes == MAX_RUN_LIMITS.max_output_bytes


@pytest.mark.parametrize(
    ("request_", "name", "maximum"),
    [
        (LimitRequest(time_limit=61), "time_limit", "60 s"),
        (LimitRequest(wall_time_limit=1000), "wall_time_limit", "120 s"),
        (LimitRequest(memory_limit=4097), "memory_limit", "4096 MB"),
        (LimitRequest(max_processes=513), "max_processes", "512"),
        (LimitRequest(max_file_size=256 * 1024 + 1), "max_file_size", "262144 KB"),
        (LimitRequest(max_output=64 * 1024 + 1), "max_output", "65536 KB"),
    ],
)
def test_resolve_rejects_over_maximum(request_: LimitRequest, name: str, maximum: str) -> None:
    with pytest.raises(RejectedError) as info:
        Settings().resolve_limits(request_)
    assert info.value.field == name
    message = str(info.value)
    assert message.startswith(name + " ")
    assert f"maximum of {maximum}" in message


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), float("-inf")])
def test_resolve_rejects_non_positive_or_non_finite(value: float) -> None:
    with pytest.raises(RejectedError, match="time_limit") as info:
        Settings().resolve_limits(LimitRequest(time_limit=value))
    assert info.value.field == "time_limit"


def test_resolve_compile_stage_uses_compile_maxima() -> None:
    settings = Settings()
    # The run stage allows 64 MiB of output, the compile stage only 4 MiB.
    assert settings.resolve_limits(LimitRequest(max_output=4096), stage="compile").max_output_bytes == 4 * MIB
    with pytest.raises(RejectedError, match="max_output"):
        settings.resolve_limits(LimitRequest(max_output=4097), stage="compile")
    assert settings.resolve_limits(LimitRequest(max_output=4097)).max_output_bytes == 4097 * KIB


def test_resolve_uses_configured_maxima(tmp_path: Path) -> None:
    path = _toml(tmp_path, "[run_maxima]\ntime_limit_s = 2.0\n")
    settings = load_settings(path, environ={})
    with pytest.raises(RejectedError, match=r"time_limit 3 exceeds the maximum of 2 s"):
        settings.resolve_limits(LimitRequest(time_limit=3))


# ------------------------------------------------------------ LimitRequest.from_mapping


def test_from_mapping_accepts_numbers() -> None:
    request = LimitRequest.from_mapping({"time_limit": 2, "memory_limit": 64.0, "max_output": None})
    assert request == LimitRequest(time_limit=2.0, memory_limit=64)
    assert isinstance(request.time_limit, float)
    assert isinstance(request.memory_limit, int)
    assert request.max_output is None


def test_from_mapping_empty() -> None:
    assert LimitRequest.from_mapping({}) == LimitRequest()


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        ({"cpu": 1}, "limits.cpu", "unknown"),
        ({"time_limit": "5"}, "limits.time_limit", "number"),
        ({"memory_limit": "64"}, "limits.memory_limit", "number"),
        ({"time_limit": True}, "limits.time_limit", "number"),
        ({"max_processes": False}, "limits.max_processes", "number"),
        ({"memory_limit": 1.5}, "limits.memory_limit", "whole"),
        ({"max_output": 0.1}, "limits.max_output", "whole"),
        ({"time_limit": [1]}, "limits.time_limit", "number"),
    ],
)
def test_from_mapping_rejects(data: dict[str, object], field: str, reason: str) -> None:
    with pytest.raises(RejectedError, match=reason) as info:
        LimitRequest.from_mapping(data)
    assert info.value.field == field
    assert field in str(info.value)


def test_from_mapping_where_prefix() -> None:
    with pytest.raises(RejectedError) as info:
        LimitRequest.from_mapping({"bogus": 1}, where="compile_limits")
    assert info.value.field == "compile_limits.bogus"


def test_distributed_server_settings_and_the_derived_claim_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    from sandlot.config import SERVER_DEFAULTS, server_settings_from
    from sandlot.service import CLAIM_GRACE_S, effective_claim_idle_ms

    monkeypatch.delenv("SANDLOT_CONFIG", raising=False)
    monkeypatch.setenv("SANDLOT_REDIS_URL", "redis://127.0.0.1:6390/0")
    monkeypatch.setenv("SANDLOT_MAX_DELIVERIES", "5")
    settings = load_settings()  # the environment is read when the settings are loaded
    server = server_settings_from(settings, start_worker=False)
    assert (server.redis_url, server.max_deliveries, server.start_worker) == ("redis://127.0.0.1:6390/0", 5, False)
    longest_s = settings.run_maxima.wall_time_limit_s + settings.compile_maxima.wall_time_limit_s
    assert effective_claim_idle_ms(settings, server) == int((longest_s + CLAIM_GRACE_S) * 1000)
    monkeypatch.setenv("SANDLOT_CLAIM_IDLE_MS", "2000")
    assert effective_claim_idle_ms(settings, server_settings_from(load_settings())) == 2000
    assert server.presence_ttl_s == SERVER_DEFAULTS.presence_ttl_s  # a dead worker's jobs move after a few seconds
    monkeypatch.setenv("SANDLOT_PRESENCE_TTL_S", "9")
    assert server_settings_from(load_settings()).presence_ttl_s == 9.0


# ------------------------------------------------------------ sections, precedence, coercion


def test_precedence_defaults_file_environment_flags(tmp_path: Path) -> None:
    """Each layer wins over the one before, for every section the same way."""
    path = _toml(
        tmp_path,
        'max_boxes = 8\n[server]\nhttp_port = 1001\nhost = "::1"\n[judge0]\ncallback_allow_private = true\n',
    )
    env = {"SANDLOT_MAX_BOXES": "9", "SANDLOT_HTTP_PORT": "1002", "SANDLOT_JUDGE0_CALLBACK_ALLOW_PRIVATE": "no"}
    from_file = load_settings(path, environ={})
    assert (from_file.max_boxes, from_file.server.http_port, from_file.judge0.callback_allow_private) == (8, 1001, True)
    settings = load_settings(path, environ=env)
    assert (settings.max_boxes, settings.server.http_port, settings.judge0.callback_allow_private) == (9, 1002, False)
    assert settings.server.host == "::1"  # what the environment does not set stays the file's
    server = server_settings_from(settings, http_port=1003, grpc_port=None)
    assert (server.http_port, server.grpc_port, server.host) == (1003, ServerSettings().grpc_port, "::1")
    assert load_settings(environ={}).server == ServerSettings()


def test_api_keys_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = _toml(
        tmp_path,
        '[api_keys]\nk1 = "team-a"\nk2 = { tenant = "team-b", max_concurrent = 4, min_isolation = "gvisor" }\n',
    )
    keys = load_settings(path, environ={"SANDLOT_API_KEYS": "k3:team-c, k4"}).server.api_keys
    assert keys == (
        ApiKey("k1", "team-a"),
        ApiKey("k2", "team-b", max_concurrent=4, min_isolation="gvisor"),
        ApiKey("k3", "team-c"),
        ApiKey("k4", "k4"),
    )
    with pytest.raises(ConfigError, match=r"\[api_keys\]\.k1 in \S+: expected a tenant name or a table"):
        load_settings(_toml(tmp_path, "[api_keys]\nk1 = 5\n"), environ={})
    with pytest.raises(ConfigError, match=r"\[api_keys\.k1\]\.max_concurrent .*expected a whole number, got 'four'"):
        load_settings(_toml(tmp_path, '[api_keys.k1]\nmax_concurrent = "four"\n'), environ={})


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        (
            '[server]\nhttp_port = "eighty"\n',
            {},
            r"\[server\]\.http_port in \S+: expected a whole number, got 'eighty'",
        ),
        ("", {"SANDLOT_HTTP_PORT": "eighty"}, r"\[server\]\.http_port \(SANDLOT_HTTP_PORT\): .* got 'eighty'"),
        ("[server]\nprelaunch = 'maybe'\n", {}, r"\[server\]\.prelaunch in \S+: expected true or false"),
        ("", {"SANDLOT_PRELAUNCH": "flase"}, r"prelaunch \(SANDLOT_PRELAUNCH\): expected true or false .* 'flase'"),
        ("[server]\nhost = 8080\n", {}, r"\[server\]\.host in \S+: expected a string, got 8080"),
        ("[server]\nresult_ttl_s = inf\n", {}, r"\[server\]\.result_ttl_s in \S+: expected a number, got inf"),
        ("server = 5\n", {}, r"server in \S+: expected a table \[server\], got 5"),
        ("[judge0]\nhomepage = 3\n", {}, r"\[judge0\]\.homepage in \S+: expected a string, got 3"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_key_value_and_type(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(_toml(tmp_path, text), environ=env)
    assert not isinstance(info.value, RejectedError)  # the operator's mistake, at start-up: not a caller's


def test_an_unknown_isolation_level_is_a_config_error(tmp_path: Path) -> None:
    settings = load_settings(_toml(tmp_path, '[server]\ndefault_isolation = "vm"\n'), environ={})
    with pytest.raises(ConfigError, match=r"\[server\]\.default_isolation: expected one of jail, gvisor, got 'vm'"):
        server_settings_from(settings)
    settings = load_settings(_toml(tmp_path, '[api_keys.k]\nmin_isolation = "none"\n'), environ={})
    with pytest.raises(ConfigError, match=r"\[api_keys\]\.k\.min_isolation: .* got 'none'"):
        server_settings_from(settings)


@pytest.mark.parametrize(
    ("raw", "kind", "expected"),
    [
        (True, bool, True),
        ("yes", bool, True),
        (" ON ", bool, True),
        ("1", bool, True),
        ("0", bool, False),
        ("off", bool, False),
        ("", bool, False),
        ("16", int, 16),
        (16, int, 16),
        (16.0, int, 16),
        (" -3 ", int, -3),
        ("0.5", float, 0.5),
        (2, float, 2.0),
        ("/srv", Path, Path("/srv")),
        ("", Path | None, None),
        ("/etc/l.toml", Path | None, Path("/etc/l.toml")),
        ("x", str | None, "x"),
    ],
)
def test_coerce(raw: object, kind: object, expected: object) -> None:
    value = coerce(raw, kind, "name")
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ("maybe", bool),
        (2, bool),
        ("1.5", int),
        (1.5, int),
        (True, int),
        ("nan", float),
        (False, float),
        (3, str),
        ("", Path),
        (7, Path),
    ],
)
def test_coerce_refuses(raw: object, kind: object) -> None:
    with pytest.raises(ConfigError, match=r"setting name: expected .*, got " + re.escape(repr(raw))):
        coerce(raw, kind, "name")


def test_unknown_environment_variables_are_warned_about_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    env = {"SANDLOT_MAX_BOXEZ": "3", "SANDLOT_SERVER": "http://x", "SANDLOT_API_KEY": "k", "SANDLOT_HTTP_PORT": "1"}
    with caplog.at_level(logging.WARNING, logger="sandlot.config"):
        settings = load_settings(environ=env)
    assert settings.max_boxes == Settings().max_boxes
    assert [r.getMessage() for r in caplog.records] == [
        "sandlot: ignoring SANDLOT_MAX_BOXEZ: no setting reads it; did you mean SANDLOT_MAX_BOXES?"
    ]


def test_every_setting_has_one_environment_name() -> None:
    """Top-level and [server] keys share the SANDLOT_ prefix: no key may mean two settings."""
    top = {f.name for f in dataclasses.fields(Settings)}
    server = {f.name for f in dataclasses.fields(ServerSettings)}
    assert top & server == set()
    assert {"SANDLOT_MAX_BOXES", "SANDLOT_HTTP_PORT", "SANDLOT_API_KEYS", "SANDLOT_JUDGE0_HOMEPAGE"} <= (
        setting_variables()
    )
