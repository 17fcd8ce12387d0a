"""Environments in the distributed mode: one node's side of the registry (``broker.redis_environments``).

Theory of operation
-------------------
At start every node ``announce``s its store: each environment's record (with the content digest of its
root, ``transfer``), and for an API node itself as a holder, serving the root on its internal route. A
name points to the newest environment registered under it (by its creation time), except that a worker,
which serves nothing, only fills a name no node has set.

An API node also ``watch``es its store and registers what is imported or built into it while it runs.
At submit it ``resolve``s the job's environment name: its own store's environment is registered first if
it is not yet, then the registry's digest for the name is what the job carries (the name alone
means nothing on another node: it may point elsewhere there, or nowhere). A name the registry lacks is a
404 at the door, as in the embedded mode; the language is checked against the languages the registering
node found in that environment, with the environment's own language tables (from its record) applied.

On a worker ``ensure`` makes sure the job's digest is in the local store before the engine runs it
there by digest, never by name. One fetch per digest per worker: later jobs for that digest wait for
the one in flight (shielded, so one cancelled job does not cancel the others' fetch); jobs of other
environments (and of the host) are not held up, since the fetch runs in a thread. Holders are tried in
turn; a declared environment no holder could send is built from its recorded spec; when nothing works,
the job ends with ``EnvironmentFetchFailed`` naming every reason, and runs nowhere else. An environment
already stored takes the registry's language tables when they changed (the same image imported again
with other ``--languages`` keeps its digest): the worker checks a job as the door did.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
from typing import TYPE_CHECKING, Any

from sandlot.broker.redis_environments import EnvironmentRecord, Holder, RedisEnvironments
from sandlot.environments.build import Builder
from sandlot.environments.spec import Spec
from sandlot.environments.store import Environment, EnvironmentStore
from sandlot.environments.transfer import INTERNAL_PATH, content_digest, fetch
from sandlot.errors import EnvironmentFetchFailed, EnvironmentNotFound, SandlotError
from sandlot.languages import OfferedThere

if TYPE_CHECKING:
    from sandlot.broker import TaskSpec
    from sandlot.languages import LanguageRegistry

log = logging.getLogger(__name__)
TOKEN_BYTES = 32
STORE_WATCH_S = 5.0  # how often an API node looks whether its store's names changed


class SharedEnvironments:
    """One node's store, shared through the registry; made by the Service in the distributed mode."""

    def __init__(self, store: EnvironmentStore, registry: RedisEnvironments, languages: LanguageRegistry) -> None:
        self.store = store
        self.registry = registry
        self.languages = languages
        self.token = secrets.token_urlsafe(TOKEN_BYTES)  # a holder's: only readers of Redis learn it
        self._base_url: str | None = None  # this node's internal URL while it serves its store
        self._announced: dict[str, str] = {}  # name -> what this process registered (``_registered_as``)
        self._fetches: dict[str, asyncio.Task[None]] = {}  # digest -> the one fetch in flight

    async def announce(self, base_url: str | None) -> None:
        """Register every environment of the store; ``base_url``: this node serves them (an API node)."""
        self._base_url = base_url.rstrip("/") if base_url else None
        for env in await asyncio.to_thread(self._unregistered):
            try:
                await self._register(env)
            except EnvironmentNotFound:
                continue  # removed meanwhile

    async def watch(self, interval_s: float = STORE_WATCH_S) -> None:
        """Register what ``sandlot env import|build`` adds to the store while this node runs.

        A maintenance beat like a worker's presence: one look at the store's names and its environments'
        small ``meta.json`` per interval (in a thread), and a registration only for a name not registered
        as it is now (new, re-pointed, its language tables replaced by ``env import --languages``, or not
        registered yet because Redis was away), so other API nodes know it within the interval.
        """
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.announce(self._base_url)
            except SandlotError as exc:  # Redis away, or the store unreadable: the next beat tries again
                log.warning("registering this node's environments: %s", exc)

    def _unregistered(self) -> list[Environment]:
        """The store's named environments not registered by this process as they are now (blocking)."""
        found = []
        for name in sorted(self.store.names()):
            try:
                env = self.store.inspect(name)
            except EnvironmentNotFound:
                continue  # removed meanwhile
            if self._announced.get(name) != _registered_as(env):
                found.append(env)
        return found

    async def _register(self, env: Environment) -> None:
        name = env.name
        record = await asyncio.to_thread(self._record_of, env)
        current = await self.registry.digest_of(name)
        claim = False
        if self._base_url is not None and current != env.digest:
            named = None if current is None else await self.registry.record(current)
            # Strictly newer (times are to the second): on a tie the name stays where it is.
            claim = named is None or str(named.meta.get("created", "")) < env.created
        holder = None
        if self._base_url is not None:
            # Keyed by its URL: a restarted node replaces its own entry (and token).
            url = f"{self._base_url}{INTERNAL_PATH}{env.digest}"
            holder = Holder(self._base_url, url, self.token, record.content_digest)
        await self.registry.register(name, record, holder, claim_name=claim)
        self._announced[name] = _registered_as(env)

    def _record_of(self, env: Environment) -> EnvironmentRecord:
        meta = {key: value for key, value in env.to_json().items() if key != "name"}
        offered = sorted(lang.name for lang in self.languages.offered_in(self.store.rootfs_of(env), env.languages))
        return EnvironmentRecord(env.digest, content_digest(self.store, env), meta, tuple(offered))

    async def resolve(self, spec: TaskSpec) -> tuple[TaskSpec, OfferedThere | None]:
        """The spec with the digest its environment name stands for; and, when this node's store lacks
        that environment, what the registering node found in it (for ``Engine.prepare``): the languages
        it offers and its own language tables, without which a language it adds would be unknown here.
        404 for a name nobody has."""
        if not spec.environment:
            return spec, None
        name = spec.environment
        try:
            here: Environment | None = self.store.inspect(name)  # names.json looked at, one small meta.json read
        except EnvironmentNotFound:
            here = None
        if here is not None and self._announced.get(name) != _registered_as(here):
            await self._register(here)  # imported (or its tables replaced) since the last look: at once
        digest = await self.registry.digest_of(name)
        if digest is None:
            raise EnvironmentNotFound(name)
        spec = dataclasses.replace(spec, environment_digest=digest)
        if (here is not None and here.digest == digest) or self.store.by_digest(digest) is not None:
            return spec, None
        record = await self.registry.record(digest)
        if record is None:
            raise EnvironmentNotFound(name)
        return spec, OfferedThere(record.languages, _tables(record.meta.get("languages")))

    async def listing(self) -> list[dict[str, object]]:
        """Every environment the deployment has registered, as ``GET /api/v1/environments`` lists them."""
        return [
            {"name": name, "digest": record.digest, "kind": record.kind, "languages": sorted(record.languages)}
            for name, record in await self.registry.named()
        ]

    def serves(self, digest: str, token: str) -> Environment | None:
        """The stored environment a holder's route sends for ``digest``, if ``token`` is this node's."""
        if self._base_url is None or not secrets.compare_digest(token.encode(), self.token.encode()):
            return None
        return self.store.by_digest(digest)

    async def ensure(self, name: str, digest: str) -> None:
        """Make sure environment ``digest`` is in this node's store (see the module docstring)."""
        here = await asyncio.to_thread(self.store.by_digest, digest)
        if here is not None:
            await self._follow_tables(name, here)
            return
        task = self._fetches.get(digest)
        if task is None:
            task = asyncio.create_task(self._obtain(name, digest), name=f"sandlot-env-fetch-{digest[7:19]}")
            self._fetches[digest] = task
            task.add_done_callback(self._fetched)
        await asyncio.shield(task)

    async def _follow_tables(self, name: str, here: Environment) -> None:
        """Take the registry's language tables for a stored environment when they changed (``env import
        --languages`` again on an API node replaces them, the digest staying): the job was checked at the
        door with those. One registry read per job; with Redis away, the tables stored here stand."""
        try:
            record = await self.registry.record(here.digest)
        except SandlotError as exc:
            log.warning("environment %r (%s): its registered language tables: %s", name, here.digest, exc)
            return
        if record is None or record.meta.get("digest") != here.digest:
            return
        tables = _tables(record.meta.get("languages"))
        if tables != here.languages:
            log.warning("environment %r (%s): taking the language tables it was registered with", name, here.digest)
            await asyncio.to_thread(self.store.set_languages, here.digest, tables)

    def _fetched(self, task: asyncio.Task[None]) -> None:
        self._fetches = {digest: t for digest, t in self._fetches.items() if t is not task}
        if not task.cancelled():
            task.exception()  # retrieved here too: every job waiting for it may have been cancelled

    async def _obtain(self, name: str, digest: str) -> None:
        record = await self.registry.record(digest)
        if record is None or record.meta.get("digest") != digest:
            raise EnvironmentFetchFailed(f"environment {name!r} ({digest}) is registered by no node")
        failures: list[str] = []
        for holder in record.holders:
            log.warning("fetching environment %r (%s) from %s", name, digest, holder.url)
            try:
                await asyncio.to_thread(
                    fetch, self.store, name, record.meta, holder.content_digest, holder.url, holder.token
                )
            except SandlotError as exc:
                log.warning("%s", exc)
                failures.append(str(exc))
                continue
            return
        spec = record.meta.get("spec") or {}
        if record.kind == "built" and spec:
            log.warning("building environment %r (%s) from its recorded spec", name, digest)
            try:
                await asyncio.to_thread(self._build, name, digest, spec)
            except SandlotError as exc:
                failures.append(f"building it from its spec: {exc}")
            else:
                return
        reasons = "; ".join(failures) or "no node serves it and it has no spec to build from"
        raise EnvironmentFetchFailed(f"environment {name!r} ({digest}) could not be obtained: {reasons}")

    def _build(self, name: str, digest: str, canonical: dict[str, object]) -> None:
        spec = Spec(
            name=name,
            suite=str(canonical.get("suite", "")),
            apt=tuple(str(p) for p in _list(canonical.get("apt"))),
            pip=tuple(str(p) for p in _list(canonical.get("pip"))),
            npm=tuple(str(p) for p in _list(canonical.get("npm"))),
            languages=_tables(canonical.get("languages")),  # part of what it is, and of its digest
        )
        if spec.digest() != digest:  # a build recipe of another sandlot version: it would not be this one
            raise EnvironmentFetchFailed(f"its spec hashes to {spec.digest()} here (another sandlot version)")
        Builder(self.store, log=lambda line: log.warning("%s", line)).build(spec, f"registry:{digest}")


def _registered_as(env: Environment) -> str:
    """What may change under a name between two registrations: the digest it points to, and the
    environment's language tables (importing the same image with other ``--languages`` replaces them)."""
    return env.digest + json.dumps(env.languages, sort_keys=True)


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list | tuple) else []


def _tables(value: object) -> dict[str, dict[str, Any]]:
    """An environment's language tables as its record carries them ({} for anything else)."""
    if not isinstance(value, dict):
        return {}
    return {str(name): dict(table) for name, table in value.items() if isinstance(table, dict)}
