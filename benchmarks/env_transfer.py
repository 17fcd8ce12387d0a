"""A worker's fetch of an environment (distributed mode) vs a plain ``tar | tar`` copy of the same root.

Imports an image whose one layer is a copy of a host directory (default ``/usr/lib/python3.11``: ~54 MB,
~1,500 files) into a scratch store, then, ``--rounds`` times each, alternately:

- ``fetch``: ``environments.transfer.fetch`` over loopback HTTP from a server thread sending ``pack`` of
  the stored root (what an API node's internal route sends), into a second scratch store: download to a
  temporary file with its sha256, compare, unpack through the import's safe layer code, seal, rename;
- ``tar | tar``: ``tar -C ROOT -cf - . | tar -C DST -xf -`` (no network, no verification), the baseline.

Prints the median of each, their ratio, the image's own import (what a worker would otherwise do by
hand), and the first (uncached) content-digest computation an API node does once per environment.
Everything is under a temporary directory, removed after.

    sudo .venv/bin/python benchmarks/env_transfer.py [--source DIR] [--rounds 5]
"""

from __future__ import annotations

import argparse
import http.server
import io
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.oci_images import write_oci_layout

from sandlot.environments.store import EnvironmentStore
from sandlot.environments.transfer import content_digest, fetch, pack


def _layer(source: Path) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        tar.add(source, arcname=source.name)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--source", type=Path, default=Path("/usr/lib/python3.11"))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        work = Path(tmp)
        write_oci_layout(work / "layout", [_layer(args.source)], compression=["none"])
        source = EnvironmentStore(work / "a")
        started = time.perf_counter()
        env = source.import_image("bench", work / "layout").environment
        import_s = time.perf_counter() - started
        root = source.rootfs_of(env)
        started = time.perf_counter()
        expected = content_digest(source, env)
        digest_s = time.perf_counter() - started
        packed_bytes = sum(len(chunk) for chunk in pack(root))

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.end_headers()
                for chunk in pack(root):
                    self.wfile.write(chunk)

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_address[1]}/x"
        fetches, copies = [], []
        try:
            for n in range(args.rounds):
                target = EnvironmentStore(work / f"b{n}")
                started = time.perf_counter()
                fetch(target, "bench", env.to_json(), expected, url, "t")
                fetches.append(time.perf_counter() - started)
                shutil.rmtree(target.root)
                dst = work / f"c{n}"
                dst.mkdir()
                started = time.perf_counter()
                subprocess.run(f"tar -C {root} -cf - . | tar -C {dst} -xf -", shell=True, check=True)
                copies.append(time.perf_counter() - started)
                shutil.rmtree(dst)
        finally:
            server.shutdown()
            server.server_close()
        fetch_s, copy_s = statistics.median(fetches), statistics.median(copies)
        size_mb, sent_mb = env.size_bytes / 1e6, packed_bytes / 1e6
        print(f"root: {size_mb:.1f} MB in {env.file_count} files; the transfer: {sent_mb:.1f} MB")
        print(f"import of the image (what each worker would do by hand otherwise): {import_s * 1000:.0f} ms")
        print(f"content digest (once per environment on an API node): {digest_s * 1000:.0f} ms")
        print(f"fetch (HTTP, verify, unpack, seal): median {fetch_s * 1000:.0f} ms of {args.rounds}")
        print(f"tar | tar copy:                     median {copy_s * 1000:.0f} ms of {args.rounds}")
        print(f"ratio fetch / copy: {fetch_s / copy_s:.2f}")


if __name__ == "__main__":
    main()
