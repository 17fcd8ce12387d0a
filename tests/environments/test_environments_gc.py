"""``sandlot env gc`` does what docs/environments.md says: it removes environments no name points to and
the litter of interrupted imports (temp directories, half-written names files, stale lock files), and
nothing that is named or still being made."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from sandlot.environments import store as store_module
from sandlot.environments.store import EnvironmentStore
from tests.oci_images import Entry, busybox_base, layer, write_oci_layout


def test_gc_removes_the_unnamed_and_the_litter_and_keeps_the_rest(tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "a", [busybox_base()])
    write_oci_layout(tmp_path / "b", [busybox_base(), layer(Entry("etc/b", data=b"b"))])
    store = EnvironmentStore(tmp_path / "state")
    kept = store.import_image("kept", tmp_path / "a").environment.digest.split(":")[1]
    gone = store.import_image("moved", tmp_path / "b").environment.digest.split(":")[1]
    store.import_image("moved", tmp_path / "a")  # b is unnamed now
    removed_named = store.import_image("dropped", tmp_path / "b")
    store.remove("dropped")  # its files went with its last name; its lock file stayed
    assert removed_named.environment.digest.split(":")[1] == gone
    store.import_image("moved2", tmp_path / "b")
    store.import_image("moved2", tmp_path / "a")  # b unnamed again
    crashed = store.root / f".tmp-{'1' * 64}-x"
    (crashed / "rootfs").mkdir(parents=True)
    (store.root / ".locks" / f"{'1' * 64}.lock").touch()
    half_written = store.root / ".names.json.4242"
    half_written.write_text("{")
    # An import still running: its temp directory and lock stay.
    running = store.root / f".tmp-{'2' * 64}-y"
    (running / "rootfs").mkdir(parents=True)
    fd = os.open(store.root / ".locks" / f"{'2' * 64}.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        removed = store.gc()
    finally:
        os.close(fd)
    assert removed == [crashed.name, f"sha256:{gone}"]
    assert sorted(os.listdir(store.root)) == sorted([".locks", kept, "names.json", running.name])
    assert sorted(os.listdir(store.root / ".locks")) == sorted(
        [f"{kept}.lock", "names.lock", "disk.lock", f"{'2' * 64}.lock"]
    )
    assert sorted(store.names()) == ["kept", "moved", "moved2"]
    assert (store.rootfs("kept") / "etc/marker").is_file()


def test_a_lock_removed_while_waited_on_is_taken_afresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An import that waited on a digest's lock while gc removed the lock file must not hold a lock nobody
    else can see: it locks the file in place instead, so a later import serialises with it."""
    store = EnvironmentStore(tmp_path / "state")
    store.gc()  # makes the store
    hexd = "3" * 64
    path = store.root / ".locks" / f"{hexd}.lock"
    calls: list[int] = []

    class _GcMeanwhile:
        """fcntl whose first flock returns only after gc removed the file (what a wait may span)."""

        def __getattr__(self, name: str) -> object:
            return getattr(fcntl, name)

        @staticmethod
        def flock(fd: int, operation: int) -> None:
            calls.append(fd)
            if len(calls) == 1:
                path.unlink()
            fcntl.flock(fd, operation)

    monkeypatch.setattr(store_module, "fcntl", _GcMeanwhile())
    with store._lock(hexd) as held:
        assert held and len(calls) == 2  # the unlinked file's lock was let go and the new file's taken
        assert os.stat(path).st_ino == os.fstat(calls[1]).st_ino
        other = os.open(path, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # a second import sees it held
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(other)
