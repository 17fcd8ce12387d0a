"""The distributed mode's environment registry: which environments exist, what names stand for, who serves them.

Every node with a store registers its environments at start (``register``):
the record (the store's metadata, the root's content digest, the languages it
offers) under ``keys.environment(digest)``, and, for a node that serves HTTP,
itself as a holder (the URL of its internal route and a token it made at
start; anyone who can read Redis can already submit any job, so Redis access
is the credential, and no tenant ever sees the token). An API node points a
name at its environment when that is the newest registered under it (by
creation time: a later import wins, as in one store; ``environments.shared``
decides); a worker only fills a name nobody set (``SET NX``), so an old local
import never re-points the deployment's name. A holder is keyed by its node's base URL, so a
restarted node replaces its entry; one gone for good stays listed, and a fetch
tries the next holder once its connection fails.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from sandlot.broker.keys import Keys
from sandlot.broker.redis_wire import to_str


@dataclass(frozen=True)
class Holder:
    node: str  # its key in the holders hash: the node's base URL
    url: str  # the environment's own URL on that node (its internal route)
    token: str  # its bearer token
    content_digest: str  # of the root it sends (its own, should two sandlot versions unpack differently)


@dataclass(frozen=True)
class EnvironmentRecord:
    """One environment as the deployment knows it."""

    digest: str
    content_digest: str  # sha256 of the canonical tar of its root (``environments.transfer``)
    meta: dict[str, Any]  # the registering store's ``Environment.to_json()``
    languages: tuple[str, ...] = ()  # what the registering node found offered in it
    holders: tuple[Holder, ...] = field(default=(), compare=False)

    @property
    def kind(self) -> str:
        return str(self.meta.get("kind", ""))

    @classmethod
    def from_json(cls, raw: str | bytes) -> EnvironmentRecord:
        """The record ``to_json`` wrote (without holders: they are kept apart, a hash per environment)."""
        data = json.loads(raw)
        return cls(
            digest=str(data["digest"]),
            content_digest=str(data["content_digest"]),
            meta=dict(data["meta"]),
            languages=tuple(data.get("languages", ())),
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "digest": self.digest,
                "content_digest": self.content_digest,
                "meta": self.meta,
                "languages": list(self.languages),
            },
            sort_keys=True,
        )


class RedisEnvironments:
    """The registry on Redis; made by ``RedisBroker`` (``broker.environments``), sharing its client."""

    def __init__(
        self, client: aioredis.Redis, keys: Keys, reachable: Callable[[], AbstractAsyncContextManager[None]]
    ) -> None:
        self._redis = client
        self._keys = keys
        self._reachable = reachable

    async def register(self, name: str, record: EnvironmentRecord, holder: Holder | None, *, claim_name: bool) -> None:
        """Record ``record`` under ``name``; ``claim_name``: point the name at it even if another node set it."""
        k = self._keys
        async with self._reachable():
            pipe = self._redis.pipeline(transaction=False)
            pipe.set(k.environment(record.digest), record.to_json(), nx=holder is None)  # a holder's wins
            pipe.set(k.environment_name(name), record.digest, nx=not claim_name)
            pipe.sadd(k.environment_names(), name)
            if holder is not None:
                pipe.hset(
                    k.environment_holders(record.digest),
                    holder.node,
                    json.dumps({"url": holder.url, "token": holder.token, "content_digest": holder.content_digest}),
                )
            await pipe.execute()

    async def named(self) -> list[tuple[str, EnvironmentRecord]]:
        """Every registered name with the record it points to (without holders), sorted by name."""
        k = self._keys
        async with self._reachable():
            names = sorted(to_str(n) for n in await self._redis.smembers(k.environment_names()))
            digests = await self._redis.mget([k.environment_name(name) for name in names]) if names else []
            named = [(name, to_str(d)) for name, d in zip(names, digests, strict=True) if d is not None]
            raws = await self._redis.mget([k.environment(digest) for _, digest in named]) if named else []
        # A name whose record is gone (or not yet written) is left out.
        return [
            (name, EnvironmentRecord.from_json(raw))
            for (name, _), raw in zip(named, raws, strict=True)
            if raw is not None
        ]

    async def digest_of(self, name: str) -> str | None:
        async with self._reachable():
            digest = await self._redis.get(self._keys.environment_name(name))
        return None if digest is None else to_str(digest)

    async def record(self, digest: str) -> EnvironmentRecord | None:
        """The record of ``digest`` with its holders; None if no node registered it."""
        k = self._keys
        async with self._reachable():
            pipe = self._redis.pipeline(transaction=False)
            pipe.get(k.environment(digest))
            pipe.hgetall(k.environment_holders(digest))
            raw, holders = await pipe.execute()
        if raw is None:
            return None
        record = EnvironmentRecord.from_json(raw)
        found = []
        for node, value in sorted(holders.items()):
            where = json.loads(value)
            content = str(where.get("content_digest") or record.content_digest)
            found.append(Holder(to_str(node), str(where["url"]), str(where["token"]), content))
        return dataclasses.replace(record, holders=tuple(found))
