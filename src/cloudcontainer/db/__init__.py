"""Persistent state: SQLAlchemy models, the engine, and Alembic migrations."""

from cloudcontainer.db.engine import Database
from cloudcontainer.db.models import (
    ApiKey,
    AuthSession,
    Base,
    Container,
    EmailToken,
    FileLock,
    Project,
    RefreshToken,
    User,
    WsTicket,
)

__all__ = [
    "ApiKey",
    "AuthSession",
    "Base",
    "Container",
    "Database",
    "EmailToken",
    "FileLock",
    "Project",
    "RefreshToken",
    "User",
    "WsTicket",
]
