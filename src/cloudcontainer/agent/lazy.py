"""Features loaded on first use: search and archives.

Most sandboxes never search or download an archive, and the code of those modules would cost
every agent ~150 KiB of memory (measured on the zipapp). Their ops are registered here as
stubs with the right concurrency (the session decides that before calling); the first call
imports the module, builds its service and forwards from then on. The op tables are checked
against the modules' own registrations by tests/agent/test_lazy.py.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, Optional, Sequence

from cloudcontainer.agent.fs import Files
from cloudcontainer.agent.protocol import ARCHIVE_ACK, ARCHIVE_DATA
from cloudcontainer.agent.server import Agent, Handler, Registry, Session

# module -> (service class, {op: concurrent}, {binary frame kind it handles: ordered})
FEATURES: Dict[str, Any] = {
    "cloudcontainer.agent.search": (
        "Searches", {"search.text": True, "search.cancel": False}, {},
    ),
    "cloudcontainer.agent.archive": (
        "Archives",
        {"archive.create": False, "archive.extract": False, "archive.finish": True,
         "archive.cancel": False},
        {ARCHIVE_DATA: True, ARCHIVE_ACK: False},
    ),
}  # fmt: skip


class Feature:
    def __init__(self, agent: Agent, files: Files, module: str) -> None:
        self.agent = agent
        self.files = files
        self.module = module
        self.loaded: Optional[Registry] = None
        _, ops, kinds = FEATURES[module]
        for op, concurrent in ops.items():
            agent.registry.add(op, self._forward(op), concurrent=concurrent)
        for kind, ordered in kinds.items():
            if ordered:
                agent.registry.ordered_binary[kind] = self._forward_ordered(kind)
            else:
                agent.registry.binary[kind] = self._forward_binary(kind)

    def load(self) -> Registry:
        if self.loaded is None:
            __import__(self.module)
            module = sys.modules[self.module]
            service = getattr(module, FEATURES[self.module][0])(self.files)
            registry = Registry()
            module.register(registry, service)
            self.agent.on_session_closed.append(service.close_session)
            self.loaded = registry
        return self.loaded

    def _forward(self, op: str) -> Handler:
        async def forward(session: Session, args: Dict[str, Any]) -> Any:
            handler, _ = self.load().handlers[op]
            return await handler(session, args)

        return forward

    # Frames for a stream exist only once it was opened: before that, they are dropped.
    def _forward_binary(self, kind: int) -> Callable[[Session, int, bytes], None]:
        def forward(session: Session, channel: int, payload: bytes) -> None:
            if self.loaded is not None:
                self.loaded.binary[kind](session, channel, payload)

        return forward

    def _forward_ordered(self, kind: int) -> Callable[[Session, int, bytes], Any]:
        async def forward(session: Session, channel: int, payload: bytes) -> None:
            if self.loaded is not None:
                await self.loaded.ordered_binary[kind](session, channel, payload)

        return forward


def register(agent: Agent, files: Files, modules: Sequence[str] = tuple(FEATURES)) -> None:
    for module in modules:
        Feature(agent, files, module)
