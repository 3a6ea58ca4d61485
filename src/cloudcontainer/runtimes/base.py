"""The runtime driver contract: lifecycle only. Files, terminals and previews go through the
agent, so adding a runtime never touches them.

What a runtime is given and must do:

- `SandboxSpec`: the sandbox's id, its agent's secret, its limits, and whose it is
  (`owner_id`, `project_id`). A runtime labels what it makes with these and with
  `RuntimeOptions.gateway_id`, so an operator (and a cluster's own tools) can tell whose a
  sandbox is and which gateway made it. A warm-pool sandbox is made before anyone claims it:
  it names no owner until its next start.
- Agent delivery: the gateway builds one agent zipapp (`RuntimeOptions.agent_zipapp`); each
  runtime declares in `agent_delivery` how that agent reaches `AGENT_PATH` inside its
  sandboxes (`AgentDelivery`). Whichever way, the gateway checks the agent's protocol
  version when it connects, so a sandbox running another agent is never used.
- `list()` returns only this gateway's sandboxes (those labelled with its `gateway_id`, or
  under its data directory): the reconciler destroys every listed sandbox no container row
  owns, so a runtime that listed another gateway's would have them swept.
- Every method is idempotent; `stop` keeps the workspace, `destroy` removes it.

    RuntimeError_ (CloudContainerError)
    ├── RuntimeUnavailable   the runtime cannot work on this host (missing tool, no daemon)
    └── SandboxStartFailed   one sandbox could not start (bad image, no python3, limits)
"""

from __future__ import annotations

import enum
import functools
import hashlib
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from cloudcontainer.agent.protocol import WORKSPACE as WORKSPACE  # every runtime mounts it
from cloudcontainer.agentlink.client import AgentAddress
from cloudcontainer.errors import CloudContainerError, Unavailable
from cloudcontainer.images import toolchains

if TYPE_CHECKING:
    from cloudcontainer.runtimes.egress import EgressPolicy

__all__ = [
    "AgentDelivery",
    "Runtime",
    "RuntimeOptions",
    "RuntimeUnavailable",
    "SandboxInfo",
    "SandboxSpec",
    "SandboxStartFailed",
    "SandboxState",
]

log = structlog.get_logger(__name__)

SANDBOX_UID = 1000
HOME = "/home"
AGENT_PATH = "/opt/cloudcontainer/agent.pyz"
CA_BUNDLE_PATH = "/etc/ssl/certs/ca-certificates.crt"


class RuntimeUnavailable(Unavailable):
    default_code = "runtime_unavailable"


class SandboxStartFailed(CloudContainerError):
    status_code = 500
    default_code = "sandbox_start_failed"


class AgentDelivery(enum.StrEnum):
    """How a runtime puts the gateway's agent zipapp at AGENT_PATH inside its sandboxes."""

    # A read-only bind of the host's file: the sandbox runs on the gateway's own host.
    BIND = "bind"
    # Copied by the gateway, through the runtime's API, to where sandboxes mount it read-only:
    # the sandbox's host need not share a filesystem with the gateway.
    COPY = "copy"
    # Already in the sandbox image (an image layer): nothing is delivered at start; the
    # protocol check on connect is what keeps image and gateway in step.
    IMAGE = "image"


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """What every runtime needs from the gateway's settings."""

    data_dir: Path
    # The agent the gateway built, for runtimes whose delivery is BIND or COPY.
    agent_zipapp: Path
    ca_bundle: Path | None
    image: str = "cloudcontainer/sandbox:latest"
    # `local`: the store of built root filesystems (images/store.py); its current build is
    # every new sandbox's /.
    rootfs_dir: Path | None = None
    network: str = "cloudcontainer"
    # Where sandboxes may connect (runtimes/egress.py).
    egress: EgressPolicy = field(default_factory=lambda: _default_egress())
    # RLIMIT_NOFILE of every sandbox process (soft and hard).
    open_files: int = 65_536
    # `local`: the host uids sandboxes run as, one each, and whether a host whose cgroups
    # cannot limit them may run sandboxes anyway (the operator's explicit, logged choice).
    local_uids: tuple[int, int] = (1_000_000_000, 1_000_099_999)
    local_allow_without_cgroups: bool = False
    # `docker`: refuse an engine that runs containers' uid 1000 as the host's uid 1000.
    docker_require_userns: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def gateway_id(self) -> str:
        """Which gateway installation made a sandbox: a hash of its data directory. Several
        gateways (staging and production, or test sessions) may share one Docker Engine or
        cluster; each lists, adopts and sweeps only its own sandboxes."""
        return hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    sandbox_id: str
    agent_secret: str
    cpu: float  # cores
    memory_mb: int
    pids: int
    env: dict[str, str] = field(default_factory=dict)
    # The size of the filesystem holding /home and /home/project (0: no limit, the host's).
    # Fixed when the sandbox is first created.
    disk_mb: int = 0
    # Whose it is, for labels only (the gateway's database is what decides access); None for
    # a warm-pool sandbox nobody has claimed yet.
    owner_id: str | None = None
    project_id: str | None = None
    # The Node.js major first on PATH (images/toolchains.py).
    node: str = toolchains.DEFAULT_NODE


class SandboxState(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    MISSING = "missing"


@dataclass(frozen=True, slots=True)
class SandboxInfo:
    sandbox_id: str
    state: SandboxState
    address: AgentAddress | None = None
    ip: str | None = None  # a direct address for previews, where the runtime has one
    detail: dict[str, Any] = field(default_factory=dict)


class Runtime(Protocol):
    name: str  # its key in the registry (runtimes/__init__.py)
    agent_delivery: AgentDelivery

    async def check(self) -> None:
        """Raise RuntimeUnavailable, saying what to install, when this host cannot run it."""

    async def create(self, spec: SandboxSpec) -> None:
        """Allocate the sandbox (workspace, volumes) and label it with the spec's owner where
        it can; idempotent; does not start it."""

    async def start(self, spec: SandboxSpec) -> SandboxInfo:
        """Start it (idempotent when running) and say where its agent listens."""

    async def stop(self, sandbox_id: str) -> None:
        """Stop every process; keep the workspace. Idempotent."""

    async def destroy(self, sandbox_id: str) -> None:
        """Remove the sandbox and its workspace. Idempotent."""

    async def inspect(self, sandbox_id: str) -> SandboxInfo: ...

    async def list(self) -> list[SandboxInfo]:
        """Every sandbox of this gateway (`gateway_id`), for re-adoption and sweeping after a
        restart; never another gateway's."""

    async def logs(self, sandbox_id: str, limit: int = 2000) -> str:
        """The last `limit` characters the sandbox's agent wrote, to explain a failure."""

    async def aclose(self) -> None: ...


def _default_egress() -> EgressPolicy:
    from cloudcontainer.runtimes.egress import EgressPolicy  # it imports this module

    return EgressPolicy()


def sandbox_env(spec: SandboxSpec, ca_bundle: bool) -> dict[str, str]:
    """The environment every sandbox process starts with, the same on every runtime."""
    env = {
        "HOME": HOME,
        "USER": "user",
        "LOGNAME": "user",
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "TERM": "xterm-256color",
        "COLORTERM": "truecolor",
        "PYTHONDONTWRITEBYTECODE": "1",
        **toolchains.toolchain_env(spec.node),
    }
    if ca_bundle:
        # Behind a TLS-inspecting proxy, npm and pip hang unless they trust the host's CAs.
        for name in (
            "NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT",
            "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "npm_config_cafile",
        ):  # fmt: skip
            env[name] = CA_BUNDLE_PATH
    env.update(spec.env)
    return env


@functools.cache
def open_files_limit(wanted: int) -> int:
    """`wanted`, or this host's hard limit where root may not raise it (a host that withholds
    CAP_SYS_RESOURCE, as some container hosts do): lowering is always allowed. Cached: the
    limit is the process's, and the warning is said once."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or wanted <= hard:
        return wanted
    log.warning(
        "sandbox open-file limit lowered to the gateway's own hard limit",
        wanted=wanted, hard_limit=hard,
    )  # fmt: skip
    return hard
