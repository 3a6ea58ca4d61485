"""The audit log: security-relevant actions the gateway saw, written off the request path.

`record()` puts an event on a bounded queue and returns; one writer task inserts what is
queued in batches (one transaction each). A database that refuses a batch is retried with
backoff, so a short outage loses nothing; `aclose()` writes everything still queued before the
database is closed (graceful shutdown). A queue that fills up (the database down for long)
makes `record()` wait: the request that is audited slows down rather than its record being
dropped.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import and_, delete, or_, select
from sqlalchemy.exc import SQLAlchemyError

from cloudcontainer.db import AuditEvent, Database
from cloudcontainer.db.types import new_id, utcnow
from cloudcontainer.errors import BadRequest, CloudContainerError

__all__ = ["AuditLog", "AuditPage", "AuditQuery"]

log = structlog.get_logger(__name__)

MAX_QUEUED = 10_000
BATCH_SIZE = 500
PRUNE_INTERVAL_SECONDS = 3600.0
RETRY_FIRST_SECONDS = 0.1
RETRY_MAX_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class AuditQuery:
    actor_id: str | None = None
    action: str | None = None
    since: datetime | None = None  # inclusive
    until: datetime | None = None  # exclusive
    limit: int = 100
    cursor: str | None = None  # `next_cursor` of the page before


@dataclass(frozen=True, slots=True)
class AuditPage:
    items: list[AuditEvent]
    next_cursor: str | None


def _cut(value: str | None, size: int) -> str | None:
    return None if value is None else value[:size]


class AuditLog:
    def __init__(
        self,
        database: Database,
        *,
        retention_days: int,
        max_queued: int = MAX_QUEUED,
        batch_size: int = BATCH_SIZE,
        prune_interval_seconds: float = PRUNE_INTERVAL_SECONDS,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = database
        self.retention_days = retention_days
        self._batch_size = batch_size
        self._prune_interval = prune_interval_seconds
        self._clock = clock
        self._queue: asyncio.Queue[AuditEvent] = asyncio.Queue(max_queued)
        self._writer: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_forever(), name="audit writer")
        if self.retention_days > 0:
            self._pruner = asyncio.create_task(self._prune_forever(), name="audit pruner")

    async def record(
        self,
        action: str,
        *,
        actor_id: str | None = None,
        actor_email: str | None = None,
        source_ip: str | None = None,
        target_type: str | None = None,
        target_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Queue one event, stamped now; it reaches the database within moments."""
        event = AuditEvent(
            id=new_id("aud"), at=self._clock(), action=action[:64],
            actor_id=_cut(actor_id, 32), actor_email=_cut(actor_email, 320),
            target_type=_cut(target_type, 32), target_id=_cut(target_id, 64),
            source_ip=_cut(source_ip, 64), detail=detail or {},
        )  # fmt: skip
        if self._closing:
            log.warning("audit event after shutdown began", action=action)
        await self._queue.put(event)

    async def flush(self) -> None:
        """Wait until every event queued so far is in the database."""
        await self._queue.join()

    async def flush_for(self, seconds: float) -> None:
        """`flush()`, waiting `seconds` at most (a reader should not hang on a database that
        is refusing writes)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), seconds)

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    # -- the writer -----------------------------------------------------------------------

    async def _write_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write(self, batch: list[AuditEvent]) -> None:
        delay = RETRY_FIRST_SECONDS
        while True:
            try:
                async with self._db.session() as session:
                    # Fresh objects each try: a failed flush leaves the old ones attached.
                    session.add_all([_copy(event) for event in batch])
                return
            except (SQLAlchemyError, CloudContainerError, OSError) as exc:
                log.error(
                    "audit events not written yet; retrying", events=len(batch),
                    retry_in=delay, error=str(exc),
                )  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    # -- retention ------------------------------------------------------------------------

    async def prune(self) -> int:
        """Delete events older than the retention; answers how many went."""
        if self.retention_days <= 0:
            return 0
        horizon = self._clock() - timedelta(days=self.retention_days)
        async with self._db.session() as session:
            result = await session.execute(delete(AuditEvent).where(AuditEvent.at < horizon))
        removed: int = getattr(result, "rowcount", 0) or 0
        if removed:
            log.info("audit events pruned", removed=removed, older_than=horizon.isoformat())
        return removed

    async def _prune_forever(self) -> None:
        while True:
            try:
                await self.prune()
            except (SQLAlchemyError, CloudContainerError, OSError) as exc:
                log.error("audit pruning failed; trying again later", error=str(exc))
            await asyncio.sleep(self._prune_interval)

    # -- reading --------------------------------------------------------------------------

    async def query(self, query: AuditQuery) -> AuditPage:
        """Newest first, `query.limit` at most; `next_cursor` continues after the last one."""
        statement = select(AuditEvent).order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
        if query.actor_id is not None:
            statement = statement.where(AuditEvent.actor_id == query.actor_id)
        if query.action is not None:
            statement = statement.where(AuditEvent.action == query.action)
        if query.since is not None:
            statement = statement.where(AuditEvent.at >= query.since)
        if query.until is not None:
            statement = statement.where(AuditEvent.at < query.until)
        if query.cursor is not None:
            at, event_id = _decode_cursor(query.cursor)
            statement = statement.where(
                or_(AuditEvent.at < at, and_(AuditEvent.at == at, AuditEvent.id < event_id))
            )
        async with self._db.session() as session:
            items = list(await session.scalars(statement.limit(query.limit + 1)))
        more = len(items) > query.limit
        items = items[: query.limit]
        return AuditPage(items, _encode_cursor(items[-1]) if more else None)

    # -- shutdown -------------------------------------------------------------------------

    async def aclose(self, grace_seconds: float = 10.0) -> None:
        """Write what is queued (up to `grace_seconds`), then stop."""
        self._closing = True
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
        if self._writer is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), grace_seconds)
        except TimeoutError:
            log.error("audit events lost at shutdown: the database took none", lost=self.queued)
        self._writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._writer


def _copy(event: AuditEvent) -> AuditEvent:
    return AuditEvent(
        id=event.id, at=event.at, action=event.action, actor_id=event.actor_id,
        actor_email=event.actor_email, target_type=event.target_type, target_id=event.target_id,
        source_ip=event.source_ip, detail=event.detail,
    )  # fmt: skip


def _encode_cursor(event: AuditEvent) -> str:
    raw = f"{event.at.isoformat()}|{event.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, event_id = raw.partition("|")
        when = datetime.fromisoformat(at)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest("The cursor is not valid.", code="invalid_cursor") from None
    if when.tzinfo is None or not event_id:
        raise BadRequest("The cursor is not valid.", code="invalid_cursor")
    return when, event_id
