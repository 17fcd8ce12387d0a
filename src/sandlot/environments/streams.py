"""A layer's bytes as a verified stream: stored bytes -> sha256 -> decompressor -> sha256 -> tar reader.

Both digests are compared only once the stream was read to its end (:meth:`LayerStream.finish`), which
also reads the tar's trailing padding and the compressor's trailer (bounded), so a layer is accepted only
when every byte of it matched. Decompressor errors of any kind become one ``ImageRejected``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
from typing import IO, TYPE_CHECKING, Any, Protocol

from sandlot.errors import ImageRejected

if TYPE_CHECKING:
    from sandlot.environments.oci import Layer

MAX_TRAILING_BYTES = 1024 * 1024  # zero padding after a layer's end-of-archive marker
_CHUNK = 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class _Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Hashing(io.RawIOBase):
    """Reads through ``inner`` and hashes every byte; :meth:`check` compares once at the end."""

    def __init__(self, inner: _Reader) -> None:
        self._inner = inner
        self._hash = hashlib.sha256()
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._inner.read(len(buffer))
        buffer[: len(data)] = data
        self._hash.update(data)
        self.count += len(data)
        return len(data)

    def check(self, expected: str, what: str) -> None:
        actual = f"sha256:{self._hash.hexdigest()}"
        if actual != expected:
            raise ImageRejected(f"{what}: digest mismatch: expected {expected}, got {actual}")


class _Decoding(io.RawIOBase):
    """A decompressor's errors (gzip, zlib, zstd, a stream cut short) as one ``ImageRejected``."""

    def __init__(self, inner: _Reader, what: str) -> None:
        self._inner = inner
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._inner.read(len(buffer))
        except ImageRejected:
            raise
        except Exception as exc:  # zlib.error, EOFError, BadGzipFile, zstandard.ZstdError: all "corrupt"
            raise ImageRejected(f"{self._what}: {exc}") from exc
        buffer[: len(data)] = data
        return len(data)


class LayerStream:
    """One layer's uncompressed tar as a stream; :meth:`finish` verifies both digests after the last read."""

    def __init__(self, raw: IO[bytes], layer: Layer, what: str) -> None:
        self._raw = raw
        self._layer = layer
        self._stored = _Hashing(raw)
        compression = layer.compression
        buffered = io.BufferedReader(self._stored, _CHUNK)
        if compression == "sniff":
            head = buffered.peek(4)[:4]
            compression = "gzip" if head[:2] == _GZIP_MAGIC else "zstd" if head == _ZSTD_MAGIC else "none"
        decompressed: _Reader
        if compression == "gzip":
            decompressed = gzip.GzipFile(fileobj=buffered, mode="rb")
        elif compression == "zstd":
            import zstandard  # only zstd layers pay for it

            decompressed = zstandard.ZstdDecompressor().stream_reader(buffered, read_across_frames=True)
        else:
            decompressed = buffered
        self._buffered = buffered
        self._tar = _Hashing(_Decoding(decompressed, f"{what}: corrupt {compression} data"))
        self.stream: IO[bytes] = io.BufferedReader(self._tar, _CHUNK)

    def finish(self, what: str) -> None:
        """Read what is left (the tar's padding, the compressor's trailer) and check both digests."""
        trailing = 0
        while chunk := self.stream.read(_CHUNK):
            trailing += len(chunk)
            if trailing > MAX_TRAILING_BYTES:
                raise ImageRejected(f"{what}: more than {MAX_TRAILING_BYTES} bytes after the end of its tar")
        while self._buffered.read(_CHUNK):  # bytes after the compressed stream's end count in its digest
            pass
        if self._layer.digest is not None:
            self._stored.check(self._layer.digest, what)
        self._tar.check(self._layer.diff_id, f"{what} (uncompressed, against the config's diff_id)")

    def close(self) -> None:
        self._raw.close()
