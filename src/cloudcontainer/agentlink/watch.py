"""File watches in an agent (agent/watch.py), typed; their batches come as `fs.watch` events
(`messages.WatchBatch`)."""

from __future__ import annotations

from cloudcontainer.agent.messages import SubscribeArgs, Subscribed, WatchIdArgs
from cloudcontainer.agentlink.client import AgentClient

__all__ = ["subscribe", "unsubscribe"]


async def subscribe(link: AgentClient, args: SubscribeArgs) -> Subscribed:
    """Start (or take over) a subscription; the answer's cursor covers what came before."""
    subscribed: Subscribed = await link.call("watch.subscribe", **args)
    return subscribed


async def unsubscribe(link: AgentClient, watch_id: str) -> None:
    """End a subscription (whether the agent still had it, its answer says: nobody asks)."""
    args: WatchIdArgs = {"id": watch_id}
    await link.call("watch.unsubscribe", **args)
