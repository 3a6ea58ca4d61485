"""The actions the audit log records: what the gateway itself saw a person do.

Only the gateway writes these; nothing a sandbox reports (shell history, agent events) is ever
one of them.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ACCOUNT_DELETED",
    "ACTIONS",
    "API_KEY_CREATED",
    "API_KEY_REVOKED",
    "CONTAINER_CREATED",
    "CONTAINER_DELETED",
    "LOGIN",
    "LOGIN_FAILED",
    "LOGOUT",
    "PASSWORD_RESET",
    "PORT_MADE_PUBLIC",
]

LOGIN: Final = "login"
LOGIN_FAILED: Final = "login_failed"  # actor_email is the address tried; never the password
LOGOUT: Final = "logout"
PASSWORD_RESET: Final = "password_reset"  # noqa: S105 (an action name, not a secret)
API_KEY_CREATED: Final = "api_key_created"
API_KEY_REVOKED: Final = "api_key_revoked"
CONTAINER_CREATED: Final = "container_created"
CONTAINER_DELETED: Final = "container_deleted"
# `PATCH /api/containers/{id}/previews/{port}` with `public: true`.
PORT_MADE_PUBLIC: Final = "port_made_public"
# By the account itself (actor_id set) or an operator's CLI (detail.by = "cli").
ACCOUNT_DELETED: Final = "account_deleted"

ACTIONS: Final = (
    LOGIN, LOGIN_FAILED, LOGOUT, PASSWORD_RESET, API_KEY_CREATED, API_KEY_REVOKED,
    CONTAINER_CREATED, CONTAINER_DELETED, PORT_MADE_PUBLIC, ACCOUNT_DELETED,
)  # fmt: skip
