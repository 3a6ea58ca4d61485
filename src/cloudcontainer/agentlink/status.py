"""What a sandbox's agent reports about itself, typed: health, listening ports, disk usage."""

from __future__ import annotations

from cloudcontainer.agent.messages import DiskUsage, ListeningPort, Ping
from cloudcontainer.agentlink.client import AgentClient

__all__ = ["disk_usage", "listening_ports", "ping"]


async def ping(link: AgentClient, *, timeout: float) -> Ping:
    answer: Ping = await link.call("ping", timeout=timeout)
    return answer


async def listening_ports(link: AgentClient, *, timeout: float) -> list[ListeningPort]:
    ports: list[ListeningPort] = await link.call("ports.list", timeout=timeout)
    return ports


async def disk_usage(link: AgentClient, *, timeout: float) -> DiskUsage:
    """The workspace filesystem's size in bytes (its quota's, when it has one)."""
    usage: DiskUsage = await link.call("fs.statfs", timeout=timeout)
    return usage
