"""The seccomp program is compiled once per host and kept in the state dir, never read stale.

Every ``sandlot run`` starts a new process, which compiled the same policy with
libseccomp again (~2-3 ms): ``cached_filter`` keeps the BPF program under a name
digesting the policy module, the libseccomp version and the kernel.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sandlot.sandbox import seccomp


def _cached(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("seccomp-*.bpf"))


def test_the_cached_program_is_the_compiled_one(tmp_path: Path) -> None:
    program = seccomp.cached_filter(tmp_path)
    assert program == seccomp.compile_filter()
    [kept] = _cached(tmp_path)
    assert kept.read_bytes() == program
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [kept.name]  # no temporary file left


def test_a_later_start_reads_it_without_compiling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    program = seccomp.cached_filter(tmp_path)

    def no_compiling() -> bytes:
        raise AssertionError("compiled again although the cache holds the program")

    monkeypatch.setattr(seccomp, "compile_filter", no_compiling)
    assert seccomp.cached_filter(tmp_path) == program


def test_a_damaged_file_is_compiled_again(tmp_path: Path) -> None:
    program = seccomp.cached_filter(tmp_path)
    [kept] = _cached(tmp_path)
    kept.write_bytes(program[:-3])  # not whole BPF instructions
    assert seccomp.cached_filter(tmp_path) == program
    assert kept.read_bytes() == program


def test_another_kernel_gets_a_program_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seccomp.cached_filter(tmp_path)
    real = os.uname()
    other = os.uname_result((real.sysname, real.nodename, real.release + "-other", real.version, real.machine))
    monkeypatch.setattr(os, "uname", lambda: other)
    seccomp.cached_filter(tmp_path)
    assert len(_cached(tmp_path)) == 2
