"""Operations endpoints: liveness, readiness, Prometheus metrics."""

from __future__ import annotations

from typing import Literal

import structlog
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from cloudcontainer.api.deps import ServicesDep
from cloudcontainer.errors import Unavailable
from cloudcontainer.storage import StorageError

router = APIRouter(tags=["ops"])
log = structlog.get_logger(__name__)


class Health(BaseModel):
    status: Literal["ok", "ready"]


@router.get("/healthz")
async def healthz() -> Health:
    """The process is up and serving."""
    return Health(status="ok")


@router.get("/readyz", responses={503: {"description": "A dependency is unreachable."}})
async def readyz(services: ServicesDep) -> Health:
    """The database and the object store answer; the server can take traffic."""
    try:
        await services.database.ping()
    except (SQLAlchemyError, OSError) as exc:
        log.warning("database not reachable", error=str(exc))
        raise Unavailable("The database is not reachable.", code="database_unavailable") from exc
    try:
        await services.storage.check()
    except StorageError as exc:
        log.warning("object storage not reachable", error=exc.message)
        raise exc from None
    return Health(status="ready")


@router.get("/metrics", response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)
