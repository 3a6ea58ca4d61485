"""The tables. Every table and constraint is created by the migrations in db/migrations."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from cloudcontainer.db.types import UTCDateTime, utcnow

__all__ = [
    "ApiKey",
    "AuditEvent",
    "AuthSession",
    "Base",
    "Container",
    "EmailToken",
    "FileLock",
    "FileVersion",
    "PreviewPort",
    "Project",
    "RefreshToken",
    "Service",
    "Snapshot",
    "User",
    "WsTicket",
]

# Stable constraint names so Alembic migrations are identical on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    email_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuthSession(Base):
    """One login: the family of refresh tokens that descend from it.

    Access tokens name their session (`sid`), so revoking it (logout, refresh-token reuse,
    password reset) also ends the access tokens issued under it.
    """

    __tablename__ = "auth_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    revoked_reason: Mapped[str | None] = mapped_column(String(64), default=None)
    user_agent: Mapped[str] = mapped_column(String(256), default="")
    ip: Mapped[str] = mapped_column(String(64), default="")


class RefreshToken(Base):
    """A single-use refresh token, stored as its SHA-256."""

    __tablename__ = "refresh_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("auth_sessions.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class EmailToken(Base):
    """A single-use token mailed for e-mail verification or password reset."""

    __tablename__ = "email_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    purpose: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class ApiKey(Base):
    """A long-lived credential for scripts; the secret is shown once and stored as its SHA-256."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class WsTicket(Base):
    """A short-lived, single-use credential for opening one WebSocket (`?ticket=`): `scope`
    names the socket it opens (a container's events, or one terminal), and the session or API
    key it was issued under is kept, so ending that credential closes the socket too."""

    __tablename__ = "ws_tickets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    ticket_hash: Mapped[str] = mapped_column(String(64), unique=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    scope: Mapped[str] = mapped_column(String(160), default="")
    session_id: Mapped[str | None] = mapped_column(String(32), default=None)
    api_key_id: Mapped[str | None] = mapped_column(String(32), default=None)


class Project(Base):
    __tablename__ = "projects"
    __table_args__ = (
        UniqueConstraint("owner_id", "name", name="uq_projects_owner_id_name"),
        Index("ix_projects_owner_id_created_at", "owner_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Container(Base):
    """A sandbox serving one project. `status` is what it is; `desired` is what it should be,
    so a restarted gateway knows what to bring back."""

    __tablename__ = "containers"
    __table_args__ = (Index("ix_containers_owner_id_created_at", "owner_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    runtime: Mapped[str] = mapped_column(String(16))
    template: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), index=True)
    status_reason: Mapped[str] = mapped_column(Text, default="")
    desired: Mapped[str] = mapped_column(String(16), default="running")
    cpu: Mapped[float] = mapped_column(Float)
    memory_mb: Mapped[int] = mapped_column(Integer)
    pids_limit: Mapped[int] = mapped_column(Integer)
    disk_mb: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # 0: no quota
    # The Node.js major first on its PATH (images/toolchains.py), fixed at creation.
    node: Mapped[str] = mapped_column(String(8), server_default="24")
    # One client session's (`@cloudcontainer/api`'s boot): starts empty, no snapshot restored
    # or taken, deleted once no client has been connected for `ephemeral_grace_seconds`.
    ephemeral: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    agent_secret: Mapped[str] = mapped_column(String(128))
    restart_count: Mapped[int] = mapped_column(Integer, default=0)
    dev_servers: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    last_active_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PreviewPort(Base):
    """A port of a container given a preview listener: its external port is stable for the
    container's life and across gateway restarts, and freed with the container. `secret` is
    never shown: the URL's token and the cookie are derived from it with the signing key."""

    __tablename__ = "preview_ports"

    container_id: Mapped[str] = mapped_column(
        ForeignKey("containers.id", ondelete="CASCADE"), primary_key=True
    )
    port: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_port: Mapped[int] = mapped_column(Integer, unique=True)
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    secret: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Service(Base):
    """A named process the gateway keeps running in a container (a dev server, an API):
    started when the container runs, restarted with backoff when it exits."""

    __tablename__ = "services"

    container_id: Mapped[str] = mapped_column(
        ForeignKey("containers.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    # {command, args, cwd, env, port, restart}: what `POST .../services` was given (or detected)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    desired: Mapped[str] = mapped_column(String(16), default="running")  # running | stopped
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class FileLock(Base):
    """An advisory lock on a workspace path (a folder covers everything below it). Writes are
    not refused; they report the locks covering what they changed. Gone with its container."""

    __tablename__ = "file_locks"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    container_id: Mapped[str] = mapped_column(
        ForeignKey("containers.id", ondelete="CASCADE"), index=True
    )
    path: Mapped[str] = mapped_column(Text)
    owner: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class FileVersion(Base):
    """An earlier content of a workspace file, kept when the file API replaced, deleted or
    moved it. Small ones keep their bytes here; others are a blob in object storage under the
    container's prefix."""

    __tablename__ = "file_versions"
    __table_args__ = (
        Index("ix_file_versions_container_id_created_at", "container_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    container_id: Mapped[str] = mapped_column(ForeignKey("containers.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(32), default=None)
    reason: Mapped[str] = mapped_column(String(16))
    # The bytes of a small version (up to history_inline_bytes), else None: a blob in object
    # storage. Deferred: listing versions never loads them.
    data: Mapped[bytes | None] = mapped_column(LargeBinary, default=None, deferred=True)


class Snapshot(Base):
    """A project's workspace at one moment: a manifest in object storage (under the project's
    prefix, beside the blobs it names) and these counts."""

    __tablename__ = "snapshots"
    __table_args__ = (Index("ix_snapshots_project_id_created_at", "project_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    # Not a foreign key: the snapshot outlives the container it was taken from.
    container_id: Mapped[str | None] = mapped_column(String(32), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    reason: Mapped[str] = mapped_column(String(16))
    file_count: Mapped[int] = mapped_column(Integer)
    total_bytes: Mapped[int] = mapped_column(BigInteger)
    uploaded_count: Mapped[int] = mapped_column(Integer)
    uploaded_bytes: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(64))


class CommandRecord(Base):
    """A command run in one of the project's containers: one the gateway ran for someone
    (`exec`), or a line a jsh terminal ran as the sandbox reports it (`shell`: the tenant's
    word, not an audit record). The project's command history; it outlives its container, and
    goes with its project."""

    __tablename__ = "commands"
    __table_args__ = (Index("ix_commands_project_id_started_at", "project_id", "started_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    container_id: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str | None] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(16))
    command: Mapped[str] = mapped_column(Text)
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class AuditEvent(Base):
    """Something security-relevant the gateway itself saw happen (a login, a failed login, a
    key made, a container created or deleted): who, when, from where. Written only by the
    gateway, never from anything a sandbox reports; it outlives the accounts it names, so
    the actor is kept by id and e-mail, without a foreign key."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_action_at", "action", "at"),
        Index("ix_audit_events_actor_id_at", "actor_id", "at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    action: Mapped[str] = mapped_column(String(64))
    actor_id: Mapped[str | None] = mapped_column(String(32), default=None)
    actor_email: Mapped[str | None] = mapped_column(String(320), default=None)
    target_type: Mapped[str | None] = mapped_column(String(32), default=None)
    target_id: Mapped[str | None] = mapped_column(String(64), default=None)
    source_ip: Mapped[str | None] = mapped_column(String(64), default=None)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
