"""Real images from a real tool: ``podman import`` of a root tarball, then ``podman save`` in both formats."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandlot.environments.store import EnvironmentStore
from tests.environments.test_environments_import import tree
from tests.oci_images import BUSYBOX

pytestmark = pytest.mark.slow


@pytest.fixture
def runroot() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sl-pod-", dir="/tmp"))  # podman wants it under 50 characters
    yield path
    shutil.rmtree(path)


def _podman(tmp_path: Path, runroot: Path, *args: str) -> None:
    # Private storage (vfs: no mounts to clean up); runc: Debian's crun refuses this host's hybrid cgroups.
    base = ["podman", "--root", str(tmp_path / "storage"), "--runroot", str(runroot)]
    base += ["--storage-driver", "vfs", "--runtime", "runc"]
    done = subprocess.run([*base, *args], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


def test_podman_saved_images_import_in_both_formats(tmp_path: Path, runroot: Path) -> None:
    root = tmp_path / "root.tar"
    with tarfile.open(root, "w") as tar:
        for name, data in (("bin/busybox", BUSYBOX.read_bytes()), ("etc/marker", b"from podman\n")):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("bin/sh")
        link.type, link.linkname = tarfile.SYMTYPE, "busybox"
        tar.addfile(link)
    image = "localhost/sandlot-envtest:1"
    _podman(tmp_path, runroot, "import", "--change", "ENV=FOO=bar", "--change", "WORKDIR=/w", str(root), image)
    _podman(tmp_path, runroot, "save", "--format", "oci-archive", "-o", str(tmp_path / "oci.tar"), image)
    _podman(tmp_path, runroot, "save", "--format", "docker-archive", "-o", str(tmp_path / "docker.tar"), image)
    digests = set()
    for kind in ("oci", "docker"):
        store = EnvironmentStore(tmp_path / f"state-{kind}")
        env = store.import_image("p", tmp_path / f"{kind}.tar").environment
        digests.add(env.digest)
        assert (env.image_format, env.env, env.working_dir) == (f"{kind}-archive", ("FOO=bar",), "/w")
        rootfs = store.rootfs("p")
        assert tree(rootfs) == {
            "bin": "dir",
            "bin/busybox": "file",
            "bin/sh": "link:busybox",
            "etc": "dir",
            "etc/marker": "file:from podman\n",
        }
        command = ["chroot", str(rootfs), "/bin/sh", "-c", "busybox cat /etc/marker"]
        ran = subprocess.run(command, capture_output=True, check=False)
        assert (ran.returncode, ran.stdout) == (0, b"from podman\n")
    assert len(digests) == 1  # one image, whichever format carried it
