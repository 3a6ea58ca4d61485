"""The live agent link of every running container, and the relay of its agent's events to
the container's event stream."""

from __future__ import annotations

from typing import Any

from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.events import EventBus

__all__ = ["PRIVATE_EVENTS", "AgentLinks"]

# Agent events meant for one subscriber (a file watch, the command log), not for every
# event-stream client.
PRIVATE_EVENTS = frozenset({"fs.watch", "proc.command"})


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
