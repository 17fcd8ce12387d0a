"""Fixtures of the environment tests that share a registry (the distributed mode's, on a real Redis)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sandlot.broker.redis import RedisBroker
from tests.nodes import RedisServer


@pytest.fixture
async def broker(fresh_redis: RedisServer) -> AsyncIterator[RedisBroker]:
    """A Redis broker on a redis-server of the test's own; its ``environments`` is the registry."""
    made = RedisBroker(fresh_redis.url, max_queued=10)
    try:
        yield made
    finally:
        await made.close()
