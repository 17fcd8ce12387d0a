"""Importing images into the environment store: the three formats, whiteouts, and the sealed result."""

from __future__ import annotations

import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from sandlot.environments.store import EnvironmentStore
from tests.oci_images import (
    BUSYBOX,
    Entry,
    busybox_base,
    layer,
    tar_directory,
    write_docker_archive,
    write_oci_layout,
)


def _upper() -> bytes:
    """A second layer: whiteouts and an opaque directory, some written before the entries they spare."""
    return layer(
        Entry("usr/share/doc/.wh.gone"),
        Entry("opt/old/new", data=b"from layer 2\n"),
        Entry("opt/old/.wh..wh..opq"),  # after opt/old/new: hides layer 1's children, not this one
        Entry("opt/keep/.wh..wh..opq"),  # before its new child
        Entry("opt/keep/sub/fresh", data=b"fresh\n"),
        Entry("etc/marker", data=b"sandlot-env-marker v2\n"),  # replaces the lower file
        Entry("bin/sh", tarfile.SYMTYPE, linkname="/bin/busybox"),  # replaces the lower link
        Entry("etc/renamed", tarfile.LNKTYPE, linkname="etc/marker"),
        Entry(".wh.tmpdir"),
        Entry("etc/late", data=b"late v2\n"),
        Entry("etc/.wh.late"),  # after this layer's own etc/late: hides layer 1's only
    )


def _lower() -> bytes:
    return layer(
        Entry("usr/share/doc/gone", data=b"x"),
        Entry("usr/share/doc/stays", data=b"y"),
        Entry("opt/old/a", data=b"a"),
        Entry("opt/old/deep/b", data=b"b"),
        Entry("opt/keep/sub/stale", data=b"stale"),
        Entry("tmpdir/inner/file", data=b"z"),
        Entry("etc/late", data=b"late v1\n"),
    )


_EXPECTED = {
    "bin": "dir",
    "bin/busybox": "file",
    "bin/sh": "link:/bin/busybox",
    "etc": "dir",
    "etc/late": "file:late v2\n",
    "etc/marker": "file:sandlot-env-marker v2\n",
    "etc/renamed": "file:sandlot-env-marker v2\n",
    "opt": "dir",
    "opt/keep": "dir",
    "opt/keep/sub": "dir",
    "opt/keep/sub/fresh": "file:fresh\n",
    "opt/old": "dir",
    "opt/old/new": "file:from layer 2\n",
    "usr": "dir",
    "usr/share": "dir",
    "usr/share/doc": "dir",
    "usr/share/doc/stays": "file:y",
}


def tree(root: Path) -> dict[str, str]:
    found = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = f"link:{os.readlink(path)}"
        elif path.is_dir():
            found[rel] = "dir"
        else:
            data = path.read_bytes()
            found[rel] = "file" if len(data) > 1000 else f"file:{data.decode()}"
    return found


def _image(kind: str, base: Path) -> tuple[Path, str]:
    layers = [busybox_base(), _lower(), _upper()]
    if kind == "docker-archive":
        return base / "img.tar", write_docker_archive(base / "img.tar", layers)
    digest = write_oci_layout(base / "layout", layers, compression=["gzip", "zstd", "none"])
    if kind == "oci-archive":
        tar_directory(base / "layout", base / "img-oci.tar")
        return base / "img-oci.tar", digest
    return base / "layout", digest


@pytest.mark.parametrize("kind", ["oci-layout", "oci-archive", "docker-archive"])
def test_each_format_unpacks_exactly_the_image_and_busybox_runs_in_it(kind: str, tmp_path: Path) -> None:
    source, digest = _image(kind, tmp_path)
    store = EnvironmentStore(tmp_path / "state")
    outcome = store.import_image("bb", source)
    env = outcome.environment
    assert not outcome.cached
    assert (env.digest, env.kind, env.image_format) == (digest, "image", kind)
    assert (env.env, env.working_dir, env.user, env.cmd) == (
        ("PATH=/bin", "LANG=C.UTF-8"),
        "/work",
        "1000",
        ("/bin/sh",),
    )
    rootfs = store.rootfs("bb")
    assert tree(rootfs) == _EXPECTED
    assert (rootfs / "bin/busybox").read_bytes() == BUSYBOX.read_bytes()
    assert os.path.samefile(rootfs / "etc/marker", rootfs / "etc/renamed")  # the hard link kept as one
    assert env.file_count == len(_EXPECTED)
    # Sealed: root-owned, read-only, executables executable.
    for path in [rootfs, *rootfs.rglob("*")]:
        info = path.lstat()
        assert (info.st_uid, info.st_gid) == (0, 0), path
        if not stat.S_ISLNK(info.st_mode):
            assert stat.S_IMODE(info.st_mode) in {0o555, 0o444}, path
    assert stat.S_IMODE((rootfs / "bin/busybox").stat().st_mode) == 0o555
    # The image's own binary runs with the image as its root and sees the image's files.
    script = "busybox cat /etc/marker; busybox ls /opt/old"
    run = subprocess.run(["chroot", str(rootfs), "/bin/sh", "-c", script], capture_output=True, check=False)
    assert (run.returncode, run.stdout) == (0, b"sandlot-env-marker v2\nnew\n"), run.stderr


def test_the_same_image_in_another_format_is_the_same_environment(tmp_path: Path) -> None:
    store = EnvironmentStore(tmp_path / "state")
    layout, _ = _image("oci-layout", tmp_path)
    docker, _ = _image("docker-archive", tmp_path)
    first = store.import_image("one", layout)
    second = store.import_image("two", docker)
    assert second.cached and not first.cached
    assert first.environment.digest == second.environment.digest
    assert store.rootfs("one") == store.rootfs("two")
