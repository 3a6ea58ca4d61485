"""Previews: a container's ports served to the browser through a reverse proxy (`proxy.py`)."""

from cloudcontainer.preview.proxy import PreviewListener
from cloudcontainer.preview.types import (
    Dialer,
    Forward,
    Gate,
    ProxyLimits,
    ProxyRequest,
    Reply,
    UpstreamUnavailable,
)

__all__ = [
    "Dialer",
    "Forward",
    "Gate",
    "PreviewListener",
    "ProxyLimits",
    "ProxyRequest",
    "Reply",
    "UpstreamUnavailable",
]
