"""``sandlot env ...``: the environment store from the command line (import, build, list, inspect, rm, gc).

Exit codes: 0 done; 2 the user's mistake (a bad image, spec or name), one line on stderr; 1 sandlot could
not do it (a build whose tool failed, an unwritable store), the reason on stderr. Loaded only when an
``env`` command runs (cli.py's lazy commands).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sandlot.environments.store import Environment, EnvironmentStore
from sandlot.errors import ConfigError, RejectedError, SandboxError, SpecRejected

if TYPE_CHECKING:
    from sandlot.config import Settings

EXIT_USER_MISTAKE = 2
EXIT_FAILED = 1


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except RejectedError as exc:
        click.echo(f"sandlot env: {exc}", err=True)
        sys.exit(EXIT_USER_MISTAKE)
    except ConfigError as exc:
        click.echo(f"sandlot env: configuration error: {exc}", err=True)
        sys.exit(EXIT_USER_MISTAKE)
    except (SandboxError, OSError) as exc:
        click.echo(f"sandlot env: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        click.echo("sandlot env: interrupted; nothing was left half-made", err=True)
        sys.exit(130)


def _settings(ctx: click.Context) -> Settings:
    from sandlot.config import load_settings

    config: Path | None = (ctx.find_root().obj or {}).get("config")
    return load_settings(config)


def _store(ctx: click.Context) -> EnvironmentStore:
    return EnvironmentStore.from_settings(_settings(ctx))


def _summary(env: Environment) -> str:
    return f"{env.name}  {env.digest}  {env.kind}  {env.file_count} files  {env.size_bytes / 2**20:.1f} MiB"


@click.group("env")
def env() -> None:
    """Environments: read-only roots (your OCI image, or a declared Debian + pip + npm root)."""


def _checked_languages(settings: Settings, tables: dict[str, Any], where: str) -> dict[str, Any]:
    """Language tables as an environment will use them, parsed now (a mistake is refused before any work)."""
    from sandlot.languages import LanguageRegistry

    try:
        LanguageRegistry.load(settings.languages_file).with_tables(tables)
    except ConfigError as exc:
        raise SpecRejected(f"{where}: {exc}") from exc
    return tables


def _languages_file(settings: Settings, path: Path) -> dict[str, Any]:
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SpecRejected(f"{path}: cannot read the languages file: {exc}") from exc
    return _checked_languages(settings, data, str(path))


@env.command("import")
@click.argument("name")
@click.argument("archive_or_dir", type=click.Path(path_type=Path))
@click.option(
    "--languages",
    "languages_path",
    type=click.Path(path_type=Path),
    help="A TOML file of [NAME] tables as in languages.toml: languages this image adds or overrides.",
)
@click.pass_context
def import_(ctx: click.Context, name: str, archive_or_dir: Path, languages_path: Path | None) -> None:
    """Import a `docker save` archive or an OCI image layout (directory or tar) as NAME."""
    with _errors():
        settings = _settings(ctx)
        languages = _languages_file(settings, languages_path) if languages_path is not None else None
        store = EnvironmentStore.from_settings(settings)
        outcome = store.import_image(name, archive_or_dir, languages=languages)
        word = "already in the store, named" if outcome.cached else "imported"
        click.echo(f"{word}: {_summary(outcome.environment)}")


@env.command("build")
@click.argument("spec_path", metavar="SPEC.toml", type=click.Path(path_type=Path))
@click.pass_context
def build(ctx: click.Context, spec_path: Path) -> None:
    """Build the environment a TOML spec declares (cached by the spec's hash)."""
    from sandlot.environments.build import Builder
    from sandlot.environments.spec import load_spec

    progress: Callable[[str], None] = lambda line: click.echo(line, err=True)  # noqa: E731
    with _errors():
        spec = load_spec(spec_path)
        settings = _settings(ctx)
        _checked_languages(settings, spec.languages, str(spec_path))
        builder = Builder(
            EnvironmentStore.from_settings(settings), timeout_s=settings.environment_build_timeout_s, log=progress
        )
        outcome = builder.build(spec, str(spec_path.resolve()))
        word = "cached (the same spec was built before; nothing done)" if outcome.cached else "built"
        click.echo(f"{word}: {_summary(outcome.environment)}")


@env.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of environments on stdout.")
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """List the named environments."""
    with _errors():
        environments = _store(ctx).environments()
        if as_json:
            click.echo(json.dumps([e.to_json() for e in environments], indent=2))
            return
        for environment in environments:
            click.echo(_summary(environment))


@env.command("inspect")
@click.argument("name")
@click.pass_context
def inspect(ctx: click.Context, name: str) -> None:
    """Everything recorded about NAME, as JSON (with its root's path)."""
    from sandlot.sandbox.policy import BOX_UID, BOX_WORKDIR  # here: the other env commands never load sandbox/

    with _errors():
        store = _store(ctx)
        environment = store.inspect(name)
        data: dict[str, Any] = {**environment.to_json(), "rootfs": str(store.rootfs_of(environment))}
        # What a box gets of the image's config: its Env under the language's; never its WorkingDir or User.
        data["box"] = {"env": environment.box_env(), "working_dir": BOX_WORKDIR, "user": f"sandbox (uid {BOX_UID})"}
        click.echo(json.dumps(data, indent=2))


@env.command("rm")
@click.argument("name")
@click.pass_context
def rm(ctx: click.Context, name: str) -> None:
    """Remove NAME (its files too, unless another name points to the same environment)."""
    with _errors():
        freed = _store(ctx).remove(name)
        click.echo(f"removed {name}" + ("" if freed else " (its files stay: another name points to them)"))


@env.command("gc")
@click.pass_context
def gc(ctx: click.Context) -> None:
    """Remove environments no name points to, and what interrupted imports left."""
    with _errors():
        removed = _store(ctx).gc()
        for item in removed:
            click.echo(f"removed {item}")
        click.echo(f"gc: {len(removed)} removed")
