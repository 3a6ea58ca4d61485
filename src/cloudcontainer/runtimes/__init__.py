"""Sandbox runtimes: create, start, stop, inspect and destroy sandboxes; nothing else.

Implementations are picked by name from a lazy registry, so an unused runtime's
dependencies (aiodocker, kubernetes) are never imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloudcontainer.runtimes.base import Runtime, RuntimeOptions

RUNTIMES = {
    "local": "cloudcontainer.runtimes.local:LocalRuntime",
    "docker": "cloudcontainer.runtimes.docker:DockerRuntime",
}


def load_runtime(name: str, options: RuntimeOptions) -> Runtime:
    try:
        target = RUNTIMES[name]
    except KeyError:
        raise ValueError(f"unknown runtime {name!r}; known: {', '.join(RUNTIMES)}") from None
    module_name, _, attribute = target.partition(":")
    runtime_class = getattr(importlib.import_module(module_name), attribute)
    runtime: Runtime = runtime_class(options)
    return runtime
