"""A node's side of the distributed mode's registry at submit (``SharedEnvironments.resolve``) and the store's
names as it reads them, on a real Redis and real stores (``tests/distributed`` drives whole nodes)."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sandlot.broker import TaskSpec
from sandlot.broker.redis import RedisBroker
from sandlot.config import Settings
from sandlot.engine import Engine
from sandlot.environments.shared import SharedEnvironments
from sandlot.environments.store import EnvironmentStore
from sandlot.errors import EnvironmentNotFound, RejectedError
from sandlot.languages import LanguageRegistry
from sandlot.models import SourceFile
from tests.oci_images import Entry, busybox_base, layer, write_oci_layout
from tests.root import require_root

# A language the host's table lacks, added by the environment's own tables (``env import --languages``).
ASH = {"envf-ash": {"source_file": "main.sh", "run": ["/bin/busybox", "sh", "{source}"], "requires": ["/bin/busybox"]}}

_watched: list[str] = []  # the paths whose opens are counted (by the audit hook below) while a test looks
_opened: list[str] = []


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and _watched and args and isinstance(args[0], str | Path) and str(args[0]) in _watched:
        _opened.append(str(args[0]))


sys.addaudithook(_audit)  # every open, os.open or io's, says so here: no stand-in for the file system


@contextmanager
def _opens_of(path: Path) -> Iterator[list[str]]:
    """The opens of ``path`` (by this process) while the block runs."""
    _watched.append(str(path))
    _opened.clear()
    try:
        yield _opened
    finally:
        _watched.clear()


def _image(tmp_path: Path, marker: bytes) -> Path:
    path = tmp_path / f"image-{marker.hex()}"
    if not path.exists():  # the same image under another name: the one written already
        write_oci_layout(path, [busybox_base(), layer(Entry("etc/m", data=marker))])
    return path


def _spec(environment: str, language: str = "bash") -> TaskSpec:
    return TaskSpec(
        id="t", tenant="default", language=language, files=(SourceFile("main", b"true\n"),), environment=environment
    )


async def test_an_api_node_without_the_environment_knows_the_languages_its_own_tables_add(
    tmp_path: Path, broker: RedisBroker, languages: LanguageRegistry, settings: Settings
) -> None:
    require_root("the store is root-owned")
    holding = EnvironmentStore(tmp_path / "a")
    env = holding.import_image("env", _image(tmp_path, b"1"), languages=ASH).environment
    await SharedEnvironments(holding, broker.environments, languages).announce("http://api-1")
    lacking = EnvironmentStore(tmp_path / "b")
    spec, there = await SharedEnvironments(lacking, broker.environments, languages).resolve(_spec("env", "envf-ash"))
    assert spec.environment_digest == env.digest and there is not None
    engine = Engine(settings, languages, environments=lacking)
    prepared = engine.prepare(spec.to_job(), offered_there=there)
    assert (prepared.language.name, prepared.language.run, prepared.rootfs) == (
        "envf-ash",
        ("/bin/busybox", "sh", "{source}"),
        None,  # checked from the record; the worker runs it in the root it fetches
    )
    assert lacking.names() == {}  # nothing fetched to know it
    # What the environment does not offer is still refused, naming the ones it does.
    with pytest.raises(RejectedError, match="unknown language 'nope'; environment 'env' offers: envf-ash"):
        engine.prepare(dataclasses.replace(spec, language="nope").to_job(), offered_there=there)


def test_the_names_file_is_read_again_only_after_it_changed(tmp_path: Path) -> None:
    require_root("the store is root-owned")
    store = EnvironmentStore(tmp_path / "s")
    cli = EnvironmentStore(tmp_path / "s")  # another process's: `sandlot env import` beside a running node
    one = cli.import_image("one", _image(tmp_path, b"1")).environment
    names_file = store.root / "names.json"
    with _opens_of(names_file) as opened:
        for _ in range(3):
            assert store.names() == {"one": one.digest.removeprefix("sha256:")}
            assert store.inspect("one").digest == one.digest
            assert store.by_digest(one.digest) is not None
    assert len(opened) == 1  # parsed once; then one stat per look

    # Re-pointed to a digest of the same length, and the file's time set back as if within one tick of
    # the file system's clock: same size, same mtime, and still seen (it is another file).
    before = os.stat(names_file)
    two = cli.import_image("one", _image(tmp_path, b"2")).environment
    os.utime(names_file, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(names_file).st_size == before.st_size
    with _opens_of(names_file) as opened:
        assert store.names() == store.names() == {"one": two.digest.removeprefix("sha256:")}
    assert len(opened) == 1
    cli.remove("one")
    assert store.names() == {}


async def test_a_submit_sees_what_was_imported_or_removed_since_the_one_before(
    tmp_path: Path, broker: RedisBroker, languages: LanguageRegistry
) -> None:
    require_root("the store is root-owned")
    store = EnvironmentStore(tmp_path / "a")
    cli = EnvironmentStore(tmp_path / "a")  # `sandlot env import|rm` in another process
    first = cli.import_image("first", _image(tmp_path, b"1")).environment
    api = SharedEnvironments(store, broker.environments, languages)
    await api.announce("http://api-1")
    assert (await api.resolve(_spec("first")))[0].environment_digest == first.digest

    late = cli.import_image("late", _image(tmp_path, b"2")).environment
    cli.import_image("gone", _image(tmp_path, b"2"))
    spec, there = await api.resolve(_spec("late"))  # imported since the last submit: registered now
    assert (spec.environment_digest, there) == (late.digest, None)
    assert await broker.environments.digest_of("late") == late.digest

    cli.remove("gone")  # its root stays (``late`` points to it): only the name must be gone
    with pytest.raises(EnvironmentNotFound):
        await api.resolve(_spec("gone"))
    assert await broker.environments.digest_of("gone") is None


async def test_tables_replaced_on_an_api_node_are_registered_at_the_next_submit_and_taken_by_workers(
    tmp_path: Path, broker: RedisBroker, languages: LanguageRegistry, settings: Settings
) -> None:
    """``env import NAME IMAGE --languages FILE`` again on a running API node: same digest, new tables."""
    require_root("the store is root-owned")
    store = EnvironmentStore(tmp_path / "a")
    cli = EnvironmentStore(tmp_path / "a")  # `sandlot env import` in another process
    env = cli.import_image("env", _image(tmp_path, b"1")).environment
    api = SharedEnvironments(store, broker.environments, languages)
    await api.announce("http://api-1")
    worker_store = EnvironmentStore(tmp_path / "w")
    worker_store.import_image("env", _image(tmp_path, b"1"))  # a copy, as a fetch before the change left it
    worker = SharedEnvironments(worker_store, broker.environments, languages)

    assert cli.import_image("env", _image(tmp_path, b"1"), languages=ASH).cached
    spec, there = await api.resolve(_spec("env", "envf-ash"))
    assert (spec.environment_digest, there) == (env.digest, None)
    record = await broker.environments.record(env.digest)
    assert record is not None and "envf-ash" in record.languages and record.meta["languages"] == ASH

    await worker.ensure("env", env.digest)
    followed = worker_store.by_digest(env.digest)
    assert followed is not None and followed.languages == ASH
    prepared = Engine(settings, languages, environments=worker_store).prepare(spec.to_job())
    assert (prepared.language.name, prepared.rootfs) == ("envf-ash", worker_store.rootfs_of(env))
