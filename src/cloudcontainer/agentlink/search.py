"""Text search in an agent (agent/search.py), typed; each file's matches come before the
answer as `search.file` events (`messages.SearchFile`)."""

from __future__ import annotations

from cloudcontainer.agent.messages import SearchArgs, SearchIdArgs, SearchQuery, SearchTotals
from cloudcontainer.agentlink.client import AgentClient

__all__ = ["cancel_search", "search_text"]

# The agent stops a search at its own timeout; the call waits this much longer for the totals.
ANSWER_GRACE_SECONDS = 30.0


async def search_text(
    link: AgentClient, search_id: str, query: SearchQuery, *, timeout: float
) -> SearchTotals:
    """Run a search tagged `search_id` for at most `timeout` seconds; answers the totals."""
    args: SearchArgs = {"search_id": search_id, "timeout_seconds": timeout, **query}
    totals: SearchTotals = await link.call(
        "search.text", timeout=timeout + ANSWER_GRACE_SECONDS, **args
    )
    return totals


async def cancel_search(link: AgentClient, search_id: str, *, timeout: float) -> None:
    args: SearchIdArgs = {"search_id": search_id}
    await link.call("search.cancel", timeout=timeout, **args)
