"""The live agent link of every running container, and the relay of its agent's events to
the container's event stream."""

from __future__ import annotations

from typing import Any

from cloudcontainer.agent import PROTOCOL_VERSION
from cloudcontainer.agentlink.client import AgentAddress, AgentClient
from cloudcontainer.agentlink.errors import AgentUnavailable
from cloudcontainer.events import EventBus

__all__ = ["PRIVATE_EVENTS", "AgentLinks", "connect_agent"]

# Agent events meant for one subscriber (a file watch, the command log, the previews, which
# publish `port` with its URL), not for every event-stream client.
PRIVATE_EVENTS = frozenset({"fs.watch", "proc.command", "port"})


async def connect_agent(address: AgentAddress, secret: str, timeout: float) -> AgentClient:
    """A link to a sandbox's agent that speaks this gateway's protocol, else AgentUnavailable:
    an agent delivered in an image, or a sandbox that outlived a gateway upgrade, may not."""
    link = AgentClient(address, secret)
    try:
        await link.connect(timeout=timeout)
        protocol = link.hello.get("protocol")
        if protocol != PROTOCOL_VERSION:
            raise AgentUnavailable(
                f"the sandbox's agent speaks protocol {protocol}, this gateway {PROTOCOL_VERSION}"
            )
    except BaseException:
        await link.aclose()
        raise
    return link


class AgentLinks:
    def __init__(self, events: EventBus) -> None:
        self.events = events
        self.by_container: dict[str, AgentClient] = {}
        self._owners: dict[str, str] = {}  # container id → owner id, beside `by_container`

    def keep(self, container_id: str, owner_id: str, link: AgentClient) -> None:
        """Keep the link and relay the agent's events to the container's event stream."""
        self.by_container[container_id] = link
        self._owners[container_id] = owner_id

        def relay(name: str, data: dict[str, Any]) -> None:
            if name == "link.closed":
                if self.by_container.get(container_id) is link:
                    self.events.publish(container_id, {"type": "agent", "state": "disconnected"})
                return
            if name in PRIVATE_EVENTS:
                return  # addressed to one subscriber, which listens on the link itself
            self.events.publish(container_id, {"type": name, **data})

        link.on_event(relay)

    def live(self, container_id: str) -> AgentClient | None:
        link = self.by_container.get(container_id)
        return None if link is None or link.closed.is_set() else link

    def owned(self, owner_id: str, container_id: str) -> AgentClient | None:
        """The live link of a container of `owner_id` (owners never change, so no database
        round trip is needed: the hot path of every file and process call)."""
        link = self.live(container_id)
        return link if self._owners.get(container_id) == owner_id else None

    def drop(self, container_id: str) -> AgentClient | None:
        self._owners.pop(container_id, None)
        return self.by_container.pop(container_id, None)
