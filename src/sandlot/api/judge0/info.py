"""Judge0's informational routes, from our own state: /config_info, /about, /system_info, /workers.

Every ``/config_info`` key Judge0 CE 1.13.1 has is present (the judge0 client
requires them all), in Judge0's units, with our defaults and maxima. The
switches say what this server really does: compiler options are not applied,
per-process limits and the network cannot be enabled, stack_limit is the
server's fixed rlimit, DELETE cancels.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from sandlot.api.judge0.callbacks import CallbackPolicy
from sandlot.api.judge0.submission import (
    DEFAULT_CPU_EXTRA_TIME_S,
    MAX_CPU_EXTRA_TIME_S,
    MAX_NUMBER_OF_RUNS,
    Judge0Limits,
)
from sandlot.service import Service

MAX_SUBMISSION_BATCH_SIZE = 20  # Judge0's default
WORKER_QUEUE_NAME = "sandlot"


def config_info(service: Service, limits: Judge0Limits, callbacks: CallbackPolicy) -> dict[str, Any]:
    return {
        "maintenance_mode": not service.accepting,
        "enable_wait_result": True,
        "enable_compiler_options": False,
        "allowed_languages_for_compile_options": [],
        "enable_command_line_arguments": True,
        "enable_submission_delete": True,
        "enable_callbacks": True,
        "callbacks_max_tries": callbacks.max_tries,
        "callbacks_timeout": callbacks.timeout_s,
        "enable_additional_files": True,
        "max_queue_size": service.server.max_queued,
        "cpu_time_limit": limits.cpu_time_limit,
        "max_cpu_time_limit": limits.max_cpu_time_limit,
        "cpu_extra_time": DEFAULT_CPU_EXTRA_TIME_S,
        "max_cpu_extra_time": MAX_CPU_EXTRA_TIME_S,
        "wall_time_limit": limits.wall_time_limit,
        "max_wall_time_limit": limits.max_wall_time_limit,
        "memory_limit": limits.memory_limit_kb,
        "max_memory_limit": limits.max_memory_limit_kb,
        "stack_limit": limits.stack_limit_kb,
        "max_stack_limit": limits.stack_limit_kb,
        "max_processes_and_or_threads": limits.max_processes,
        "max_max_processes_and_or_threads": limits.max_max_processes,
        "enable_per_process_and_thread_time_limit": False,
        "allow_enable_per_process_and_thread_time_limit": False,
        "enable_per_process_and_thread_memory_limit": False,
        "allow_enable_per_process_and_thread_memory_limit": False,
        "max_file_size": limits.max_file_size_kb,
        "max_max_file_size": limits.max_max_file_size_kb,
        "number_of_runs": 1,
        "max_number_of_runs": MAX_NUMBER_OF_RUNS,
        "redirect_stderr_to_stdout": False,
        "max_extract_size": limits.max_extract_size_kb,
        "enable_batched_submissions": True,
        "max_submission_batch_size": MAX_SUBMISSION_BATCH_SIZE,
        "submission_cache_duration": 0.0,
        "use_docs_as_homepage": False,
        "allow_enable_network": False,
        "enable_network": False,
    }


def workers(service: Service) -> list[dict[str, Any]]:
    """One queue: its depth and the worker slots (a slot is busy while its box runs a task)."""
    slots = service.worker.concurrency if service.worker is not None else 0
    working = min(service.pool.busy, slots)
    paused = 0 if service.accepting else slots - working
    return [
        {
            "queue": WORKER_QUEUE_NAME,
            "size": service.broker.queue_depth(),
            "total": slots,
            "available": slots,
            "idle": slots - working - paused,
            "working": working,
            "paused": paused,
            "failed": 0,
        }
    ]


def system_info() -> dict[str, str]:
    """What Judge0 gets from ``lscpu`` and ``free -h``, read from /proc (a door runs no processes)."""
    info = {"Architecture": platform.machine(), "CPU(s)": str(os.cpu_count() or 1)}
    cpuinfo = _read_proc("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), None)
    if model:
        info["Model name"] = model
    meminfo = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in _read_proc("/proc/meminfo"))}
    for label, key in (("Mem", "MemTotal"), ("Swap", "SwapTotal")):
        if key in meminfo:
            info[label] = _human_kib(int(meminfo[key].split()[0]))
    return info


def _read_proc(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except OSError:
        return []


def _human_kib(kib: int) -> str:
    """Like ``free -h``: 15Gi, 512Mi, 0B."""
    if kib == 0:
        return "0B"
    value = float(kib)
    for unit in ("Ki", "Mi", "Gi", "Ti"):
        if value < 1024 or unit == "Ti":
            return f"{value:.0f}{unit}" if value >= 10 else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")
