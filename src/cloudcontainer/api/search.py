"""`POST /api/containers/{id}/search`: WebContainer's `internal.textSearch`, as NDJSON."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import Field

from cloudcontainer.agent.messages import SearchQuery
from cloudcontainer.api.deps import CurrentPrincipal, ServicesDep
from cloudcontainer.api.schemas import RequestModel, WholeNumber
from cloudcontainer.files.search import TextSearch

router = APIRouter(prefix="/api/containers/{container_id}", tags=["search"])

Glob = Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^[^\x00]*$")]
Globs = Annotated[list[Glob], Field(max_length=256)]


class SearchRequest(RequestModel):
    query: Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[^\x00]*$")]
    regex: bool = Field(False, description="A Rust regex (ripgrep's syntax); else literal.")
    case_sensitive: bool = False
    whole_word: bool = False
    include: Globs = Field([], description="Only files matching one of these globs.")
    exclude: Globs = Field([], description="Skip files and folders matching these globs.")
    gitignore: bool = Field(True, description="Respect .gitignore and .ignore files.")
    path: Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[^\x00]*$")] = "/"
    max_results: Annotated[int, Field(ge=1, le=10_000), WholeNumber] = 500


@router.post(
    "/search",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}, "description": "NDJSON lines."}},
)
async def search(
    container_id: str, body: SearchRequest, principal: CurrentPrincipal, services: ServicesDep
) -> StreamingResponse:
    """Search file contents with ripgrep. Answers NDJSON as files are found: one
    `{"type": "file", "path", "matches"}` line per file (WebContainer's `onProgress(path,
    matches)`), then `{"type": "done", "files", "matches", "truncated", "timed_out"}`."""
    link = await services.containers.agent(principal.user_id, container_id)
    query = cast(SearchQuery, body.model_dump())  # SearchRequest has SearchQuery's fields
    text_search = TextSearch(link, services.tasks, query, services.settings.search_timeout_seconds)
    await text_search.start()
    return StreamingResponse(text_search.lines(), media_type="application/x-ndjson")
