"""Moving an environment between nodes (distributed mode): one canonical tar of its sealed root, verified.

Theory of operation
-------------------
An environment's digest names what it was made from (an image's config digest, a spec's hash), not the
bytes of the root unpacked from it, so a root cannot be checked against it on arrival. The node that
registers an environment therefore also records its **content digest**: the sha256 of the canonical tar
``pack`` writes of the sealed root (entries sorted, owners 0, times 0, modes as sealed, hard links as
links), the same bytes for the same tree on every node. ``content_digest`` computes it once per stored
environment and keeps it under ``<store>/.content/<hex>`` (with the environment's creation time, so a
root made again is hashed again).

``fetch`` runs in a worker's thread: it streams the tar from a holder's
``GET /internal/environments/{digest}`` into an unnamed temporary file in the store's filesystem
(``O_TMPFILE``: a crash leaves nothing), hashing every byte and stopping at the size cap, and compares
the digest once the stream ended. Only a tar whose digest matched is unpacked, through the image
import's own safe layer code (``unpack_tar``) into the store's usual ``.tmp-*`` directory, which
``materialise`` renames into place when complete: a refused transfer leaves nothing half-stored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import stat
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from sandlot.environments.store import Environment, EnvironmentStore, Outcome
from sandlot.environments.unpack import UnpackLimits, unpack_tar
from sandlot.errors import EnvironmentFetchFailed, RejectedError, SandboxError

INTERNAL_PATH = "/internal/environments/"  # + the environment's digest: the route a holder serves
FETCH_TIMEOUT_S = 60.0  # per connect and per read (not the whole transfer, which depends on the size)
_CHUNK = 1024 * 1024
_BLOCK = tarfile.BLOCKSIZE
_CONTENT = ".content"


def transfer_cap_bytes(limits: UnpackLimits) -> int:
    """The most a transfer may stream: the store's size cap plus a tar header per file it may hold."""
    return limits.max_total_bytes + limits.max_files * 2 * _BLOCK


def pack(rootfs: Path) -> Iterator[bytes]:
    """The root as a canonical tar stream (see the module docstring); never follows a link."""
    seen: dict[tuple[int, int], str] = {}
    for rel, st in _walk(rootfs, ""):
        info = tarfile.TarInfo(rel)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid = info.gid = 0
        info.mtime = 0
        size = 0
        if stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(st.st_mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(rootfs / rel)
        elif stat.S_ISREG(st.st_mode):
            first = seen.setdefault((st.st_dev, st.st_ino), rel) if st.st_nlink > 1 else rel
            if first != rel:
                info.type, info.linkname = tarfile.LNKTYPE, first
            else:
                info.type, info.size = tarfile.REGTYPE, st.st_size
                size = st.st_size
        else:
            continue  # a sealed root has none (devices and FIFOs are dropped on import)
        yield info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        if size:
            yield from _file(rootfs / rel, size)
    yield b"\0" * (2 * _BLOCK)


def _walk(root: Path, prefix: str) -> Iterator[tuple[str, os.stat_result]]:
    with os.scandir(root / prefix if prefix else root) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        rel = f"{prefix}/{entry.name}" if prefix else entry.name
        st = entry.stat(follow_symlinks=False)
        yield rel, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(root, rel)


def _file(path: Path, size: int) -> Iterator[bytes]:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as src:
        left = size
        while left:
            chunk = src.read(min(_CHUNK, left))
            if not chunk:  # a sealed root never shrinks; a tar must still carry exactly ``size`` bytes
                raise SandboxError(f"{path}: shorter than its {size} bytes while being sent")
            left -= len(chunk)
            yield chunk
    if size % _BLOCK:
        yield b"\0" * (_BLOCK - size % _BLOCK)


def content_digest(store: EnvironmentStore, env: Environment) -> str:
    """The sha256 of ``pack`` of the stored root, computed once per stored environment (cached)."""
    hexd = env.digest.removeprefix("sha256:")
    cache = store.root / _CONTENT / hexd
    try:
        created, digest = cache.read_text().split()
        if created == env.created:
            return digest
    except (OSError, ValueError):
        pass  # not computed yet, or unreadable: compute it again
    digest_of = hashlib.sha256()
    for chunk in pack(store.rootfs_of(env)):
        digest_of.update(chunk)
    digest = f"sha256:{digest_of.hexdigest()}"
    cache.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = cache.with_name(f".{hexd}.{os.getpid()}")
    tmp.write_text(f"{env.created} {digest}\n")
    tmp.replace(cache)
    return digest


def fetch(
    store: EnvironmentStore,
    name: str,
    meta: dict[str, Any],
    expected: str,
    url: str,
    token: str,
) -> Outcome:
    """Stream environment ``meta["digest"]`` from ``url``, check it against ``expected``, then store it as ``name``.

    Blocking (a worker runs it in a thread). ``EnvironmentFetchFailed`` names the holder and the reason.
    """
    digest = str(meta.get("digest", ""))
    what = f"the transfer from {url}"
    store.root.mkdir(parents=True, exist_ok=True)
    cap = transfer_cap_bytes(store.limits)
    with tempfile.TemporaryFile(dir=store.root) as spool:
        got = _download(spool, url, token, cap, what)
        if got != expected:
            raise EnvironmentFetchFailed(f"{what}: digest mismatch: expected {expected}, got {got}; nothing stored")
        spool.seek(0)
        made = Environment.from_json(meta, "")

        def produce(rootfs: Path) -> Environment:
            try:
                stats = unpack_tar(spool, rootfs, store.limits, what)
            except RejectedError as exc:  # it matched its digest: the holder's root itself is refused (a cap)
                raise EnvironmentFetchFailed(str(exc)) from exc
            return dataclasses.replace(made, dropped={**made.dropped, **stats.dropped})

        return store.materialise(name, digest, produce)


def _download(spool: IO[bytes], url: str, token: str, cap: int, what: str) -> str:
    """Copy the response into ``spool`` (at most ``cap`` bytes); the sha256 of what came."""
    if not url.startswith(("http://", "https://")):
        raise EnvironmentFetchFailed(f"{what}: not an http(s) URL")
    digest_of = hashlib.sha256()
    count = 0
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310 (checked above)
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as response:  # noqa: S310 (http(s) only)
            while chunk := response.read(_CHUNK):
                count += len(chunk)
                if count > cap:
                    raise EnvironmentFetchFailed(f"{what}: more than {cap} bytes (the environments' size cap)")
                digest_of.update(chunk)
                spool.write(chunk)
    except urllib.error.HTTPError as exc:
        raise EnvironmentFetchFailed(f"{what}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise EnvironmentFetchFailed(f"{what}: {exc}") from exc
    return f"sha256:{digest_of.hexdigest()}"
