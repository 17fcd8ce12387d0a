"""Wiring: every long-lived object of a serving process, created once and passed to the doors.

``Service.start`` builds sandbox -> pool -> broker -> engine -> worker -> metrics
in that order; the broker is the embedded memory one, or the Redis one when
``redis_url`` is set (distributed mode: API nodes and workers share it, and
an API node may run without a worker; sessions then live in the broker's
directory instead of this pool, see ``sandlot.sessions``; and its environment
store is shared through Redis, see ``sandlot.environments.shared``); ``stop`` drains in
reverse: stop accepting, let running executions finish until the deadline
(distributed: or hand them back), release the boxes (cgroups, mounts).
Doors get the Service and never build any of these themselves. What a run's
session settles, and sessions of both kinds made, described and ended, are
``sandlot.service_sessions`` (mixed into ``Service``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sandlot.broker import Broker, Distributed, TaskSpec
from sandlot.broker.memory import MemoryBroker
from sandlot.broker.redis import RedisBroker
from sandlot.config import ServerSettings, Settings
from sandlot.engine import Engine
from sandlot.environments.shared import SharedEnvironments
from sandlot.environments.store import EnvironmentStore
from sandlot.errors import (
    BrokerUnavailable,
    ConfigError,
    EnvironmentNotFound,
    IsolationUnavailable,
    NoWorker,
    RejectedError,
    SandlotError,
)
from sandlot.judge.validate import prepare_judge
from sandlot.languages import Language, LanguageRegistry, OfferedThere
from sandlot.metrics import Metrics
from sandlot.pool import BoxPool
from sandlot.sandbox import Sandbox
from sandlot.service_sessions import SessionOperations
from sandlot.sessions import Sessions
from sandlot.stateful import StatefulSessions
from sandlot.worker import Worker

log = logging.getLogger(__name__)
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
CLAIM_GRACE_S = 30.0  # on top of the longest compile + run, before a silent worker's job is taken over


def freeze_start_up_objects() -> None:
    """Take what start-up made (modules, the app, the pools: ~10^5 objects) out of the collector's sight.

    They live as long as the process; left in the oldest generation, every full
    collection walks them all (68 ms for the imports alone, measured), stalling
    the event loop: a share of an API node's tail latency under load. Called
    once a process is serving.
    """
    gc.collect()
    gc.freeze()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[asyncio.Event]:
    """An event that SIGTERM or SIGINT sets while the block runs: how each serving process learns to drain.

    Entered before a slow start-up (worker, MCP), a signal during it stops the process right after it, with
    everything released, rather than killing it half-built. The handlers go on the way out.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)


def effective_claim_idle_ms(settings: Settings, server: ServerSettings) -> int:
    """The set ``claim_idle_ms``, else the longest compile + run wall limit plus a grace.

    Heartbeats keep a live worker's job from being reclaimed whatever this is;
    the derived default also covers a worker too wedged to heartbeat but still
    running, so its job is not run twice before its own deadline has passed.
    """
    if server.claim_idle_ms > 0:
        return server.claim_idle_ms
    longest_s = settings.run_maxima.wall_time_limit_s + settings.compile_maxima.wall_time_limit_s
    return int((longest_s + CLAIM_GRACE_S) * 1000)


def _make_broker(settings: Settings, server: ServerSettings) -> Broker:
    if not server.redis_url:
        return MemoryBroker(
            max_queued=server.max_queued,
            result_ttl_s=server.result_ttl_s,
            max_result_bytes=server.result_memory_bytes,
            spill_dir=settings.state_dir / "results",
        )
    return RedisBroker(
        server.redis_url,
        max_queued=server.max_queued,
        result_ttl_s=server.result_ttl_s,
        consumer_name=server.worker_name or None,
        claim_idle_ms=effective_claim_idle_ms(settings, server),
        max_deliveries=server.max_deliveries,
        events_maxlen=server.events_maxlen,
        presence_ttl_s=server.presence_ttl_s,
    )


def _preload_roots(store: EnvironmentStore, names: tuple[str, ...]) -> list[Path]:
    """The roots of ``preload_environments``; a name this node's store lacks stops the start-up (a typo
    would otherwise only show as slower runs)."""
    roots: list[Path] = []
    for name in names:
        try:
            roots.append(store.rootfs(name))
        except EnvironmentNotFound as exc:
            raise ConfigError(f"setting preload_environments: {exc}") from exc
    return roots


@dataclass
class Service(SessionOperations):
    settings: Settings
    server: ServerSettings
    languages: LanguageRegistry
    sandbox: Sandbox
    pool: BoxPool
    broker: Broker
    engine: Engine
    metrics: Metrics
    worker: Worker | None
    sessions: Sessions  # the doors' sessions: the pools', or the broker's directory in distributed mode
    pools: dict[str, BoxPool] = field(default_factory=dict)  # by isolation level; "jail" is ``pool``
    shared: SharedEnvironments | None = None  # distributed mode: this node's store in the registry
    accepting: bool = True
    _versions: dict[str, str] = field(default_factory=dict)
    _store_watch: asyncio.Task[None] | None = None  # an API node's registration of what its store gains
    stateful: StatefulSessions | None = None  # stateful sessions (None: a Service built without them)

    @classmethod
    async def start(cls, settings: Settings, server: ServerSettings, *, broker: Broker | None = None) -> Service:
        settings = dataclasses.replace(settings, server=server)  # one truth: the flags' server settings, not the file's
        languages = LanguageRegistry.load(settings.languages_file)
        sandbox = Sandbox(settings)
        environments = EnvironmentStore.from_settings(settings)
        engine = Engine(
            settings, languages, notice=lambda message: log.warning("%s...", message), environments=environments
        )
        await asyncio.to_thread(engine.warm_caches)
        size = server.effective_pool_size
        preload = _preload_roots(environments, server.preload_environments)

        async def started_pool(size: int, isolation: str, prelaunch: bool) -> BoxPool:
            pool = BoxPool(
                sandbox,
                size,
                max_waiting=max(size * 4, server.max_queued),
                session_ttl_s=server.session_ttl_s,
                session_idle_s=server.session_idle_s,
                prelaunch_binds=engine.prelaunch_binds if prelaunch else None,
                isolation=isolation,
                preload=preload,
            )
            await pool.start()
            return pool

        pool = await started_pool(size, "jail", server.prelaunch)
        pools = {"jail": pool}
        problems: dict[str, str] = {}
        if server.gvisor_pool_size <= 0:
            problems["gvisor"] = "the gVisor pool is turned off (gvisor_pool_size is 0)"
        elif server.start_worker:  # an API node without one runs nothing: its workers' pools decide the levels
            try:
                await asyncio.to_thread(sandbox.check_isolation, "gvisor")
            except IsolationUnavailable as exc:
                problems["gvisor"] = exc.reason
                log.warning("isolation gvisor is unavailable: %s", exc)
            else:
                # Always pre-launched: gVisor's start is never on the request path.
                pools["gvisor"] = await started_pool(server.gvisor_pool_size, "gvisor", True)
        the_broker = broker or _make_broker(settings, server)
        shared = None
        if isinstance(the_broker, RedisBroker):
            shared = SharedEnvironments(environments, the_broker.environments, languages)
        metrics = Metrics()
        metrics.watch(
            queue_depth=lambda: float(the_broker.queue_depth()),
            pool_busy=lambda: float(pool.busy),
            pool_available=lambda: float(pool.available),
            sessions=lambda: float(sum(p.session_count for p in pools.values())),
        )
        stateful = StatefulSessions(
            pools,
            engine,
            settings,
            max_sessions=server.effective_max_stateful_sessions,
            ttl_s=server.session_ttl_s,
            idle_s=server.session_idle_s,
        )
        metrics.watch_stateful(lambda: float(stateful.count))
        worker = None
        if server.start_worker:
            concurrency = sum(p.size for p in pools.values())
            worker = Worker(
                the_broker,
                engine,
                pools,
                concurrency=concurrency,
                metrics=metrics,
                default_isolation=server.default_isolation,
                environments=shared,
                stateful=stateful,
            )
            worker.start()
            await worker.present()  # API nodes count this worker before it is reported ready
        directory = the_broker.sessions if isinstance(the_broker, Distributed) else None
        sessions = Sessions(
            pools,
            directory,
            session_ttl_s=server.session_ttl_s,
            session_idle_s=server.session_idle_s,
            problems=problems,
            remote=the_broker.session_files if isinstance(the_broker, RedisBroker) else None,
            remote_timeout_s=server.presence_ttl_s,  # a worker silent that long is dead: stop waiting for it
        )
        service = cls(
            settings,
            server,
            languages,
            sandbox,
            pool,
            the_broker,
            engine,
            metrics,
            worker,
            sessions,
            pools,
            shared,
            stateful=stateful,
        )
        service._versions = await languages.probe_versions()
        return service

    @property
    def ready(self) -> bool:
        return self.accepting and self.pool.ready

    async def serves(self, isolation: str = "") -> bool:
        """Whether a run at the level can start: in the distributed mode, some live worker serves it.

        The embedded broker's jobs are taken in this process (by its worker, or whatever claims
        them there): nothing to ask. ``BrokerUnavailable`` when Redis cannot be asked.
        """
        if isinstance(self.broker, Distributed):
            return await self.broker.serving(isolation or self.server.default_isolation) > 0
        return True

    async def require_worker(self, spec: TaskSpec) -> None:
        """Refuse (``NoWorker``, HTTP 503) a run whose caller waits for it when no worker could take it."""
        level = spec.isolation or self.server.default_isolation
        if not await self.serves(level):
            raise NoWorker(level)

    def environments(self, allowed: Callable[[str], bool] = lambda _name: True) -> list[dict[str, object]]:
        """The environments of this node's store that ``allowed`` (the caller's key) lets it use, with the
        languages each offers (``GET /api/v1/environments``)."""
        store = self.engine.environments
        if store is None:
            return []
        listed: list[dict[str, object]] = []
        for name in sorted(filter(allowed, store.names())):
            try:
                env = store.inspect(name)
            except EnvironmentNotFound:
                continue  # removed since the names were read
            languages = sorted(lang.name for lang in self.languages.offered_in(store.rootfs_of(env), env.languages))
            listed.append({"name": env.name, "digest": env.digest, "kind": env.kind, "languages": languages})
        return listed

    async def list_environments(self, allowed: Callable[[str], bool] = lambda _name: True) -> list[dict[str, object]]:
        """``environments``, and in the distributed mode every environment registered on any node (a run may
        name those too: a worker fetches what it lacks); this node's own entry wins for a name it has."""
        listed = await asyncio.to_thread(self.environments, allowed)  # reads metadata, probes toolchains
        if self.shared is None:
            return listed
        try:
            registered = await self.shared.listing()
        except SandlotError as exc:  # Redis away: this node's own are still true
            log.warning("listing the registered environments: %s", exc)
            return listed
        here = {entry["name"] for entry in listed}
        listed += [entry for entry in registered if entry["name"] not in here and allowed(str(entry["name"]))]
        return sorted(listed, key=lambda entry: str(entry["name"]))

    async def language_in(self, name: str, environment: str) -> Language:
        """The language ``name`` as environment ``environment`` offers it (its own tables applied);
        ``EnvironmentNotFound`` or a RejectedError naming the language when it does not. Distributed, an
        environment only other nodes hold is as the registry records it (what its node found offered)."""
        store = self.engine.environments

        def stored_here() -> Language | None:  # reads the store and probes the root: off the loop
            if store is None or environment not in store.names():
                return None
            env = store.inspect(environment)
            return self.languages.get_in(name, store.rootfs_of(env), environment, env.languages)

        here = await asyncio.to_thread(stored_here)
        if here is not None:
            return here
        if self.shared is None:
            raise EnvironmentNotFound(environment)
        probe = TaskSpec(id="", tenant="", language=name, files=(), environment=environment)
        resolved, offered = await self.shared.resolve(probe)  # EnvironmentNotFound when no node has it
        if offered is not None:
            return self.languages.get_among(name, offered.names, environment, offered.tables)

        def by_digest() -> Language:  # this store has what the name stands for (under another name)
            env = store.by_digest(resolved.environment_digest) if store is not None else None
            if store is None or env is None:
                raise EnvironmentNotFound(environment)
            return self.languages.get_in(name, store.rootfs_of(env), environment, env.languages)

        return await asyncio.to_thread(by_digest)

    async def announce_environments(self, base_url: str | None) -> None:
        """Distributed mode: register this node's environments (``base_url``: it serves them over HTTP)."""
        if self.shared is None:
            return
        try:
            await self.shared.announce(base_url)
        except SandlotError as exc:  # Redis away at start: the watch (or a submit) registers them later
            log.warning("registering this node's environments: %s", exc)
        if base_url is not None and self._store_watch is None:
            self._store_watch = asyncio.create_task(self.shared.watch(), name="sandlot-environments-watch")

    def versions(self) -> dict[str, str]:
        return dict(self._versions)

    def validate(
        self, spec: TaskSpec, *, min_isolation: str = "jail", offered_there: OfferedThere | None = None
    ) -> TaskSpec:
        """Everything the engine would reject, checked up front: a 4xx naming the field, not a failed task.

        Returns spec with its isolation level settled: the one asked for, else the
        server's default raised to ``min_isolation`` (the caller's API key). A level
        weaker than the key's minimum is refused (403); one this server cannot run
        is a 503 naming the level (IsolationUnavailable), never a run at a weaker level.
        """
        if self._local_cell(spec):
            spec = self.stateful.settle(spec) if self.stateful is not None else spec  # its language and level
        elif not spec.language:
            if spec.session_id is not None and not self.sessions.distributed:
                # A cell of a session that is not there (ended, another tenant's): that, not the language.
                self.sessions.pool_for_run(spec.isolation, spec.tenant, spec.session_id)
            raise RejectedError("language: required", field="language")
        level = self.isolation_for(spec.isolation, min_isolation)
        if level != spec.isolation:
            spec = dataclasses.replace(spec, isolation=level)
        cell = self._is_cell(spec)
        if spec.session_id is not None and not spec.environment and not self.sessions.distributed and not cell:
            # A session created in an environment runs there unless the request names another.
            environment = self.sessions.environment_of(spec.tenant, spec.session_id)
            if environment:
                spec = dataclasses.replace(spec, environment=environment)
        if cell:  # the session's interpreter was checked when it started: only the cell's own limits here
            self.engine.settings.resolve_limits(spec.limits, where="limits")
        elif spec.judge:
            prepare_judge(self.engine, spec, offered_there)  # the solution, checker, interactor and every test
        else:
            self.engine.prepare(
                spec.to_job(), spec.limits, spec.compile_limits, qualify_fields=True, offered_there=offered_there
            )
        if not self.sessions.distributed and not cell:
            # Distributed, the workers' pools decide which levels run, and a session's
            # level is in the broker: ``enqueue`` settles it.
            self.sessions.pool_for_run(spec.isolation, spec.tenant, spec.session_id)
        return spec

    async def submit(
        self, spec: TaskSpec, *, idempotency_key: str | None = None, min_isolation: str = "jail", waits: bool = False
    ) -> TaskSpec:
        """Validate and queue; ``waits``: the caller waits for the result, so refuse it with no live worker."""
        if not self.accepting:
            raise BrokerUnavailable("the server is shutting down")
        spec, offered_there = await self.resolve_environment(spec)
        spec = self.validate(spec, min_isolation=min_isolation, offered_there=offered_there)
        if waits:
            await self.require_worker(spec)
        return await self.enqueue(spec, idempotency_key=idempotency_key)

    async def enqueue(self, spec: TaskSpec, *, idempotency_key: str | None = None) -> TaskSpec:
        """Queue a spec the caller already validated (doors validate before taking a quota slot).

        A run in a session goes at the session's own level (400 if that is weaker than asked).
        """
        if not self.accepting:
            raise BrokerUnavailable("the server is shutting down")
        if spec.session_id is not None and not self._is_cell(spec):
            level = await self.sessions.level_for_run(spec.tenant, spec.session_id, spec.isolation)
            if level != spec.isolation:
                spec = dataclasses.replace(spec, isolation=level)
        return await self.broker.submit(spec, idempotency_key=idempotency_key)

    async def stop(self) -> None:
        """Drain: stop accepting, finish or cancel running work, release every box."""
        self.accepting = False
        if self._store_watch is not None:
            self._store_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._store_watch
        if self.worker is not None:
            await self.worker.drain(self.server.drain_deadline_s)
        if self.stateful is not None:
            await self.stateful.close()  # their boxes go back to the pools before those close
        await self.broker.close()
        for pool in reversed(list(self.pools.values())):
            await pool.close()


def count_boxes(n: int) -> str:
    """``1 box``, ``4 boxes``: for the start-up lines."""
    return f"{n} box" if n == 1 else f"{n} boxes"
