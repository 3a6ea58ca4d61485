"""The `cloudcontainer` command: serve, database upgrades, account administration."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from pydantic import ValidationError
from rich.console import Console

from cloudcontainer import __version__
from cloudcontainer.config import RuntimeName, Settings, load_settings
from cloudcontainer.observability.logging import configure_logging

__all__ = ["main"]

app = typer.Typer(
    name="cloudcontainer",
    help="A self-hostable cloud runtime for AI app builders.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
user_app = typer.Typer(help="User accounts.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(user_app, name="user")

console = Console(stderr=True)

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

    console.print(
        f"[bold]cloudcontainer {__version__}[/bold] on http://{settings.host}:{settings.port}"
        f"  (runtime {settings.runtime}, data {settings.data_dir})"
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host=settings.host, port=settings.port, log_config=None,
            lifespan="on", server_header=False, timeout_graceful_shutdown=10,
            proxy_headers=bool(settings.trusted_proxies),
            forwarded_allow_ips=settings.trusted_proxies or None,
        )
    )  # fmt: skip
    server.run()
    if not server.started:
        raise typer.Exit(1)


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
        async with open_services(settings) as services:
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


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


def main() -> None:
    app()
