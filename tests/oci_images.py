"""Images written by the tests themselves with the standard library: layers, config, manifest and index.

Three formats from the same layers: an OCI image layout directory, that layout as a tar (as ``podman save
--format oci-archive`` writes it), and a ``docker save`` archive (manifest.json, <hex>.json, <id>/layer.tar).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

BUSYBOX = Path("/usr/bin/busybox")  # Debian's busybox-static: runs in a root with nothing else


@dataclass
class Entry:
    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    pax: dict[str, str] = field(default_factory=dict)


def layer(*entries: Entry) -> bytes:
    """An uncompressed layer tar holding ``entries`` in order."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type = entry.type
            info.mode = entry.mode
            info.linkname = entry.linkname
            info.devmajor, info.devminor = entry.devmajor, entry.devminor
            info.uid = info.gid = 1000  # the import must normalise ownership
            info.pax_headers = dict(entry.pax)
            info.size = len(entry.data) if entry.type == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(entry.data) if info.size else None)
    return out.getvalue()


def busybox_base() -> bytes:
    return layer(
        Entry("bin/", tarfile.DIRTYPE, mode=0o755),
        Entry("bin/busybox", data=BUSYBOX.read_bytes(), mode=0o755),
        Entry("bin/sh", tarfile.SYMTYPE, linkname="busybox", mode=0o777),
        Entry("etc/", tarfile.DIRTYPE, mode=0o755),
        Entry("etc/marker", data=b"sandlot-env-marker\n"),
    )


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _config(diff_ids: list[str], env: list[str], user: str = "1000", working_dir: str = "/work") -> bytes:
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": env, "WorkingDir": working_dir, "User": user, "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        },
        sort_keys=True,
    ).encode()


_MEDIA = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}


def compress(data: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip.compress(data, mtime=0)
    if how == "zstd":
        import zstandard

        return zstandard.ZstdCompressor().compress(data)
    return data


def write_oci_layout(
    path: Path,
    layers: list[bytes],
    *,
    compression: list[str] | None = None,
    blobs: list[bytes] | None = None,
    media_types: list[str] | None = None,
    diff_ids: list[str] | None = None,
    env: tuple[str, ...] = ("PATH=/bin", "LANG=C.UTF-8"),
    user: str = "1000",
    working_dir: str = "/work",
) -> str:
    """Write an OCI image layout at ``path``; ``blobs`` replaces the stored bytes (their digests follow them,
    so a corrupt-but-matching blob can be written); returns the config digest."""
    compression = compression or ["gzip"] * len(layers)
    stored = blobs or [compress(data, how) for data, how in zip(layers, compression, strict=True)]
    types = media_types or [_MEDIA[how] for how in compression]
    (path / "blobs" / "sha256").mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = sha(data)
        (path / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
        return digest

    config = _config(diff_ids or [sha(data) for data in layers], list(env), user, working_dir)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(config), "size": 1},
            "layers": [
                {"mediaType": media, "digest": put(blob), "size": len(blob)}
                for blob, media in zip(stored, types, strict=True)
            ],
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": put(manifest),
                "size": len(manifest),
                "platform": {"os": "linux", "architecture": "amd64"},
            },
            {  # another platform's manifest: never read (its blob is not even there)
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": "sha256:" + "0" * 64,
                "size": 1,
                "platform": {"os": "linux", "architecture": "arm64"},
            },
        ],
    }
    (path / "index.json").write_text(json.dumps(index))
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return sha(config)


def tar_directory(source: Path, archive: Path) -> None:
    with tarfile.open(archive, "w") as tar:
        for item in sorted(source.rglob("*")):
            tar.add(item, arcname=str(item.relative_to(source)), recursive=False)


def write_docker_archive(archive: Path, layers: list[bytes]) -> str:
    """A ``docker save`` archive (the classic layout: uncompressed <id>/layer.tar); returns the config digest."""
    config = _config([sha(data) for data in layers], ["PATH=/bin", "LANG=C.UTF-8"])
    config_hex = sha(config).split(":")[1]
    with tarfile.open(archive, "w") as tar:

        def put(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        names = []
        for number, data in enumerate(layers):
            layer_id = hashlib.sha256(f"{number}{sha(data)}".encode()).hexdigest()
            put(f"{layer_id}/layer.tar", data)
            names.append(f"{layer_id}/layer.tar")
        put(f"{config_hex}.json", config)
        put(
            "manifest.json",
            json.dumps([{"Config": f"{config_hex}.json", "RepoTags": ["t:1"], "Layers": names}]).encode(),
        )
    return sha(config)
