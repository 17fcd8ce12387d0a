"""Reading an image the user brings: a ``docker save`` archive, an OCI image layout directory, or its tar.

Theory of operation: an image is hostile input. We read only what the image's own index names, and every
byte we act on is checked against a digest on the way through (a streaming sha256, never a size we were
told): the manifest against its descriptor, the config against its digest, each layer's compressed bytes
against its descriptor and its uncompressed tar against the config's ``rootfs.diff_ids``. A layer is handed
out as a stream (:meth:`ImageSource.open_layer`, see :mod:`streams`) whose digests are checked when the
caller has read it to the end, so nothing derived from a layer may be kept before that check: the unpacker
writes into a temporary directory that is thrown away on any error.

The environment's digest is the config digest (docker's "image ID"): the same image saved as a docker
archive or as an OCI layout gets the same digest, and the config covers every layer through its diff_ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import tarfile
import zlib
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sandlot.environments.streams import LayerStream
from sandlot.errors import ImageRejected

MAX_JSON_BYTES = 4 * 1024 * 1024  # a manifest, index or config bigger than this is not an image
MAX_LAYERS = 127  # docker's own limit (overlayfs lower dirs)
MAX_ARCHIVE_MEMBERS = 100_000  # files in the outer archive (blobs, manifests)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")

_INDEX_TYPES = {"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"}
_MANIFEST_TYPES = {"application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"}
_LAYER_COMPRESSION = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd": "zstd",
}
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


@dataclass(frozen=True)
class ImageConfig:
    """What the image asks of a process run in it (the OCI config's ``config`` object)."""

    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    os: str = "linux"
    architecture: str = ""


@dataclass(frozen=True)
class Layer:
    path: str  # where its bytes are in the source
    digest: str | None  # of the bytes as stored (None: a docker-save layer, checked by diff_id alone)
    diff_id: str  # of the uncompressed tar
    compression: str  # "none", "gzip", "zstd" or "sniff" (docker-save: no media type)


@dataclass(frozen=True)
class Image:
    format: str  # "docker-archive", "oci-layout", "oci-archive"
    digest: str  # the config digest, "sha256:<hex>"
    manifest_digest: str | None
    config: ImageConfig
    layers: tuple[Layer, ...]


def host_architecture() -> str:
    machine = platform.machine()
    return _ARCH.get(machine, machine)


class _Files:
    """Named files of an image source (a directory or a tar), opened for reading only."""

    def __init__(self, path: Path, stack: ExitStack) -> None:
        self._dir: Path | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        self._tar: tarfile.TarFile | None = None
        if path.is_dir():
            self._dir = path.resolve()
            return
        try:
            self._tar = stack.enter_context(tarfile.open(path, "r:*"))  # noqa: SIM115  (closed by the stack)
            for member in self._tar:  # an index only: the outer archive is never extracted
                self._members[_clean(member.name)] = member
                if len(self._members) > MAX_ARCHIVE_MEMBERS:
                    raise ImageRejected(f"{path}: more than {MAX_ARCHIVE_MEMBERS} files in the archive")
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise ImageRejected(f"{path}: not a readable image archive: {exc}") from exc

    def exists(self, name: str) -> bool:
        if self._dir is not None:
            return (self._dir / name).is_file()
        return self._member(name) is not None

    def _member(self, name: str) -> tarfile.TarInfo | None:
        member = self._members.get(_clean(name))
        for _ in range(8):  # docker save links a layer it already wrote: follow within the archive only
            if member is None or not member.issym():
                break
            target = os.path.normpath(os.path.join(os.path.dirname(member.name), member.linkname))
            member = self._members.get(_clean(target))
        return member if member is not None and member.isreg() else None

    def open(self, name: str) -> IO[bytes]:
        if self._dir is not None:
            path = (self._dir / name).resolve()
            if not path.is_relative_to(self._dir) or not path.is_file():
                raise ImageRejected(f"image file {name!r} is missing or outside the image directory")
            return path.open("rb")
        member = self._member(name)
        stream = self._tar.extractfile(member) if member is not None and self._tar is not None else None
        if stream is None:
            raise ImageRejected(f"image file {name!r} is missing from the archive")
        return stream


def _clean(name: str) -> str:
    return os.path.normpath("/" + name).lstrip("/")


def _digest_hex(digest: object, what: str) -> str:
    if not isinstance(digest, str) or ":" not in digest:
        raise ImageRejected(f"{what}: digest {digest!r} is not 'algorithm:hex'")
    algorithm, _, hexpart = digest.partition(":")
    if algorithm != "sha256":
        raise ImageRejected(f"{what}: digest algorithm {algorithm!r} is not supported (sha256 only)")
    if not _HEX64.match(hexpart):
        raise ImageRejected(f"{what}: digest {digest!r} is malformed")
    return hexpart


def _read_json(files: _Files, name: str, expect_hex: str | None, what: str) -> tuple[Any, str]:
    """A small JSON file, read with a cap and checked against its digest; returns (value, digest)."""
    with files.open(name) as stream:
        data = stream.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise ImageRejected(f"{what} ({name}) is over {MAX_JSON_BYTES} bytes")
    actual = hashlib.sha256(data).hexdigest()
    if expect_hex is not None and actual != expect_hex:
        raise ImageRejected(f"{what} ({name}): digest mismatch: expected sha256:{expect_hex}, got sha256:{actual}")
    try:
        return json.loads(data), f"sha256:{actual}"
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImageRejected(f"{what} ({name}) is not JSON: {exc}") from exc


def _strings(value: object, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ImageRejected(f"image config: {what} must be a list of strings")
    return tuple(value)


def _config(raw: object, layer_count: int) -> tuple[ImageConfig, tuple[str, ...]]:
    if not isinstance(raw, dict):
        raise ImageRejected("image config is not a JSON object")
    rootfs = raw.get("rootfs")
    diff_ids = _strings(rootfs.get("diff_ids") if isinstance(rootfs, dict) else None, "rootfs.diff_ids")
    if len(diff_ids) != layer_count:
        raise ImageRejected(f"image config lists {len(diff_ids)} diff_ids for {layer_count} layers")
    inner = raw.get("config") or {}
    if not isinstance(inner, dict):
        raise ImageRejected("image config: 'config' is not an object")
    for key in ("WorkingDir", "User"):
        if not isinstance(inner.get(key) or "", str):
            raise ImageRejected(f"image config: {key} must be a string")
    config = ImageConfig(
        env=_strings(inner.get("Env"), "Env"),
        working_dir=inner.get("WorkingDir") or "",
        user=inner.get("User") or "",
        entrypoint=_strings(inner.get("Entrypoint"), "Entrypoint"),
        cmd=_strings(inner.get("Cmd"), "Cmd"),
        os=str(raw.get("os") or "linux"),
        architecture=str(raw.get("architecture") or ""),
    )
    return config, diff_ids


class ImageSource:
    """An image opened for import; use as a context manager (a tar source keeps its file open)."""

    def __init__(self, path: Path, *, architecture: str | None = None) -> None:
        self._stack = ExitStack()
        self._arch = architecture or host_architecture()
        try:
            self.image = self._read(path)
        except BaseException:
            self._stack.close()  # a refused archive is closed at once, not whenever it is collected
            raise

    def _read(self, path: Path) -> Image:
        if not path.exists():
            raise ImageRejected(f"{path}: no such file or directory")
        self._files = _Files(path, self._stack)
        if self._files.exists("oci-layout") and self._files.exists("index.json"):
            image = self._read_oci("oci-layout" if path.is_dir() else "oci-archive")
        elif self._files.exists("manifest.json"):
            image = self._read_docker()
        else:
            raise ImageRejected(
                f"{path}: not an image (no oci-layout + index.json, no manifest.json): "
                "give a 'docker save' archive or an OCI image layout (directory or tar)"
            )
        wanted = image.config.architecture
        if wanted and wanted != self._arch:
            raise ImageRejected(f"the image is for {image.config.os}/{wanted}; this host runs linux/{self._arch}")
        if len(image.layers) > MAX_LAYERS:
            raise ImageRejected(f"image has {len(image.layers)} layers; at most {MAX_LAYERS} are accepted")
        return image

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _read_docker(self) -> Image:
        manifest, _ = _read_json(self._files, "manifest.json", None, "manifest.json")
        if not isinstance(manifest, list) or len(manifest) != 1 or not isinstance(manifest[0], dict):
            count = len(manifest) if isinstance(manifest, list) else "no"
            raise ImageRejected(f"manifest.json lists {count} images; save exactly one image per archive")
        entry = manifest[0]
        config_name = entry.get("Config")
        layers = _strings(entry.get("Layers"), "manifest.json Layers")
        if not isinstance(config_name, str):
            raise ImageRejected("manifest.json: Config is missing")
        stem = os.path.basename(config_name).removesuffix(".json")
        if not _HEX64.match(stem):
            raise ImageRejected(f"manifest.json: config name {config_name!r} does not carry its digest")
        raw, digest = _read_json(self._files, config_name, stem, "image config")
        config, diff_ids = _config(raw, len(layers))
        return Image(
            format="docker-archive",
            digest=digest,
            manifest_digest=None,
            config=config,
            layers=tuple(
                Layer(path=name, digest=None, diff_id=diff_id, compression="sniff")
                for name, diff_id in zip(layers, diff_ids, strict=True)
            ),
        )

    def _blob(self, descriptor: object, what: str) -> tuple[Any, str]:
        if not isinstance(descriptor, dict):
            raise ImageRejected(f"{what}: descriptor is not an object")
        hexpart = _digest_hex(descriptor.get("digest"), what)
        return _read_json(self._files, f"blobs/sha256/{hexpart}", hexpart, what)

    def _pick(self, index: object, depth: int) -> dict[str, Any]:
        """The one image manifest descriptor for this host among an index's entries."""
        if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
            raise ImageRejected("index.json: 'manifests' is missing")
        candidates: dict[str, dict[str, Any]] = {}
        seen: list[str] = []
        for entry in index["manifests"]:
            if not isinstance(entry, dict):
                continue
            plat = entry.get("platform") if isinstance(entry.get("platform"), dict) else None
            if plat is not None:
                seen.append(f"{plat.get('os')}/{plat.get('architecture')}")
                if plat.get("os") != "linux" or plat.get("architecture") != self._arch:
                    continue
            if entry.get("mediaType") in _INDEX_TYPES:
                if depth >= 2:
                    raise ImageRejected("index.json: image indexes nested too deep")
                nested, _ = self._blob(entry, "nested image index")
                chosen = self._pick(nested, depth + 1)
            elif entry.get("mediaType") in _MANIFEST_TYPES:
                chosen = entry
            else:
                continue
            candidates[str(chosen.get("digest"))] = chosen
        if len(candidates) == 1:
            return next(iter(candidates.values()))
        if not candidates:
            platforms = ", ".join(sorted(set(seen))) or "none"
            raise ImageRejected(f"the image has no manifest for linux/{self._arch} (platforms: {platforms})")
        raise ImageRejected(f"the archive holds {len(candidates)} images; save exactly one")

    def _read_oci(self, fmt: str) -> Image:
        layout, _ = _read_json(self._files, "oci-layout", None, "oci-layout")
        if not isinstance(layout, dict) or layout.get("imageLayoutVersion") != "1.0.0":
            raise ImageRejected("oci-layout: imageLayoutVersion is not 1.0.0")
        index, _ = _read_json(self._files, "index.json", None, "index.json")
        descriptor = self._pick(index, 0)
        manifest, manifest_digest = self._blob(descriptor, "image manifest")
        if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
            raise ImageRejected("image manifest: 'layers' is missing")
        raw, digest = self._blob(manifest.get("config"), "image config")
        config, diff_ids = _config(raw, len(manifest["layers"]))
        layers = []
        for number, (entry, diff_id) in enumerate(zip(manifest["layers"], diff_ids, strict=True), 1):
            if not isinstance(entry, dict):
                raise ImageRejected(f"layer {number}: descriptor is not an object")
            media_type = entry.get("mediaType")
            if media_type not in _LAYER_COMPRESSION:
                raise ImageRejected(f"layer {number}: unknown media type {media_type!r}")
            hexpart = _digest_hex(entry.get("digest"), f"layer {number}")
            layers.append(
                Layer(f"blobs/sha256/{hexpart}", f"sha256:{hexpart}", diff_id, _LAYER_COMPRESSION[str(media_type)])
            )
        return Image(fmt, digest, manifest_digest, config, tuple(layers))

    def open_layer(self, layer: Layer, what: str) -> LayerStream:
        return LayerStream(self._files.open(layer.path), layer, what)
