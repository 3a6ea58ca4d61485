"""The `cloudcontainer` command: serve, database upgrades, accounts, the sandbox image."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
import uvicorn
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import Task as RichTask
from rich.table import Table
from rich.text import Text

from cloudcontainer import __version__
from cloudcontainer.config import RuntimeName, Settings, load_settings
from cloudcontainer.observability.logging import configure_logging

if TYPE_CHECKING:
    from cloudcontainer.images import BuildResult, ImageBuildError, ImageResult

__all__ = ["main"]

app = typer.Typer(
    name="cloudcontainer",
    help="A self-hostable cloud runtime for AI app builders.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
user_app = typer.Typer(help="User accounts.", no_args_is_help=True)
image_app = typer.Typer(help="The sandbox base image.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(user_app, name="user")
app.add_typer(image_app, name="image")
app.add_typer(audit_app, name="audit")

console = Console(stderr=True)
T = TypeVar("T")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file (also CLOUDCONTAINER_CONFIG).",
                 exists=True, dir_okay=False),
]  # fmt: skip
DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="Local state directory (CLOUDCONTAINER_DATA_DIR).")
]
DatabaseOption = Annotated[
    str | None,
    typer.Option("--database-url", help="SQLAlchemy async URL (CLOUDCONTAINER_DATABASE_URL)."),
]


def _settings(config: Path | None, **overrides: object) -> Settings:
    try:
        return load_settings(config, **overrides)
    except ValidationError as exc:
        console.print("[red]Invalid settings:[/red]")
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "settings"
            console.print(f"  {field}: {error['msg']}")
        raise typer.Exit(2) from None
    except FileNotFoundError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Listen address (CLOUDCONTAINER_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (CLOUDCONTAINER_PORT).")] = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseOption = None,
    runtime: Annotated[RuntimeName | None, typer.Option(help="Sandbox runtime.")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error.")] = None,
    log_format: Annotated[str | None, typer.Option(help="json or console.")] = None,
) -> None:
    """Start the gateway (API, previews, workbench)."""
    settings = _settings(
        config, host=host, port=port, data_dir=data_dir, database_url=database_url,
        runtime=runtime, log_level=log_level, log_format=log_format,
    )  # fmt: skip
    configure_logging(settings.log_level, settings.log_format)
    from cloudcontainer.app import create_app
    from cloudcontainer.internals.uvicorn import CoalescingHttpProtocol, DroppingWebSocketProtocol

    console.print(
        f"[bold]cloudcontainer {__version__}[/bold] on http://{settings.host}:{settings.port}"
        f"  (runtime {settings.runtime}, data {settings.data_dir})"
    )
    problem = asyncio.run(_runtime_problem(settings))
    if problem:
        console.print(f"[bold red]Sandboxes cannot start on this host:[/bold red] {problem}")
    if settings.redis_url and (problem := asyncio.run(_redis_problem(settings.redis_url))):
        console.print(f"[bold red]The gateway cannot start:[/bold red] {problem}")
        raise typer.Exit(1)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host=settings.host, port=settings.port, log_config=None,
            lifespan="on", server_header=False, timeout_graceful_shutdown=10,
            root_path=settings.root_path,
            proxy_headers=bool(settings.trusted_proxies),
            forwarded_allow_ips=settings.trusted_proxies or None,
            http=CoalescingHttpProtocol,  # a response's head and body in one send
            ws=DroppingWebSocketProtocol,  # a client that never reads is let go (issue 9)
        )
    )  # fmt: skip
    server.run()
    if not server.started:
        raise typer.Exit(1)


async def _redis_problem(url: str) -> str | None:
    """Why `redis_url` does not work, or None: said in one line before uvicorn starts."""
    from cloudcontainer.redisconn import RedisUnavailable, open_redis

    try:
        redis = await open_redis(url)
    except RedisUnavailable as exc:
        return exc.message
    await redis.aclose()
    return None


async def _runtime_problem(settings: Settings) -> str | None:
    """Why the configured sandbox runtime cannot work here, or None."""
    from cloudcontainer.runtimes.base import RuntimeUnavailable
    from cloudcontainer.state import build_runtime

    runtime = build_runtime(settings)
    try:
        await runtime.check()
    except RuntimeUnavailable as exc:
        return exc.message
    finally:
        await runtime.aclose()
    return None


@db_app.command("upgrade")
def db_upgrade(
    config: ConfigOption = None, data_dir: DataDirOption = None, database_url: DatabaseOption = None
) -> None:
    """Apply database migrations (the server also does this at start)."""
    from cloudcontainer.db import Database, migrate

    settings = _settings(config, data_dir=data_dir, database_url=database_url)

    async def run() -> None:
        database = Database(settings.database_url)
        try:
            await migrate.upgrade(database)
        finally:
            await database.aclose()

    asyncio.run(run())
    console.print("[green]Database is up to date.[/green]")


@user_app.command("create")
def user_create(
    email: Annotated[str, typer.Argument(help="The account's e-mail address.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    admin: Annotated[bool, typer.Option("--admin", help="Make an administrator.")] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Create a verified account (for operators and scripts)."""
    from cloudcontainer.api.schemas import normalize_email
    from cloudcontainer.errors import Conflict
    from cloudcontainer.state import open_services

    if not password_stdin:
        console.print("[red]Give --password-stdin and pipe the password in.[/red]")
        raise typer.Exit(2)
    password = sys.stdin.readline().rstrip("\r\n")
    if not 8 <= len(password) <= 256 or "\x00" in password:
        console.print("[red]The password must be 8 to 256 characters.[/red]")
        raise typer.Exit(2)
    try:
        email = normalize_email(email)
    except ValueError as exc:
        console.print(f"[red]Invalid e-mail: {exc}[/red]")
        raise typer.Exit(2) from None
    settings = _settings(config, data_dir=data_dir, database_url=database_url)
    configure_logging("warning", "console")

    async def run() -> str:
        async with open_services(settings, supervise=False) as services:
            user = await services.accounts.create_user(email, password, admin=admin)
            return user.id

    try:
        user_id = asyncio.run(run())
    except Conflict as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from None
    console.print(
        f"[green]Created {'administrator' if admin else 'user'} {email}[/green] ({user_id})"
    )


@user_app.command("delete")
def user_delete(
    email: Annotated[str, typer.Argument(help="The account's e-mail address.")],
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (scripts).")
    ] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Delete an account and everything it owns: containers (sandboxes destroyed), projects,
    snapshots, sessions, API keys. A running server closes the account's WebSockets within
    `ws_revalidate_seconds`."""
    from sqlalchemy import select

    from cloudcontainer.api.schemas import normalize_email
    from cloudcontainer.db import User
    from cloudcontainer.state import open_services

    try:
        email = normalize_email(email)
    except ValueError as exc:
        console.print(f"[red]Invalid e-mail: {exc}[/red]")
        raise typer.Exit(2) from None
    if not yes and not typer.confirm(f"Delete {email} and everything it owns?", err=True):
        raise typer.Exit(1)
    settings = _settings(config, data_dir=data_dir, database_url=database_url)
    configure_logging("warning", "console")

    async def run() -> str | None:
        async with open_services(settings, supervise=False) as services:
            async with services.database.session() as session:
                user = await session.scalar(select(User).where(User.email == email))
            if user is None:
                return None
            await services.removal.delete_account(user, actor="cli", source_ip=None)
            return user.id

    user_id = asyncio.run(run())
    if user_id is None:
        console.print(f"[red]No account {escape(email)}.[/red]")
        raise typer.Exit(1)
    console.print(f"[green]Deleted {escape(email)}[/green] ({user_id})")


@audit_app.command("list")
def audit_list(
    actor: Annotated[str | None, typer.Option(help="Only this user id's events.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action.")] = None,
    since: Annotated[str | None, typer.Option(help="From this ISO time (UTC).")] = None,
    until: Annotated[str | None, typer.Option(help="Before this ISO time.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many.")] = 100,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Show audit events, newest first."""
    from cloudcontainer.audit import AuditQuery
    from cloudcontainer.state import open_services

    query = AuditQuery(
        actor_id=actor, action=action, since=_when(since), until=_when(until), limit=limit
    )
    settings = _settings(config, data_dir=data_dir, database_url=database_url)
    configure_logging("warning", "console")

    async def run() -> list[list[str]]:
        async with open_services(settings, supervise=False) as services:
            page = await services.audit.query(query)
        return [
            [e.at.isoformat(timespec="seconds"), e.action, e.actor_email or e.actor_id or "-",
             e.source_ip or "-", f"{e.target_type}:{e.target_id}" if e.target_id else "-",
             json.dumps(e.detail, separators=(",", ":")) if e.detail else ""]
            for e in page.items
        ]  # fmt: skip

    table = Table()
    for name in ("time (UTC)", "action", "actor", "source", "target", "detail"):
        table.add_column(name, overflow="fold")  # an address or id cut short misleads
    for row in asyncio.run(run()):
        table.add_row(*(escape(cell) for cell in row))  # values are data, not markup
    Console().print(table)


def _when(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        console.print(f"[red]Not an ISO time: {escape(value)}[/red]")
        raise typer.Exit(2) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@image_app.command("build")
def image_build(
    docker: Annotated[
        bool | None,
        typer.Option(
            "--docker/--no-docker",
            help="Also load it into Docker as the docker runtime's image; default: when the "
            "`runtime` setting is docker.",
        ),
    ] = None,
    tag: Annotated[
        str | None, typer.Option(help="Docker tag to give it; default the `sandbox_image` setting.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Build even if the current build is up to date.")
    ] = False,
    refresh: Annotated[
        bool,
        typer.Option(
            "--refresh", help="Fetch Debian's updates and the newest Node.js releases anew."
        ),
    ] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    docker_host: Annotated[
        str, typer.Option(envvar="DOCKER_HOST", help="Docker Engine address.")
    ] = "unix:///var/run/docker.sock",
    manifest: Annotated[
        Path | None,
        typer.Option(
            help="Rebuild what this manifest.json of an earlier build records: the same Debian "
            "packages and Node.js releases, checked.",
            dir_okay=False,
            exists=True,
        ),
    ] = None,
    debian_mirror: Annotated[
        str | None,
        typer.Option(help="Debian mirror; default deb.debian.org, or the manifest's."),
    ] = None,
    security_mirror: Annotated[
        str | None,
        typer.Option(help="Debian security mirror; default deb.debian.org, or the manifest's."),
    ] = None,
    npm_registry: Annotated[str, typer.Option(help="Where Node.js and npm come from.")] = (
        "https://registry.npmjs.org/"
    ),
    ca_bundle: Annotated[
        Path | None, typer.Option(help="CA certificates trusted for downloads.", dir_okay=False)
    ] = Path("/etc/ssl/certs/ca-certificates.crt"),
) -> None:
    """Build the sandbox root filesystem from Debian and the npm registry; needs root.

    Every runtime starts sandboxes from it (`local` directly, `docker` as an image made from
    it). No container registry is used. A few minutes the first time; nothing to do after,
    until the recipe changes (or --force / --refresh).
    """
    from cloudcontainer.images import (
        BuildOptions,
        ImageBuildError,
        InvalidTag,
        build_rootfs,
        load_into_docker,
    )
    from cloudcontainer.images.engine import normalize_tag

    settings = _settings(config, data_dir=data_dir)
    recorded = _read_manifest(manifest) if manifest is not None else None
    mirrors = recorded["debian"] if recorded is not None else {}
    options = BuildOptions(
        rootfs_dir=settings.rootfs_path, force=force, refresh=refresh,
        debian_mirror=debian_mirror or mirrors.get("mirror") or "http://deb.debian.org/debian",
        security_mirror=security_mirror or mirrors.get("security_mirror")
        or "http://deb.debian.org/debian-security",
        npm_registry=npm_registry, manifest=recorded,
        ca_bundle=ca_bundle if ca_bundle and ca_bundle.is_file() else None,
    )  # fmt: skip
    to_docker = docker if docker is not None else settings.runtime == "docker"
    docker_tag = tag or settings.sandbox_image
    if to_docker:
        try:
            docker_tag = normalize_tag(docker_tag)  # before any work
        except InvalidTag as exc:
            _print_build_error(exc)
            raise typer.Exit(2) from None

    async def build() -> tuple[BuildResult, ImageResult | None]:
        result = await build_rootfs(options, progress)
        image = None
        if to_docker:
            image = await load_into_docker(result.build, docker_tag, docker_host, progress)
        return result, image

    async def build_and_prune() -> tuple[BuildResult, ImageResult | None]:
        result, image = await build()
        if result.built or (image is not None and image.loaded):
            await _prune(settings, docker_host)  # what the new build replaced, unless in use
        return result, image

    with _BuildProgress(console) as progress:
        try:
            result, image = asyncio.run(_cancelled_by_sigterm(build_and_prune()))
        except ImageBuildError as exc:
            progress.fail()
            _print_build_error(exc)
            raise typer.Exit(2 if isinstance(exc, InvalidTag) else 1) from None
        except (KeyboardInterrupt, asyncio.CancelledError):
            progress.fail()
            console.print("[red]Interrupted; the unfinished build was removed.[/red]")
            raise typer.Exit(130) from None
    _print_build_result(result, image)


def _read_manifest(path: Path) -> dict[str, Any]:
    """A build's manifest.json, or exit 2 saying why it is not one."""
    try:
        recorded: dict[str, Any] = json.loads(path.read_text())
        if not isinstance(recorded["debian"]["packages"], dict) or not recorded["node"]["majors"]:
            raise ValueError("no package list")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        console.print(f"[red]{escape(str(path))} is not a build manifest: {exc}[/red]")
        raise typer.Exit(2) from None
    return recorded


@image_app.command("list")
def image_list(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """The root filesystem builds: which is current, what each holds, which sandboxes use it."""
    from cloudcontainer.images import RootfsStore

    settings = _settings(config, data_dir=data_dir)
    store = RootfsStore(settings.rootfs_path)
    current = store.current()
    in_use = asyncio.run(_rootfs_in_use(settings))
    table = Table("build", "created", "Node.js", "python", "size", "state")
    for build in store.builds():
        manifest = build.manifest
        majors = manifest["node"]["majors"]
        node = ", ".join(majors[major]["node"]["version"] for major in majors)
        state = "current" if current is not None and build.id == current.id else ""
        if build.id in in_use:
            state = ", ".join(filter(None, [state, "in use"]))
        size = f"{int(manifest['size_bytes']) / 1e9:.2f} GB"
        python = str(manifest["tools"].get("python3", ""))
        table.add_row(build.id, str(manifest["created"]), node, python, size, state)
    if not table.rows:
        console.print(f"No builds in {settings.rootfs_path}: run `cloudcontainer image build`.")
        return
    console.print(table)


@image_app.command("prune")
def image_prune(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    docker_host: Annotated[
        str, typer.Option(envvar="DOCKER_HOST", help="Docker Engine address.")
    ] = "unix:///var/run/docker.sock",
) -> None:
    """Remove the builds (and their Docker images) no sandbox uses and that are not current."""
    from cloudcontainer.images import ImageBuildError

    settings = _settings(config, data_dir=data_dir)
    try:
        removed = asyncio.run(_prune(settings, docker_host))
    except ImageBuildError as exc:
        console.print(f"[red]Prune failed:[/red] {escape(exc.message)}")
        raise typer.Exit(1) from None
    if not removed:
        console.print("Nothing to remove.")


async def _prune(settings: Settings, docker_host: str) -> list[str]:
    """Remove the builds that are neither current nor used by a running local sandbox of this
    data directory, then the Docker images of builds other than the current one that no
    container uses; print and return what went."""
    from cloudcontainer.images import RootfsStore, prune_images
    from cloudcontainer.images.rootfs import remove_tree

    store = RootfsStore(settings.rootfs_path)
    with store.lock(wait=False):
        unused = store.unused(await _rootfs_in_use(settings))
        for path in unused:
            await remove_tree(path)
    images = await prune_images(docker_host, store)
    removed = [f"build {path.name}" for path in unused] + [f"Docker image {tag}" for tag in images]
    for name in removed:
        console.print(f"Removed {name}.")
    return removed


async def _rootfs_in_use(settings: Settings) -> set[str]:
    """Builds the local sandboxes of this data directory run on."""
    from cloudcontainer.state import build_runtime

    runtime = build_runtime(settings.model_copy(update={"runtime": "local"}))
    try:
        in_use = getattr(runtime, "rootfs_in_use", None)
        return await in_use() if in_use is not None else set()
    finally:
        await runtime.aclose()


async def _cancelled_by_sigterm(work: Coroutine[Any, Any, T]) -> T:
    """Treat SIGTERM (a service manager, a CI timeout) like Ctrl-C: cancel, so the build stops
    debootstrap and removes its scratch rootfs instead of leaving them behind."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await work
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


class _BuildTask:
    """One row of the build display; see cloudcontainer.images.progress.Task."""

    def __init__(self, owner: _BuildProgress, task_id: TaskID, description: str) -> None:
        self._owner = owner
        self._id = task_id
        self._description = description
        self._started = time.monotonic()

    def advance(self, amount: float) -> None:
        self._owner.bar.update(self._id, advance=amount)

    def set_total(self, total: float) -> None:
        self._owner.bar.update(self._id, total=total)

    def detail(self, text: str) -> None:
        self._owner.bar.update(self._id, detail=escape(text))  # command output, not markup

    def done(self, summary: str = "") -> None:
        task = self._owner.bar.tasks[self._id]
        end = task.completed if task.total is None or task.completed > 0 else task.total
        self._owner.bar.update(self._id, total=end or 1, completed=end or 1, detail=escape(summary))
        if not self._owner.bar.console.is_terminal:  # a log, not a live display: one line per step
            seconds = time.monotonic() - self._started
            note = f" — {summary}" if summary else ""
            self._owner.bar.console.print(f"✓ {self._description}{note} ({seconds:.1f} s)")


class _AmountColumn(ProgressColumn):
    """Bytes for downloads and tarballs, n/m for counted steps, nothing for the rest."""

    def __init__(self) -> None:
        super().__init__()
        self._bytes = DownloadColumn()
        self._items = MofNCompleteColumn()

    def render(self, task: RichTask) -> Text:
        unit = task.fields.get("unit")
        if unit == "bytes":
            return self._bytes.render(task)
        if unit == "items":
            return self._items.render(task)
        return Text("")


class _BuildProgress:
    """Draws `image build` progress with rich (cloudcontainer.images.progress.Progress)."""

    def __init__(self, out: Console) -> None:
        self.bar = Progress(
            SpinnerColumn(finished_text="[green]✓[/green]"), TextColumn("{task.description}"),
            BarColumn(bar_width=24), _AmountColumn(), TimeElapsedColumn(),
            TextColumn("[dim]{task.fields[detail]}[/dim]", markup=True), console=out,
            disable=not out.is_terminal,  # logs get one line per finished step instead
        )  # fmt: skip

    def __enter__(self) -> _BuildProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.bar.stop()

    def task(
        self, description: str, *, total: float | None = None, unit: str = "none"
    ) -> _BuildTask:
        task_id = self.bar.add_task(description, total=total, unit=unit, detail="")
        return _BuildTask(self, task_id, description)

    def note(self, message: str) -> None:
        self.bar.console.print(f"[yellow]{escape(message)}[/yellow]")

    def fail(self) -> None:
        """Freeze unfinished rows as stopped, so the display does not look still busy."""
        for task in self.bar.tasks:
            if not task.finished:
                self.bar.update(task.id, detail="[red]stopped[/red]")
                self.bar.stop_task(task.id)


def _print_build_error(exc: ImageBuildError) -> None:
    from cloudcontainer.images import CommandFailed

    console.print(f"[red]Image build failed:[/red] {escape(exc.message)}")
    if isinstance(exc, CommandFailed) and exc.output:
        console.print(Text(exc.output, style="dim"))


def _print_build_result(result: BuildResult, image: ImageResult | None) -> None:
    build = result.build
    if result.built:
        source = "cached Debian packages" if result.reused_base else "a fresh debootstrap"
        console.print(
            f"[green]Built root filesystem {build.id}[/green] in {result.seconds:.0f} s from "
            f"{source}; it is current: sandboxes start from it."
        )
    else:
        console.print(
            f"Root filesystem {build.id} is current and up to date; nothing to build. Give "
            "--force to build it again, --refresh to fetch updates."
        )
    if image is not None:
        verb = "Loaded into Docker" if image.loaded else "Docker has it"
        console.print(f"{verb} as [bold]{image.tag}[/bold] ({image.image_id[:19]}).")
    table = Table(show_header=False, box=None, padding=(0, 2))
    for name, version in build.manifest["tools"].items():
        table.add_row(name, str(version))
    console.print(table)


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


def main() -> None:
    app()
