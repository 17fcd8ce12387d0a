"""Hostile and broken images: each refused or neutralised, the host checked afterwards, nothing half-left."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import stat
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandlot.environments.store import EnvironmentStore
from sandlot.environments.unpack import UnpackLimits
from sandlot.errors import EnvironmentLimitExceeded, ImageRejected
from tests.oci_images import Entry, busybox_base, compress, layer, sha, write_docker_archive, write_oci_layout


@pytest.fixture
def host_target() -> Iterator[Path]:
    """A host directory outside the store that a hostile layer aims at (must stay empty)."""
    path = Path(f"/tmp/sandlot-env-target-{uuid.uuid4().hex}")
    path.mkdir()
    yield path
    leaked = list(path.iterdir())
    shutil.rmtree(path)
    assert leaked == [], "a hostile layer wrote on the host"


def _left_behind(store: EnvironmentStore) -> list[str]:
    """What a refused import left in the store (only the lock directory may remain)."""
    return sorted(name for name in os.listdir(store.root) if name != ".locks") if store.root.exists() else []


def _refused(tmp_path: Path, layers: list[bytes], match: str, **kwargs: object) -> EnvironmentStore:
    write_oci_layout(tmp_path / "img", layers, **kwargs)  # type: ignore[arg-type]
    store = EnvironmentStore(tmp_path / "state")
    with pytest.raises(ImageRejected, match=match):
        store.import_image("evil", tmp_path / "img")
    assert _left_behind(store) == []
    assert store.names() == {}
    return store


def test_dot_dot_path_is_refused(tmp_path: Path, host_target: Path) -> None:
    climb = "../" * 12 + str(host_target).lstrip("/") + "/escaped"
    _refused(tmp_path, [busybox_base(), layer(Entry(climb, data=b"x"))], "climbs out with '..'")


def test_absolute_path_is_refused(tmp_path: Path, host_target: Path) -> None:
    _refused(tmp_path, [layer(Entry(f"{host_target}/escaped", data=b"x"))], "absolute path")


@pytest.mark.parametrize("relative", [False, True])
def test_symlink_then_write_through_it_is_refused(tmp_path: Path, host_target: Path, relative: bool) -> None:
    target = "../" * 12 + str(host_target).lstrip("/") if relative else str(host_target)
    planted = layer(Entry("lib", tarfile.SYMTYPE, linkname=target), Entry("lib/escaped", data=b"x"))
    _refused(tmp_path, [busybox_base(), planted], "goes through 'lib', which is a symlink")


def test_symlink_planted_by_a_lower_layer_is_not_followed_either(tmp_path: Path, host_target: Path) -> None:
    lower = layer(Entry("etc2", tarfile.SYMTYPE, linkname=str(host_target)))
    upper = layer(Entry("etc2/sub/escaped", data=b"x"), Entry("etc2/.wh.x"))
    _refused(tmp_path, [lower, upper], "goes through 'etc2'")


@pytest.mark.parametrize(
    ("linkname", "match"),
    [("/etc/passwd", "absolute path"), ("../" * 12 + "etc/passwd", "climbs out"), ("etc/passwd", "not a file")],
)
def test_hardlink_to_a_host_path_is_refused(tmp_path: Path, linkname: str, match: str) -> None:
    links_before = os.stat("/etc/passwd").st_nlink
    _refused(tmp_path, [busybox_base(), layer(Entry("stolen", tarfile.LNKTYPE, linkname=linkname))], match)
    assert os.stat("/etc/passwd").st_nlink == links_before


def test_devices_fifos_setid_bits_and_capabilities_are_neutralised(tmp_path: Path) -> None:
    evil = layer(
        Entry("dev/mem", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=1),
        Entry("dev/sda", tarfile.BLKTYPE, mode=0o666, devmajor=8, devminor=0),
        Entry("run/pipe", tarfile.FIFOTYPE, mode=0o666),
        Entry("bin/su", data=b"#!/bin/sh\n", mode=0o4755),
        Entry("bin/sg", data=b"#!/bin/sh\n", mode=0o2755),
        Entry("bin/cap", data=b"#!/bin/sh\n", mode=0o755, pax={"SCHILY.xattr.security.capability": "\x01" * 20}),
        Entry("tmp/", tarfile.DIRTYPE, mode=0o1777),
    )
    write_oci_layout(tmp_path / "img", [busybox_base(), evil])
    store = EnvironmentStore(tmp_path / "state")
    env = store.import_image("neutral", tmp_path / "img").environment
    rootfs = store.rootfs("neutral")
    for dropped in ("dev/mem", "dev/sda", "run/pipe"):
        assert not (rootfs / dropped).exists() and not (rootfs / dropped).is_symlink()
    for name in ("su", "sg", "cap"):
        assert stat.S_IMODE((rootfs / "bin" / name).stat().st_mode) == 0o555
        assert os.listxattr(rootfs / "bin" / name) == []
    assert stat.S_IMODE((rootfs / "tmp").stat().st_mode) == 0o555
    assert env.dropped == {"device": 2, "fifo": 1, "setid-bit": 2}


def test_a_layer_over_the_size_cap_is_refused_naming_the_limit(tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "img", [layer(Entry("big", data=b"\0" * (3 * 1024 * 1024)))])
    store = EnvironmentStore(tmp_path / "state", limits=UnpackLimits(max_total_bytes=1024 * 1024))
    with pytest.raises(EnvironmentLimitExceeded, match="environment_import_max_bytes=1048576") as caught:
        store.import_image("bomb", tmp_path / "img")
    assert caught.value.limit == "environment_import_max_bytes"
    assert _left_behind(store) == []


def test_a_layer_over_the_file_count_cap_is_refused_naming_the_limit(tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "img", [layer(*(Entry(f"f{n}") for n in range(200)))])
    store = EnvironmentStore(tmp_path / "state", limits=UnpackLimits(max_files=100))
    with pytest.raises(EnvironmentLimitExceeded, match="environment_import_max_files=100"):
        store.import_image("bomb", tmp_path / "img")
    assert _left_behind(store) == []


def test_a_blob_whose_digest_does_not_match_is_refused(tmp_path: Path) -> None:
    layers = [busybox_base(), layer(Entry("etc/extra", data=b"x"))]
    write_oci_layout(tmp_path / "img", layers)
    blob = tmp_path / "img/blobs/sha256" / sha(compress(layers[1], "gzip")).split(":")[1]
    blob.write_bytes(compress(layer(Entry("etc/extra", data=b"y")), "gzip"))  # swapped content, same name
    store = EnvironmentStore(tmp_path / "state")
    with pytest.raises(ImageRejected, match="layer 2 of 2: digest mismatch"):
        store.import_image("swapped", tmp_path / "img")
    assert _left_behind(store) == []


def test_a_layer_that_does_not_match_its_diff_id_is_refused(tmp_path: Path) -> None:
    _refused(tmp_path, [busybox_base()], "against the config's diff_id", diff_ids=[sha(b"another layer")])


def test_an_unknown_media_type_is_refused_naming_it(tmp_path: Path) -> None:
    _refused(tmp_path, [busybox_base()], "unknown media type 'application/x-rar'", media_types=["application/x-rar"])


def test_a_corrupt_gzip_layer_is_refused(tmp_path: Path) -> None:
    packed = bytearray(gzip.compress(busybox_base()))
    packed[len(packed) // 2 : len(packed) // 2 + 64] = b"\xff" * 64  # its digest is of these bytes: only gzip fails
    _refused(tmp_path, [busybox_base()], "corrupt gzip data", blobs=[bytes(packed)])


def test_a_truncated_tar_is_refused(tmp_path: Path) -> None:
    whole = busybox_base()
    cut = whole[: len(whole) // 2]
    _refused(tmp_path, [cut], "not a valid tar|unexpected end", compression=["none"])


def test_a_truncated_zstd_layer_is_refused(tmp_path: Path) -> None:
    packed = compress(busybox_base(), "zstd")
    cut = packed[: len(packed) // 2]  # the decompressor ends quietly; the tar inside is cut short
    _refused(tmp_path, [busybox_base()], "corrupt zstd data|unexpected end", compression=["zstd"], blobs=[cut])


def test_a_missing_blob_is_refused(tmp_path: Path) -> None:
    layers = [busybox_base()]
    write_oci_layout(tmp_path / "img", layers)
    (tmp_path / "img/blobs/sha256" / sha(compress(layers[0], "gzip")).split(":")[1]).unlink()
    store = EnvironmentStore(tmp_path / "state")
    with pytest.raises(ImageRejected, match="missing"):
        store.import_image("partial", tmp_path / "img")
    assert _left_behind(store) == []


def test_not_an_image_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    store = EnvironmentStore(tmp_path / "state")
    with pytest.raises(ImageRejected, match="not a readable image archive"):
        store.import_image("x", tmp_path / "notes.txt")
    with pytest.raises(ImageRejected, match="no such file"):
        store.import_image("x", tmp_path / "absent.tar")


def _blob_named(layout: Path, digest: str) -> Path:
    return layout / "blobs/sha256" / digest.split(":")[1]


@pytest.mark.parametrize("which", ["manifest", "config"])
def test_a_tampered_manifest_or_config_is_refused(tmp_path: Path, which: str) -> None:
    config_digest = write_oci_layout(tmp_path / "img", [busybox_base()])
    index = json.loads((tmp_path / "img/index.json").read_text())
    target = config_digest if which == "config" else index["manifests"][0]["digest"]
    blob = _blob_named(tmp_path / "img", target)
    blob.write_bytes(blob.read_bytes().replace(b"amd64", b"AMD64") + b" ")
    store = EnvironmentStore(tmp_path / "state")
    with pytest.raises(ImageRejected, match=f"image {which} .*digest mismatch"):
        store.import_image("tampered", tmp_path / "img")
    assert _left_behind(store) == []


def test_a_docker_archive_whose_config_is_not_its_name_is_refused(tmp_path: Path) -> None:
    digest = write_docker_archive(tmp_path / "img.tar", [busybox_base()])
    with tarfile.open(tmp_path / "img.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar if m.isreg()}  # type: ignore[union-attr]
    name = f"{digest.split(':')[1]}.json"
    members[name] = members[name].replace(b"PATH=/bin", b"PATH=/evil")
    with tarfile.open(tmp_path / "img.tar", "w") as tar:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    store = EnvironmentStore(tmp_path / "state")
    with pytest.raises(ImageRejected, match=r"image config .*digest mismatch"):
        store.import_image("tampered", tmp_path / "img.tar")


def test_an_image_without_this_hosts_platform_is_refused_naming_what_it_has(tmp_path: Path) -> None:
    write_oci_layout(tmp_path / "img", [busybox_base()])
    store = EnvironmentStore(tmp_path / "state")
    with pytest.raises(ImageRejected, match=r"no manifest for linux/riscv64 \(platforms: linux/amd64, linux/arm64\)"):
        store.import_image("elsewhere", tmp_path / "img", architecture="riscv64")


def test_an_unpacked_docker_save_directory_cannot_name_files_outside_it(tmp_path: Path) -> None:
    digest = write_docker_archive(tmp_path / "img.tar", [busybox_base()])
    with tarfile.open(tmp_path / "img.tar") as tar:
        tar.extractall(tmp_path / "dir")  # our own archive, just written
    manifest = json.loads((tmp_path / "dir/manifest.json").read_text())
    manifest[0]["Layers"] = ["../" * 12 + "etc/passwd"]
    (tmp_path / "dir/manifest.json").write_text(json.dumps(manifest))
    store = EnvironmentStore(tmp_path / "state")
    with pytest.raises(ImageRejected, match="outside the image directory"):
        store.import_image("out", tmp_path / "dir")
    assert _left_behind(store) == [] and digest
