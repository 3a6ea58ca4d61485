"""Persistent state: SQLAlchemy models, the engine, and Alembic migrations."""

from cloudcontainer.db.engine import Database
from cloudcontainer.db.models import (
    ApiKey,
    AuditEvent,
    AuthSession,
    Base,
    CommandRecord,
    Container,
    EmailToken,
    FileLock,
    FileVersion,
    PreviewPort,
    Project,
    RefreshToken,
    Service,
    Snapshot,
    User,
    WsTicket,
)

__all__ = [
    "ApiKey",
    "AuditEvent",
    "AuthSession",
    "Base",
    "CommandRecord",
    "Container",
    "Database",
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
