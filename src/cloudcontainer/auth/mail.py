"""Outgoing mail: SMTP when configured, else an outbox folder a local user can read.

Mailer (Protocol)
├── SmtpMailer     aiosmtplib, plain / STARTTLS / TLS
└── OutboxMailer   one .eml file per message in DATA_DIR/outbox, and a log line with the link
"""

from __future__ import annotations

import os
import tempfile
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Protocol

import aiosmtplib
import structlog

from cloudcontainer.config import Settings

__all__ = ["Mailer", "OutboxMailer", "SmtpMailer", "compose", "mailer_from_settings"]

log = structlog.get_logger(__name__)


class Mailer(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


def compose(*, sender: str, to: str, subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain="cloudcontainer")
    message.set_content(body)
    return message


class SmtpMailer:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    async def send(self, message: EmailMessage) -> None:
        s = self._settings
        await aiosmtplib.send(
            message,
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username or None,
            password=s.smtp_password.get_secret_value() or None,
            use_tls=s.smtp_security == "tls",
            start_tls=s.smtp_security == "starttls",
            timeout=s.smtp_timeout_seconds,
        )
        log.info("mail sent", to=message["To"], subject=message["Subject"])


class OutboxMailer:
    """Writes each message atomically into `outbox`, so nothing half-written is ever read."""

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox

    async def send(self, message: EmailMessage) -> None:
        self.outbox.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.outbox, suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(bytes(message))
        final = self.outbox / (Path(tmp).stem + ".eml")
        os.replace(tmp, final)
        log.info(
            "mail written to outbox (no SMTP server configured)",
            to=message["To"],
            subject=message["Subject"],
            path=str(final),
            body=message.get_content(),
        )


def mailer_from_settings(settings: Settings) -> Mailer:
    if settings.smtp_host:
        return SmtpMailer(settings)
    return OutboxMailer(settings.data_dir / "outbox")
