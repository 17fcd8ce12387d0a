"""The store's bookkeeping (names, rm, gc, concurrent imports) and the spec's validation and identity."""

from __future__ import annotations

import os
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sandlot.environments.spec import parse_spec
from sandlot.environments.store import EnvironmentStore
from sandlot.errors import EnvironmentNotFound, ImageRejected, RejectedError, SpecRejected
from tests.oci_images import Entry, busybox_base, layer, write_oci_layout


def _two_images(tmp_path: Path) -> tuple[Path, Path]:
    write_oci_layout(tmp_path / "a", [busybox_base()])
    write_oci_layout(tmp_path / "b", [busybox_base(), layer(Entry("etc/b", data=b"b"))])
    return tmp_path / "a", tmp_path / "b"


def test_names_list_inspect_rm_and_gc(tmp_path: Path) -> None:
    a, b = _two_images(tmp_path)
    store = EnvironmentStore(tmp_path / "state")
    first = store.import_image("first", a).environment
    store.import_image("alias", a)
    second = store.import_image("second", b).environment
    assert [e.name for e in store.environments()] == ["alias", "first", "second"]
    assert store.inspect("alias").digest == first.digest != second.digest
    # rm of one name of two keeps the files; rm of the last removes them.
    assert store.remove("alias") is False
    assert store.rootfs("first").is_dir()
    assert store.remove("first") is True
    assert not (store.root / first.digest.split(":")[1]).exists()
    with pytest.raises(EnvironmentNotFound, match="no environment named 'first'"):
        store.inspect("first")
    with pytest.raises(EnvironmentNotFound):
        store.remove("first")
    # Re-pointing a name leaves the old environment unnamed: gc removes it, and an interrupted import's litter.
    store.import_image("moving", a)
    store.import_image("moving", b)
    litter = store.root / f".tmp-{'0' * 64}-crashed"
    (litter / "rootfs").mkdir(parents=True)
    removed = store.gc()
    assert removed == [f".tmp-{'0' * 64}-crashed", first.digest]
    assert sorted(os.listdir(store.root)) == [".locks", second.digest.split(":")[1], "names.json"]
    assert store.gc() == []


def test_a_bad_name_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    store = EnvironmentStore(tmp_path / "state")
    for name in ("", "../x", "A", "a b", "-x", "x" * 65):
        with pytest.raises(RejectedError, match="environment name"):
            store.import_image(name, tmp_path / "absent")


def test_concurrent_imports_of_one_image_unpack_it_once(tmp_path: Path) -> None:
    a, _ = _two_images(tmp_path)
    store = EnvironmentStore(tmp_path / "state")
    start = threading.Barrier(4)

    def one(number: int) -> bool:
        start.wait()
        return store.import_image(f"n{number}", a).cached

    with ThreadPoolExecutor(4) as pool:
        cached = list(pool.map(one, range(4)))
    assert sorted(cached) == [False, True, True, True]
    assert len({store.rootfs(f"n{n}") for n in range(4)}) == 1
    assert [n for n in os.listdir(store.root) if n.startswith(".tmp")] == []


def test_a_failed_reimport_leaves_the_named_environment_as_it_was(tmp_path: Path) -> None:
    a, _ = _two_images(tmp_path)
    store = EnvironmentStore(tmp_path / "state")
    store.import_image("keep", a)
    write_oci_layout(tmp_path / "evil", [layer(Entry("x", tarfile.SYMTYPE, linkname="/etc"), Entry("x/y"))])
    with pytest.raises(ImageRejected):
        store.import_image("keep", tmp_path / "evil")
    assert (store.rootfs("keep") / "etc/marker").read_text() == "sandlot-env-marker\n"


def test_spec_identity_ignores_name_and_order() -> None:
    one = parse_spec('[environment]\nname = "a"\napt = ["python3", "curl"]\npip = ["tabulate==0.9.0"]\n')
    two = parse_spec(
        '[environment]\nname = "b"\nsuite = "bookworm"\napt = ["curl", "python3"]\npip = ["tabulate==0.9.0"]'
    )
    other = parse_spec('[environment]\nname = "a"\napt = ["python3"]\n')
    assert one.digest() == two.digest() != other.digest()
    assert (one.name, one.suite, one.apt) == ("a", "bookworm", ("python3", "curl"))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[environment]\nname = "x"\nfoo = 1', r"unknown key\(s\) in \[environment\]: foo"),
        ('[environment]\nname = "x"\n[other]', "unknown: other"),
        ("[environment]\n", "name is required"),
        ('[environment]\nname = "X Y"', "environment name"),
        ('[environment]\nname = "x"\nsuite = "bookworm; rm -rf /"', "not a Debian suite"),
        ('[environment]\nname = "x"\napt = ["python3 curl"]', "apt package 'python3 curl'"),
        ('[environment]\nname = "x"\napt = ["--allow-unauthenticated"]', "apt package"),
        ('[environment]\nname = "x"\npip = ["-e /etc"]', "pip package"),
        ('[environment]\nname = "x"\npip = ["git+https://x/y"]', "pip package"),
        ('[environment]\nname = "x"\npip = ["numpy; os.system(1)"]', "pip package"),
        ('[environment]\nname = "x"\nnpm = ["$(reboot)"]', "npm package"),
        ('[environment]\nname = "x"\nnpm = "left-pad"', "npm must be a list"),
        ("not toml =", "not valid TOML"),
    ],
)
def test_a_bad_spec_is_refused_saying_why(text: str, match: str) -> None:
    with pytest.raises(SpecRejected, match=match):
        parse_spec(text)


def test_good_package_names_pass() -> None:
    spec = parse_spec(
        '[environment]\nname = "ok"\napt = ["g++", "libc6-dev", "python3=3.11.2-1+b1"]\n'
        'pip = ["requests[socks]>=2.31,<3", "tabulate==0.9.0", "zope.interface"]\n'
        'npm = ["@types/node@20.1.0", "left-pad", "lodash@^4.17.21"]'
    )
    assert len(spec.apt + spec.pip + spec.npm) == 9
