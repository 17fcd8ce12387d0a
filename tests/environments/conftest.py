"""Fixtures the environment tests share: the python image in the test store, a registry on a real Redis."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator

import pytest

from sandlot.broker.redis import RedisBroker
from sandlot.environments.store import EnvironmentStore
from tests.conftest import TEST_STATE_DIR
from tests.environments.test_environments_run import _python_layer
from tests.nodes import RedisServer
from tests.oci_images import write_oci_layout


@pytest.fixture(scope="module")
def py_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The python image imported under a name of its own in the shared test store (boxes must reach it)."""
    name = f"test-py-{secrets.token_hex(6)}"
    store = EnvironmentStore(TEST_STATE_DIR)
    layout = tmp_path_factory.mktemp("image") / "layout"
    write_oci_layout(layout, [_python_layer()], compression=["none"])
    store.import_image(name, layout)
    try:
        yield name
    finally:
        store.remove(name)


@pytest.fixture
async def broker(fresh_redis: RedisServer) -> AsyncIterator[RedisBroker]:
    """A Redis broker on a redis-server of the test's own; its ``environments`` is the registry."""
    made = RedisBroker(fresh_redis.url, max_queued=10)
    try:
        yield made
    finally:
        await made.close()
