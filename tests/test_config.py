"""Settings: TOML and environment precedence, limit resolution and units, LimitRequest parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandlot.config import (
    DEFAULT_COMPILE_LIMITS,
    DEFAULT_RUN_LIMITS,
    KIB,
    MAX_COMPILE_LIMITS,
    MAX_RUN_LIMITS,
    MIB,
    LimitRequest,
    Settings,
    load_settings,
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
    assert settings.extra == {}


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


def test_unknown_sections_go_to_extra(tmp_path: Path) -> None:
    path = _toml(tmp_path, '[api]\nport = 8080\nhost = "::1"\n')
    settings = load_settings(path, environ={})
    assert settings.extra == {"api": {"port": 8080, "host": "::1"}}


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
    from sandlot.broker.redis import DEFAULT_PRESENCE_TTL_S
    from sandlot.service import CLAIM_GRACE_S, effective_claim_idle_ms, server_settings_from

    settings = load_settings(environ={})
    monkeypatch.setenv("SANDLOT_REDIS_URL", "redis://127.0.0.1:6390/0")
    monkeypatch.setenv("SANDLOT_MAX_DELIVERIES", "5")
    server = server_settings_from(settings, start_worker=False)
    assert (server.redis_url, server.max_deliveries, server.start_worker) == ("redis://127.0.0.1:6390/0", 5, False)
    longest_s = settings.run_maxima.wall_time_limit_s + settings.compile_maxima.wall_time_limit_s
    assert effective_claim_idle_ms(settings, server) == int((longest_s + CLAIM_GRACE_S) * 1000)
    monkeypatch.setenv("SANDLOT_CLAIM_IDLE_MS", "2000")
    assert effective_claim_idle_ms(settings, server_settings_from(settings)) == 2000
    assert server.presence_ttl_s == DEFAULT_PRESENCE_TTL_S  # a dead worker's jobs move after a few seconds
    monkeypatch.setenv("SANDLOT_PRESENCE_TTL_S", "9")
    assert server_settings_from(settings).presence_ttl_s == 9.0
