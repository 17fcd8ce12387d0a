"""The engine: turns a Job into stages on a Box and one ordered event stream.

validate (RejectedError on bad input) -> write sources -> compile stage (own
limits; its output is rewritten to the user's file name) -> run stage (output
streams live) -> one ExitEvent whose Result carries the status model. Every
event is sequence-numbered and timestamped here, once, for every door.

A job naming an environment is resolved here, once: its name to the root in the
EnvironmentStore (``EnvironmentNotFound``), its language probed in that root;
every stage then runs with that root (``Box.run(rootfs=...)``) and without the
host-side language binds and caches, which belong to the host's toolchains. An
image's ``Env`` is the base of every stage's env, the language's on top
(``Environment.box_env``); its ``WorkingDir`` and ``User`` are not applied: a
program runs in /box as the box's own unprivileged user, in every environment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import re
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sandlot.config import CLI_FLAGS, LimitRequest, Settings
from sandlot.errors import EnvironmentNotFound, RejectedError
from sandlot.languages import Language, LanguageRegistry, OfferedThere, warm_cache
from sandlot.languages.naming import SourceName
from sandlot.models import (
    Event,
    ExitEvent,
    Job,
    Limits,
    OutputEvent,
    Result,
    SourceFile,
    StageEvent,
    StageResultEvent,
    Status,
)
from sandlot.paths import validate_relative_path
from sandlot.sandbox import BOX_WORKDIR, Bind, Box
from sandlot.sandbox.box import ISOLATION_LEVELS, StdinSource
from sandlot.workdir import Compiled, write_workdir

if TYPE_CHECKING:
    from sandlot.environments.store import EnvironmentStore

MAX_FILES = 64
MAX_ARGS = 256
MAX_ARG_BYTES = 64 * 1024
MAX_COMMANDS = 32
MAX_COMMAND_BYTES = 64 * 1024
MAX_FETCH_FILES = 64
MAX_FETCH_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class PreparedJob:
    job: Job
    language: Language
    limits: Limits
    compile_limits: Limits
    rootfs: Path | None = None  # the job's environment's root; None: the host's
    image_env: tuple[tuple[str, str], ...] = ()  # the environment's image Env, under the language's env


def check_isolation(level: str) -> None:
    """Reject a level sandlot does not know (whether this host can run it is the pool's question)."""
    if level not in ISOLATION_LEVELS:
        offered = ", ".join(ISOLATION_LEVELS)
        raise RejectedError(f"isolation {level!r} is unknown; choose one of: {offered}", field="isolation")


def rejected(message: str, language: str = "") -> Result:
    return Result(status=Status.REJECTED, message=message, language=language)


class Engine:
    """Stateless apart from its collaborators; one per process."""

    def __init__(
        self,
        settings: Settings,
        languages: LanguageRegistry,
        *,
        notice: Callable[[str], None] | None = None,
        environments: EnvironmentStore | None = None,
    ) -> None:
        self.settings = settings
        self.languages = languages
        self.environments = environments  # None: no store here, every environment is unknown
        self._notice = notice  # hears what makes a first use slow (a cache being warmed)

    def prepare(
        self,
        job: Job,
        limits: LimitRequest | None = None,
        compile_limits: LimitRequest | None = None,
        *,
        qualify_fields: bool = False,
        cli_flags: bool = False,
        offered_there: OfferedThere | None = None,
    ) -> PreparedJob:
        """Validate everything a door accepted; raises RejectedError naming the field.

        ``offered_there``: the job's environment (``environment_digest``) as the node that registered it
        probed it (its languages and its own language tables), for a node whose store lacks it (the
        distributed mode).

        With ``qualify_fields`` limit errors name ``limits.x`` / ``compile_limits.x``
        (request doors); with ``cli_flags``, the CLI's flag (``--time-limit``); else just ``x``.
        """
        run_where = "limits" if qualify_fields else CLI_FLAGS if cli_flags else None
        rootfs: Path | None = None
        image_env: tuple[tuple[str, str], ...] = ()
        if job.environment:
            if self.environments is None:
                raise EnvironmentNotFound(job.environment)
            if job.environment_digest:  # the environment asked for at submit, whatever the name points to here
                environment = self.environments.by_digest(job.environment_digest)
                if environment is None and offered_there is None:
                    raise EnvironmentNotFound(job.environment)
                # None with offered_there: stored on other nodes only (an API node checking a distributed job)
            else:
                environment = self.environments.inspect(job.environment)
            if environment is None:
                there = offered_there or OfferedThere(())
                language = self.languages.get_among(job.language, there.names, job.environment, there.tables)
            else:
                rootfs = self.environments.rootfs_of(environment)
                image_env = tuple(environment.box_env().items())
                language = self.languages.get_in(job.language, rootfs, job.environment, environment.languages)
        else:
            language = self.languages.get(job.language)
        if not job.files:
            raise RejectedError("no source given", field="code")
        if len(job.files) > MAX_FILES:
            raise RejectedError(f"too many files ({len(job.files)} > {MAX_FILES})", field="files")
        total = sum(len(f.content) for f in job.files)
        if total > self.settings.max_source_bytes:
            raise RejectedError(
                f"source too large ({total} bytes; max_source_bytes is {self.settings.max_source_bytes})", field="code"
            )
        main = job.files[0]
        if not main.content.strip():
            raise RejectedError("source is empty", field="code")
        try:
            main.content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RejectedError(f"source is not valid UTF-8 (byte {exc.start})", field="code") from exc
        if len(job.args) > MAX_ARGS or sum(len(a.encode(errors="surrogateescape")) for a in job.args) > MAX_ARG_BYTES:
            raise RejectedError("too many or too long args", field="args")
        for i, arg in enumerate(job.args):
            if "\x00" in arg:
                raise RejectedError(f"args[{i}]: must not contain NUL", field="args")
            if not _is_utf8(arg):
                raise RejectedError(f"args[{i}]: is not valid UTF-8", field="args")
        if len(job.stdin) > self.settings.run_maxima.max_output_bytes * 4:
            raise RejectedError("stdin too large", field="stdin")
        if len(job.commands) > MAX_COMMANDS:
            raise RejectedError(f"too many commands (max {MAX_COMMANDS})", field="commands")
        for i, command in enumerate(job.commands):
            if not _is_utf8(command):
                raise RejectedError(f"commands[{i}]: is not valid UTF-8", field="commands")
            if not command.strip() or "\x00" in command or len(command.encode()) > MAX_COMMAND_BYTES:
                raise RejectedError(f"commands[{i}]: must be a non-empty shell command without NUL", field="commands")
        if len(job.fetch_files) > MAX_FETCH_FILES:
            raise RejectedError(f"too many fetch_files (max {MAX_FETCH_FILES})", field="fetch_files")
        for path in job.fetch_files:
            validate_relative_path(path, field="fetch_files")
        return PreparedJob(
            job=job,
            language=language,
            limits=job.limits or self.settings.resolve_limits(limits, stage="run", where=run_where),
            compile_limits=job.compile_limits
            or self.settings.resolve_limits(
                compile_limits, stage="compile", where="compile_limits" if qualify_fields else None
            ),
            rootfs=rootfs,
            image_env=image_env,
        )

    async def execute(
        self,
        prepared: PreparedJob,
        box: Box,
        *,
        stdin: StdinSource | None = None,
        precompiled: Compiled | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Run a prepared job in box; yields stamped events ending with exactly one ExitEvent.

        ``stdin`` overrides the job's own stdin bytes with a stream (interactive doors).
        ``precompiled``: this job's program as ``compile_in`` left it (another box compiled the same
        sources): its workdir is copied here and its compile Result reported; the compiler does not run.
        """
        seq = itertools.count(1)
        budget = JobBudget(self.settings.job_wall_time_budget_s, self.settings.job_cpu_time_budget_s)

        def stamp(event: Event) -> Event:
            return dataclasses.replace(event, seq=next(seq), time=time.time())

        lang = prepared.language
        job = prepared.job
        source = lang.source_name(job.user_file_name, job.files[0].content)
        if precompiled is None:
            self._write_sources(box, source.file, job.files)
        else:
            write_workdir(box, precompiled.files)
        binds = self.job_binds(prepared, box)
        rootfs = prepared.rootfs
        env = _stage_env(prepared)
        stages: list[tuple[str, Result]] = []

        compile_output = b""
        if lang.compile is not None:
            yield stamp(StageEvent("compile"))
            compile_limits = budget.cap(prepared.compile_limits)
            if precompiled is None:
                raw = await self._compile(prepared, box, source, compile_limits)
            else:  # the same program compiled once for many tasks: its Result, charged as if compiled here
                raw = precompiled.result
            compiled = budget.charge(raw, asked=prepared.compile_limits, given=compile_limits)
            compile_output = compiled.compile_output
            stages.append(("compile", compiled))
            if compile_output:
                yield stamp(OutputEvent("stderr", compile_output, stage="compile"))
            yield stamp(StageResultEvent("compile", compiled))
            if compiled.status is not Status.OK:
                yield stamp(ExitEvent(compile_failure(compiled), stages=tuple(stages)))
                return

        if job.commands:
            plan = [(f"command {i + 1}", ["/bin/bash", "-c", cmd]) for i, cmd in enumerate(job.commands)]
        else:
            plan = [("run", [*lang.argv(lang.run, source), *job.args])]
        for index, (name, argv) in enumerate(plan):
            spent = budget.spent()
            if spent:  # too little left to even set a box up: the job ends here, as a timeout
                result = Result(Status.TIMEOUT, language=lang.name, compile_output=compile_output, message=spent)
                yield stamp(ExitEvent(result, stages=tuple(stages)))
                return
            yield stamp(StageEvent(name))
            stage_stdin: StdinSource = b"" if job.commands else (stdin if stdin is not None else job.stdin)
            finished = False
            limits = budget.cap(prepared.limits)
            stage_run = box.run(argv, limits=limits, stdin=stage_stdin, env=env, binds=binds, stage=name, rootfs=rootfs)
            # aclosing: a consumer that stops early ends the run here, not in a GC finaliser later.
            async with contextlib.aclosing(stage_run) as items:
                async for item in items:
                    if not isinstance(item, Result):
                        yield stamp(item)
                        continue
                    charged = budget.charge(item, asked=prepared.limits, given=limits)
                    final = dataclasses.replace(charged, language=lang.name, compile_output=compile_output)
                    if job.commands:
                        stages.append((name, final))
                        yield stamp(StageResultEvent(name, final))
                    finished = index == len(plan) - 1 or final.status is not Status.OK
                    if finished:
                        # Answer now: the box's teardown (still inside box.run) happens after.
                        files = tuple(self._fetch(box, job.fetch_files))
                        yield stamp(ExitEvent(final, stages=tuple(stages), files=files))
            if finished:
                return

    async def compile_in(self, prepared: PreparedJob, box: Box) -> Result | None:
        """Write the sources into box and compile them there, alone (judge mode, compile-once batches).

        None for a language without a compile step. The Result is the compile stage's, as ``execute``
        reports it (``compile_failure`` turns a failed one into the job's); on success the box's
        workdir holds what ``run_in`` runs, there or copied elsewhere (``read_workdir``).
        """
        lang = prepared.language
        job = prepared.job
        source = lang.source_name(job.user_file_name, job.files[0].content)
        self._write_sources(box, source.file, job.files)
        if lang.compile is None:
            return None
        return await self._compile(prepared, box, source, prepared.compile_limits)

    async def _compile(self, prepared: PreparedJob, box: Box, source: SourceName, limits: Limits) -> Result:
        lang = prepared.language
        binds = self.job_binds(prepared, box)
        compiled: Result | None = None
        run = box.run(
            lang.argv(lang.compile or (), source),
            limits=limits,
            env=_stage_env(prepared),
            binds=binds,
            stage="compile",
            rootfs=prepared.rootfs,
        )
        async with contextlib.aclosing(run) as items:
            async for item in items:
                if isinstance(item, Result):
                    compiled = item
        assert compiled is not None
        user_name = _printable_name(prepared.job.user_file_name or source.file)
        output = _rewrite_compile_output(compiled.stdout + compiled.stderr, lang, source.file, user_name)
        return dataclasses.replace(compiled, compile_output=output, language=lang.name)

    def run_in(
        self, prepared: PreparedJob, box: Box, *, stdin: StdinSource, limits: Limits, args: tuple[str, ...] = ()
    ) -> AsyncGenerator[OutputEvent | Result, None]:
        """Run a program ``compile_in`` compiled (its workdir copied into box) once: one judge test."""
        lang = prepared.language
        source = lang.source_name(prepared.job.user_file_name, prepared.job.files[0].content)
        argv = [*lang.argv(lang.run, source), *args]
        binds = self.job_binds(prepared, box)
        return box.run(argv, limits=limits, stdin=stdin, env=_stage_env(prepared), binds=binds, rootfs=prepared.rootfs)

    def warm_caches(self) -> None:
        """Warm every offered language's shared cache now (start-up), not on a first request."""
        for lang in self.languages.offered():
            if lang.cache is not None:
                warm_cache(lang, self.settings.state_dir / "cache", self._notice)

    def prelaunch_binds(self, box: Box) -> list[Bind]:
        """Every bind any offered language needs, so one pre-launched jail serves them all.

        (A Python run then also sees, read-only, e.g. Java's /etc config and its own
        copy-on-write view of the Go cache: nothing it could not read in a Go or Java run.)
        """
        binds: list[Bind] = []
        for lang in self.languages.offered():
            binds += self._binds(lang, box)
        return list(dict.fromkeys(binds))

    def job_binds(self, prepared: PreparedJob, box: Box) -> list[Bind]:
        """What this job's language binds into a box: a ``Box.prelaunch`` for exactly this job."""
        return self._binds(prepared.language, box) if prepared.rootfs is None else []

    def _binds(self, lang: Language, box: Box) -> list[Bind]:
        binds = [Bind(Path(p), p, optional=True) for p in lang.binds]
        if lang.cache is not None:
            lower = warm_cache(lang, self.settings.state_dir / "cache", self._notice)
            binds.append(box.cow_bind(lang.cache.name, lower, lang.cache.dest))
        return binds

    def _fetch(self, box: Box, paths: tuple[str, ...]) -> list[tuple[str, bytes]]:
        fetched: list[tuple[str, bytes]] = []
        budget = MAX_FETCH_BYTES
        for path in paths:
            try:
                content = box.read_file(path, max_bytes=budget)
            except RejectedError:
                continue  # missing, a link or special file, or over budget: not returned
            budget -= len(content)
            fetched.append((path, content))
        return fetched

    def _write_sources(self, box: Box, main_name: str, files: tuple[SourceFile, ...]) -> None:
        names = [main_name] + [f.name for f in files[1:]]
        if len(set(names)) != len(names):
            raise RejectedError(f"duplicate file names (the main file is stored as {main_name})", field="files")
        for name, f in zip(names, files, strict=False):
            box.write_file(name, f.content)


# Less than this left and the next stage is not started: setting a box up alone can take this long on a
# loaded host, and a deadline that expires during set-up would look like a sandbox failure.
_MIN_STAGE_WALL_S = 1.0
_MIN_STAGE_CPU_S = 0.1


@dataclass
class JobBudget:
    """A job's total wall-clock and CPU time over all its stages (compile, run, every command).

    Each stage's limits are capped by what the earlier stages left; a stage that
    times out under a capped limit is reported as the job's budget running out.
    """

    wall_time_s: float
    cpu_time_s: float
    used_wall_s: float = 0.0
    used_cpu_s: float = 0.0

    def spent(self) -> str:
        """Why no further stage may start ("" while one may)."""
        if self.wall_time_s - self.used_wall_s < _MIN_STAGE_WALL_S:
            return self._ran_out("wall-clock", self.wall_time_s)
        if self.cpu_time_s - self.used_cpu_s < _MIN_STAGE_CPU_S:
            return self._ran_out("CPU", self.cpu_time_s)
        return ""

    def cap(self, limits: Limits) -> Limits:
        wall = self.wall_time_s - self.used_wall_s
        cpu = self.cpu_time_s - self.used_cpu_s
        if wall >= limits.wall_time_limit_s and cpu >= limits.time_limit_s:
            return limits  # the common case: the stage's own limits are the tighter ones
        return dataclasses.replace(
            limits, wall_time_limit_s=min(wall, limits.wall_time_limit_s), time_limit_s=min(cpu, limits.time_limit_s)
        )

    def charge(self, result: Result, *, asked: Limits, given: Limits) -> Result:
        """Count the stage's time; say so when the job's budget, not the stage's limit, ended it."""
        self.used_wall_s += result.wall_time
        self.used_cpu_s += result.cpu_time
        if result.status is not Status.TIMEOUT:
            return result
        if result.message.startswith("CPU") and given.time_limit_s < asked.time_limit_s:
            return dataclasses.replace(result, message=self._ran_out("CPU", self.cpu_time_s))
        if result.message.startswith("wall") and given.wall_time_limit_s < asked.wall_time_limit_s:
            return dataclasses.replace(result, message=self._ran_out("wall-clock", self.wall_time_s))
        return result

    @staticmethod
    def _ran_out(kind: str, budget_s: float) -> str:
        return f"the job's {kind} time budget ran out ({budget_s:g} s over all its stages)"


def _stage_env(prepared: PreparedJob) -> dict[str, str]:
    """A stage's environment variables: an image's Env (its PATH: its toolchains) under the language's own."""
    return {**dict(prepared.image_env), **prepared.language.env}


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: undecodable bytes from the command line
        return False
    return True


def _printable_name(name: str) -> str:
    """A file name as messages can show it (undecodable bytes become U+FFFD)."""
    return name if _is_utf8(name) else name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def compile_failure(compiled: Result) -> Result:
    """A failed compile stage's Result as the job's: compile_error, unless the sandbox (not the compiler) failed."""
    if compiled.status is Status.INTERNAL_ERROR or compiled.cancelled:  # not the compiler's failure
        return compiled
    reason = compiled.message if compiled.status is not Status.RUNTIME_ERROR else "compilation failed"
    if compiled.status is not Status.RUNTIME_ERROR:
        reason = f"compilation failed: {reason}"
    return dataclasses.replace(
        compiled, status=Status.COMPILE_ERROR, stdout=b"", stderr=b"", message=reason, exit_code=compiled.exit_code
    )


def _rewrite_compile_output(raw: bytes, lang: Language, src: str, user_name: str) -> bytes:
    """Show the user's file name instead of our paths (``src`` is the name in the box); drop internals."""
    text = raw.decode("utf-8", "replace")
    for internal in (f"{BOX_WORKDIR}/{src}", f"./{src}"):
        text = text.replace(internal, user_name)
    if user_name != src:
        text = re.sub(rf"(?<![\w/.-]){re.escape(src)}(?=:)", user_name, text)
    drops = [re.compile(p) for p in lang.drop_compile_lines]
    lines = [line for line in text.splitlines(keepends=True) if not any(d.match(line.rstrip("\n")) for d in drops)]
    return "".join(lines).encode("utf-8", "replace")
