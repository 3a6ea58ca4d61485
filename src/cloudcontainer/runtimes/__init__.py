"""Sandbox runtimes: create, start, stop, inspect and destroy sandboxes; nothing else.

Implementations are picked by name from a lazy registry, so an unused runtime's
dependencies (aiodocker, kubernetes) are never imported. `config.RuntimeName` is the one
list of names: the `runtime` setting, the CLI's `--runtime` and this registry are typed by it
(tests/test_config.py checks that every name is registered).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloudcontainer.config import RuntimeName
    from cloudcontainer.runtimes.base import Runtime, RuntimeOptions

__all__ = ["RUNTIMES", "load_runtime"]

RUNTIMES: dict[RuntimeName, str] = {
    "local": "cloudcontainer.runtimes.local:LocalRuntime",
    "docker": "cloudcontainer.runtimes.docker:DockerRuntime",
}


def load_runtime(name: RuntimeName, options: RuntimeOptions) -> Runtime:
    module_name, _, attribute = RUNTIMES[name].partition(":")
    runtime_class = getattr(importlib.import_module(module_name), attribute)
    runtime: Runtime = runtime_class(options)
    return runtime
