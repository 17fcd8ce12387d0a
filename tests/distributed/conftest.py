"""The distributed tests' host: a real Redis with an append-only file, and a cluster laid out by each
test module's ``LAYOUT`` (a ``tests.nodes.NodeLayout``; its fixed names keep the modules apart)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.nodes import Cluster, NodeLayout, RedisServer, running_redis


def _layout(request: pytest.FixtureRequest) -> NodeLayout | None:
    layout = getattr(request.module, "LAYOUT", None)
    return layout if isinstance(layout, NodeLayout) else None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path / "redis", append_only=True) as server:
        yield server


@pytest.fixture
def cluster(redis_server: RedisServer, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    layout = _layout(request)
    assert layout is not None, f"{request.module.__name__} has no LAYOUT for its cluster"
    with Cluster.running(redis_server, tmp_path, layout) as nodes:
        yield nodes


@pytest.fixture
def rdb(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=5.0)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(autouse=True)
def _clean_host(request: pytest.FixtureRequest) -> Iterator[None]:
    """A module with a LAYOUT starts and ends each test with none of its boxes, cgroups or state left."""
    layout = _layout(request)
    if layout is None:
        yield
        return
    with layout.swept():
        yield
