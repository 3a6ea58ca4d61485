"""The one settings object.

Every setting comes, highest priority first, from: command-line flags (passed to
`load_settings` as overrides), environment variables `CLOUDCONTAINER_*`, a TOML config
file (`--config` or `CLOUDCONTAINER_CONFIG`), then the defaults below. Settings are read
once at start and injected; nothing below the CLI reads the environment.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["AllowRule", "Settings", "load_settings", "parse_allow"]

# The sandbox runtimes, by the names the registry (runtimes/__init__.py) knows them by.
RuntimeName = Literal["local", "docker"]


@dataclass(frozen=True, slots=True)
class AllowRule:
    """One `egress_allow` entry: a network, and optionally the one port allowed there."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    port: int | None = None

    def matches(self) -> list[str]:
        """iptables match arguments: the destination, and the port for TCP and UDP both."""
        if self.port is None:
            return [f"-d {self.network}"]
        return [f"-d {self.network} -p {proto} --dport {self.port}" for proto in ("tcp", "udp")]


def parse_allow(entry: str) -> AllowRule:
    """`CIDR`, `ADDRESS`, `CIDR:PORT`, or `[IPV6-CIDR]:PORT`; ValueError with the reason."""
    text, port = entry.strip(), None
    if text.startswith("["):
        address, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{entry!r}: expected [ADDRESS]:PORT")
            port = _port(rest[1:], entry)
        text = address
    elif text.count(":") == 1:  # IPv4 with a port (an IPv6 address has several colons)
        text, _, raw_port = text.partition(":")
        port = _port(raw_port, entry)
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ValueError(f"{entry!r}: not an address or network ({exc})") from None
    return AllowRule(network, port)


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{entry!r}: the port must be 1-65535")
    return int(text)


class Settings(BaseSettings):
    """Server settings; see docs/configuration.md for each field."""

    model_config = SettingsConfigDict(
        env_prefix="CLOUDCONTAINER_", extra="forbid", validate_default=True
    )

    # Network
    host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(8080, ge=0, le=65535, description="Port the gateway listens on.")
    public_host: str = Field(
        "127.0.0.1", description="Host name or IP that clients use to reach this server."
    )
    public_url: str = Field(
        "",
        description="Base URL put in e-mailed links; default http://PUBLIC_HOST:PORT.",
    )
    preview_ports: str = Field(
        "40000-40999", description="Port range for preview listeners, as FIRST-LAST."
    )
    preview_host: str = Field(
        "", description="Address the preview listeners bind; empty: the same as HOST."
    )
    preview_rate_limit: float = Field(
        200.0, ge=0, description="Preview requests per second per client address; 0: no limit."
    )
    preview_rate_burst: int = Field(
        2000, ge=1, description="Preview requests a client may make at once (a first page load)."
    )
    preview_coep: Literal["credentialless", "require-corp", "none"] = Field(
        "credentialless",
        description="Cross-Origin-Embedder-Policy on preview documents (boot({coep})).",
    )
    preview_tls_cert: Path | None = Field(
        None, description="Certificate (PEM chain) for TLS on the preview listeners."
    )
    preview_tls_key: Path | None = Field(
        None, description="Private key (PEM) for TLS on the preview listeners."
    )
    root_path: str = Field("", description="ASGI root_path when served under a prefix.")
    trusted_proxies: str = Field(
        "",
        description="Comma-separated proxy IPs whose X-Forwarded-For is believed; empty: none.",
    )

    # State
    data_dir: Path = Field(Path(".cloudcontainer"), description="Where local state lives.")
    database_url: str = Field(
        "", description="SQLAlchemy async URL; default SQLite in DATA_DIR/cloudcontainer.db."
    )
    redis_url: str = Field(
        "", description="Redis URL: state several gateways share (login throttles); optional."
    )
    runtime: RuntimeName = Field("local", description="Sandbox runtime.")

    # Auth
    secret_key: SecretStr = Field(
        SecretStr(""),
        description="Signs access tokens; default: generated once into DATA_DIR/secret_key.",
    )
    access_token_ttl_seconds: int = Field(900, ge=30, le=86_400)
    page_token_ttl_seconds: int = Field(
        600, ge=30, le=86_400,
        description="Lifetime of a page token (POST /api/auth/page-tokens), in seconds.",
    )  # fmt: skip
    refresh_token_ttl_seconds: int = Field(30 * 86_400, ge=300)
    email_token_ttl_seconds: int = Field(86_400, ge=60)
    ws_ticket_ttl_seconds: int = Field(60, ge=5, le=3_600)
    ws_revalidate_seconds: float = Field(
        30.0, gt=0, le=3_600,
        description="How often open WebSockets are checked against the database: one whose "
        "session, API key or account ended through another gateway (or expired) is closed "
        "within this time; through this one, at once.",
    )  # fmt: skip
    auth_cache_seconds: float = Field(
        2.0, ge=0, le=60,
        description="How long a checked session or API key is trusted without asking the "
        "database again (0: every request asks). Revocations through another gateway take "
        "effect within this time; through this one, at once.",
    )  # fmt: skip
    require_email_verification: bool = True
    allow_registration: bool = True
    argon2_time_cost: int = Field(3, ge=1, le=20)
    argon2_memory_cost_kib: int = Field(65_536, ge=1_024)
    login_max_failures_per_account: int = Field(
        5, ge=1, description="Failed logins per account in the window before 429."
    )
    login_max_attempts_per_ip: int = Field(
        30, ge=1, description="Login attempts per client IP in the window before 429."
    )
    login_window_seconds: int = Field(300, ge=1)
    audit_retention_days: int = Field(
        365, ge=0,
        description="Days audit events are kept; older ones are pruned hourly. 0: kept forever.",
    )  # fmt: skip

    # Mail
    smtp_host: str = Field("", description="SMTP server; empty writes mail to DATA_DIR/outbox.")
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_security: Literal["none", "starttls", "tls"] = "starttls"
    smtp_timeout_seconds: float = Field(10.0, gt=0)
    mail_from: str = "cloudcontainer <noreply@localhost>"

    # HTTP
    max_body_bytes: int = Field(
        1_048_576, ge=1_024, description="Largest request body accepted (413 above)."
    )
    max_file_bytes: int = Field(
        50 * 1_048_576,
        ge=1_024,
        description="Largest file upload through the file API (413 above).",
    )
    watch_max_pending_bytes: int = Field(
        8 * 1024 * 1024, ge=65_536,
        description="File-watch bytes that may wait for a slow event-stream client; past "
        "this its watch pauses and resumes from the agent's journal once it caught up.",
    )  # fmt: skip
    cors_origins: list[str] = Field(default_factory=list)
    command_deny_patterns: list[str] = Field(
        default_factory=list,
        description="Regular expressions; a command line that matches one is refused (403) "
        "by exec and the AI runner.",
    )
    client_send_timeout_seconds: float = Field(
        30.0, gt=0, le=3600,
        description="How long one message may wait for a WebSocket client to take it; a client "
        "that reads nothing for this long is dropped.",
    )  # fmt: skip
    history_reports_per_minute: int = Field(
        600, ge=1,
        description="Command lines a project's sandboxes may report into its history per "
        "minute (as many at once); more are dropped.",
    )  # fmt: skip
    history_max_per_project: int = Field(
        10_000, ge=100,
        description="Sandbox-reported command lines kept per project; older ones are pruned.",
    )  # fmt: skip
    terminal_input_bytes_per_second: int = Field(
        1_048_576, ge=1024, description="Typing (and pasting) into one terminal, at most."
    )
    terminal_scrollback_bytes: int = Field(
        262_144,
        ge=1024,
        le=67_108_864,
        description="Output a terminal keeps for clients that attach later (in the agent).",
    )
    search_timeout_seconds: float = Field(
        30.0, gt=0, le=3600, description="A text search stops (truncated) after this long."
    )
    archive_max_uncompressed_bytes: int = Field(
        1 << 30, ge=1_024, description="An uploaded archive unpacking to more is refused (413)."
    )
    archive_max_entries: int = Field(
        100_000, ge=1, description="An uploaded archive with more entries is refused (413)."
    )

    # Files
    fifo_wait_seconds: float = Field(
        2.0,
        gt=0,
        le=60,
        description="How long a file call waits for its client's missing predecessor.",
    )
    lock_default_ttl_seconds: int = Field(
        600, ge=1, le=604_800, description="Lifetime of a file lock acquired without ttl_seconds."
    )

    # Sandboxes
    sandbox_image: str = Field(
        "cloudcontainer/sandbox:latest",
        description="Image for the docker runtime: `cloudcontainer image build --docker` makes "
        "it from the current root filesystem.",
    )
    rootfs_dir: Path | None = Field(
        None,
        description="Where `cloudcontainer image build` keeps sandbox root filesystems (every "
        "`local` sandbox's / is the current one); default DATA_DIR/rootfs. Several gateways "
        "on one host may share it.",
    )
    sandbox_ca_bundle: Path | None = Field(
        Path("/etc/ssl/certs/ca-certificates.crt"),
        description="Host CA bundle mounted read-only into sandboxes; empty to mount none.",
    )
    local_sandbox_uids: str = Field(
        "1000000000-1000099999",
        description="Host uids for local sandboxes, FIRST-LAST: each sandbox runs as one of "
        "its own (uid 1000 inside). Keep it clear of every other user and subuid range.",
    )
    local_allow_without_cgroups: bool = Field(
        False,
        description="Start local sandboxes even where cgroups cannot limit their cpu, memory "
        "and pids (logged loudly); off: the runtime refuses to run.",
    )
    sandbox_open_files: int = Field(
        65_536, ge=1_024, le=1_048_576,
        description="Open files per sandbox process (RLIMIT_NOFILE, soft and hard).",
    )  # fmt: skip
    egress_block_private: bool = Field(
        True,
        description="Refuse sandbox connections to this host, private and link-local networks "
        "and the cloud metadata address (runtimes/egress.py); off: sandboxes reach them all.",
    )
    egress_allow: list[str] = Field(
        default_factory=list,
        description="Destinations sandboxes may reach despite egress_block_private: CIDR or "
        "CIDR:PORT ([IPV6]:PORT), e.g. a package mirror on the LAN.",
    )
    docker_require_userns: bool = Field(
        True,
        description="Refuse a Docker Engine without user-namespace remapping (or rootless), "
        "where a sandbox's uid 1000 is the host's uid 1000.",
    )
    container_start_concurrency: int = Field(
        4, ge=1, le=256, description="Sandboxes started at once; more wait in a queue."
    )
    max_containers_per_user: int = Field(10, ge=0)
    max_cpu_per_user: float = Field(8.0, ge=0, description="Cores, summed over containers.")
    max_memory_mb_per_user: int = Field(16_384, ge=0)
    default_cpu: float = Field(1.0, gt=0, le=64)
    default_memory_mb: int = Field(2048, ge=64)
    default_pids: int = Field(1024, ge=16)
    default_disk_mb: int = Field(
        4096,
        ge=0,
        le=1_048_576,
        description="Disk quota of a container's workspace and home, MiB (0: no limit).",
    )
    max_disk_mb_per_user: int = Field(
        40_960, ge=0, description="Disk quota MiB, summed over a user's containers."
    )
    idle_timeout_seconds: float = Field(
        1800, gt=0, description="Stop a container after this long without activity."
    )
    ephemeral_grace_seconds: float = Field(
        60,
        gt=0,
        description="Delete an ephemeral container (`@cloudcontainer/api`'s boot) once no client "
        "has been connected to it this long.",
    )
    health_interval_seconds: float = Field(5.0, gt=0)
    warm_pool_size: int = Field(
        2, ge=0, le=64, description="Sandboxes kept started ahead of demand (0: none)."
    )

    # Object storage, file history, snapshots
    storage_url: str = Field(
        "",
        description="Object store: empty for DATA_DIR/objects, file:///path, or s3://bucket/prefix.",
    )
    storage_endpoint: str = Field(
        "", description="S3 endpoint URL (MinIO, moto, Ceph...); empty: AWS for the region."
    )
    storage_region: str = Field("", description="S3 region; empty: the SDK default.")
    storage_access_key_id: str = Field("", description="S3 access key; empty: the environment's.")
    storage_secret_access_key: SecretStr = Field(SecretStr(""), description="S3 secret key.")
    storage_allow_http: bool = Field(
        False, description="Allow a plain-HTTP S3 endpoint (a local MinIO or moto)."
    )
    history_max_versions: int = Field(
        20, ge=0, description="Earlier versions kept per file (0: no file history)."
    )
    history_max_file_bytes: int = Field(
        1_048_576, ge=0, description="Files larger than this are not versioned."
    )
    history_inline_bytes: int = Field(
        16_384,
        ge=0,
        description="Versions up to this size are kept in the database row, larger ones in "
        "object storage (0: all in object storage). A save then costs no object write.",
    )
    snapshot_interval_seconds: float = Field(
        300,
        ge=0,
        description="Snapshot changed workspaces this often (0: only manual and on stop).",
    )
    snapshot_on_stop: bool = Field(True, description="Snapshot a workspace when it stops.")
    snapshot_keep: int = Field(
        10, ge=1, description="Snapshots kept per project; older are pruned."
    )
    snapshot_exclude: list[str] = Field(
        default_factory=lambda: ["node_modules", ".npm", ".cache", ".next/cache"],
        description="Globs left out of snapshots: a name matches at any depth, a/b from the root.",
    )

    # Observability
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"

    @field_validator("sandbox_ca_bundle", "preview_tls_cert", "preview_tls_key", mode="before")
    @classmethod
    def _empty_means_none(cls, value: object) -> object:
        return None if value in ("", None) else value

    @field_validator("preview_ports")
    @classmethod
    def _check_port_range(cls, value: str) -> str:
        first, sep, last = value.partition("-")
        if not sep or not first.isdigit() or not last.isdigit():
            raise ValueError("must look like 40000-40999")
        if not 1 <= int(first) <= int(last) <= 65535:
            raise ValueError("must be an ascending range inside 1-65535")
        return value

    @field_validator("local_sandbox_uids")
    @classmethod
    def _check_uid_range(cls, value: str) -> str:
        first, sep, last = value.partition("-")
        if not sep or not first.isdigit() or not last.isdigit():
            raise ValueError("must look like 1000000000-1000099999")
        if not 1_000 <= int(first) <= int(last) < 2**32 - 1:
            raise ValueError("must be an ascending range of unprivileged uids (1000 and up)")
        return value

    @field_validator("egress_allow")
    @classmethod
    def _check_egress_allow(cls, value: list[str]) -> list[str]:
        for entry in value:
            parse_allow(entry)
        return value

    @field_validator("command_deny_patterns")
    @classmethod
    def _check_patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from exc
        return value

    @property
    def rootfs_path(self) -> Path:
        """`rootfs_dir`, filled in by validation."""
        assert self.rootfs_dir is not None
        return self.rootfs_dir

    @model_validator(mode="after")
    def _fill_derived(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().absolute()
        self.rootfs_dir = (self.rootfs_dir or self.data_dir / "rootfs").expanduser().absolute()
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.data_dir / 'cloudcontainer.db'}"
        if not self.public_url:
            self.public_url = f"http://{self.public_host}:{self.port}"
        self.public_url = self.public_url.rstrip("/")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    @property
    def local_uid_range(self) -> tuple[int, int]:
        first, _, last = self.local_sandbox_uids.partition("-")
        return int(first), int(last)

    @property
    def preview_port_range(self) -> range:
        first, _, last = self.preview_ports.partition("-")
        return range(int(first), int(last) + 1)

    def signing_key(self) -> str:
        """The token signing key: configured, or generated once and kept in the data dir."""
        configured = self.secret_key.get_secret_value()
        if configured:
            return configured
        path = self.data_dir / "secret_key"
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            return path.read_text().strip()
        with os.fdopen(fd, "w") as handle:
            handle.write(key)
        return key


def load_settings(config_file: Path | None = None, **overrides: object) -> Settings:
    """Build settings from flags (`overrides`), environment, and an optional TOML file.

    Overrides that are None are ignored, so CLI flags that were not given fall through.
    """
    given: dict[str, Any] = {key: value for key, value in overrides.items() if value is not None}
    if config_file is None:
        env_path = os.environ.get("CLOUDCONTAINER_CONFIG")
        config_file = Path(env_path) if env_path else None
    if config_file is None:
        return Settings(**given)
    if not config_file.is_file():
        raise FileNotFoundError(f"config file not found: {config_file}")

    class FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=config_file)

    return FileSettings(**given)
