"""Where sandboxes may connect: the internet yes; this host and private networks no.

A sandbox's code is the tenant's. Left alone it could reach the host's own services (the
gateway, its database, dockerd over TCP), other machines on the LAN, other sandboxes, and the
cloud metadata address (169.254.169.254), which hands out the machine's cloud credentials.
So every connection a sandbox opens is checked against this policy in the host's firewall
(iptables, either backend):

- refused: the host's own addresses (`addrtype LOCAL`), loopback, RFC 1918, RFC 6598 (carrier
  NAT, where some clouds keep their metadata service), link-local (the metadata address among
  them), multicast and reserved ranges; for IPv6 loopback, ULA, link-local, multicast and
  IPv4-mapped addresses;
- allowed before any refusal: the host's DNS servers on port 53 (a sandbox resolves names
  through them), and the operator's allow-list (`egress_allow`: `CIDR` or `CIDR:PORT`);
- everything else (the internet) is allowed.

Each runtime sends its sandboxes' traffic through one chain of its own: `local` sandboxes'
packets leave the host from slirp4netns, which runs with the sandbox's host uid as its group,
so the chain is entered from OUTPUT for that group range; `docker` sandboxes' packets come in
on the runtime's bridge, so the chain is entered from DOCKER-USER (forwarded traffic) and a
second chain from INPUT refuses new connections to the host itself. The chains are rebuilt
atomically (`iptables-restore --noflush`) whenever a gateway starts, and left in place when it
stops: the sandboxes outlive it.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from cloudcontainer.config import AllowRule, parse_allow
from cloudcontainer.runtimes.base import RuntimeUnavailable

__all__ = [
    "BLOCKED_V4",
    "BLOCKED_V6",
    "METADATA_ADDRESS",
    "EgressPolicy",
    "Firewall",
]

log = structlog.get_logger(__name__)

METADATA_ADDRESS = "169.254.169.254"
BLOCKED_V4 = (
    "0.0.0.0/8",  # "this network"
    "10.0.0.0/8",  # RFC 1918
    "100.64.0.0/10",  # RFC 6598, carrier-grade NAT (Alibaba's metadata: 100.100.100.200)
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local; the cloud metadata address
    "172.16.0.0/12",  # RFC 1918 (Docker's bridges too)
    "192.168.0.0/16",  # RFC 1918
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, and the limited broadcast address
)
BLOCKED_V6 = (
    "::/128",  # unspecified
    "::1/128",  # loopback
    "::ffff:0:0/96",  # IPv4-mapped: the IPv4 rules must not be walked around
    "fc00::/7",  # unique local (ULA); AWS's IPv6 metadata fd00:ec2::254 among them
    "fe80::/10",  # link-local
    "ff00::/8",  # multicast
)
REJECT_CHAIN_SUFFIX = "-NO"
RESOLV_CONF = Path("/etc/resolv.conf")
# Where forwarded traffic is caught: DOCKER-USER where dockerd made it (per iptables family),
# else FORWARD.
FORWARDED = "forwarded"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def nameservers(resolv_conf: Path = RESOLV_CONF) -> list[Address]:
    """The host's DNS servers, which sandboxes reach through slirp4netns's or Docker's DNS."""
    found: list[Address] = []
    try:
        lines = resolv_conf.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                found.append(ipaddress.ip_address(fields[1].split("%")[0]))
            except ValueError:
                continue
    return found


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """The operator's settings: `block_private` off opens everything (with a loud warning)."""

    allow: tuple[AllowRule, ...] = ()
    block_private: bool = True
    dns: tuple[Address, ...] = field(default_factory=lambda: tuple(nameservers()))

    @classmethod
    def from_settings(cls, allow: Iterable[str], block_private: bool) -> EgressPolicy:
        return cls(tuple(parse_allow(entry) for entry in allow), block_private)

    def rules(self, chain: str, version: int) -> list[str]:
        """The chain's rules (iptables-restore syntax), in order: allowed, then refused."""
        rules = []
        for rule in self.allow:
            if rule.network.version == version:
                rules += [f"-A {chain} {match} -j RETURN" for match in rule.matches()]
        for server in self.dns:
            if server.version == version:
                rules += [
                    f"-A {chain} -d {server} -p {p} --dport 53 -j RETURN" for p in ("udp", "tcp")
                ]
        if not self.block_private:
            return rules
        reject = chain + REJECT_CHAIN_SUFFIX
        rules.append(f"-A {chain} -m addrtype --dst-type LOCAL -j {reject}")
        if version == 4:
            rules.append(f"-A {chain} -d {METADATA_ADDRESS}/32 -j {reject}")
        for network in BLOCKED_V4 if version == 4 else BLOCKED_V6:
            rules.append(f"-A {chain} -d {network} -j {reject}")
        return rules

    def script(self, chain: str, version: int, *, input_chain: str | None = None) -> str:
        """An iptables-restore script that (re)builds the chain, its refusal chain and, for
        bridged runtimes, the chain that refuses new connections to the host itself."""
        reject = chain + REJECT_CHAIN_SUFFIX
        unreachable = "icmp-port-unreachable" if version == 4 else "icmp6-port-unreachable"
        lines = ["*filter", f":{chain} - [0:0]", f":{reject} - [0:0]"]
        if input_chain is not None:
            lines.append(f":{input_chain} - [0:0]")
        lines += self.rules(chain, version)
        lines += [
            f"-A {reject} -p tcp -j REJECT --reject-with tcp-reset",
            f"-A {reject} -j REJECT --reject-with {unreachable}",
        ]
        if input_chain is not None:
            lines.append(f"-A {input_chain} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN")
            for rule in self.allow:
                if rule.network.version == version:
                    lines += [f"-A {input_chain} {match} -j RETURN" for match in rule.matches()]
            if self.block_private:
                lines.append(f"-A {input_chain} -j {reject}")
        lines.append("COMMIT")
        return "\n".join(lines) + "\n"


def chain_name(kind: str, scope: str) -> str:
    """A chain name for one runtime's sandboxes: short (iptables allows 28 characters, and
    the refusal chain adds 3) and stable across restarts."""
    return f"CC-{kind}-{hashlib.sha256(scope.encode()).hexdigest()[:10]}"


class Firewall:
    """Installs an EgressPolicy with iptables and ip6tables (each run with `-w`)."""

    def __init__(self, policy: EgressPolicy) -> None:
        self.policy = policy

    async def install_local(self, *gid_ranges: tuple[int, int]) -> str:
        """For `local` sandboxes: their slirp4netns runs with a group in one of the ranges."""
        first, last = gid_ranges[0]
        chain = chain_name("L", f"{first}-{last}")
        jumps = [("OUTPUT", f"-m owner --gid-owner {low}-{high}") for low, high in gid_ranges]
        await self._install(chain, jumps=jumps)
        return chain

    async def install_bridge(self, bridge: str) -> str:
        """For `docker` sandboxes on `bridge`: forwarded traffic, and traffic to the host."""
        chain = chain_name("D", bridge)
        input_chain = chain_name("I", bridge)
        await self._install(
            chain, input_chain=input_chain,
            jumps=[(FORWARDED, f"-i {bridge}"), ("INPUT", f"-i {bridge}")],
        )  # fmt: skip
        return chain

    async def _install(
        self, chain: str, *, jumps: list[tuple[str, str]], input_chain: str | None = None
    ) -> None:
        if not self.policy.block_private:
            log.warning(
                "SANDBOX EGRESS IS OPEN: egress_block_private is off, so sandboxes can reach "
                "this host, its LAN, other sandboxes and the cloud metadata address"
            )
        for version in (4, 6):
            tool = "iptables" if version == 4 else "ip6tables"
            if shutil.which(tool) is None or shutil.which(f"{tool}-restore") is None:
                if version == 4:
                    raise RuntimeUnavailable(
                        "sandbox egress rules need iptables: install the Debian package "
                        "iptables, or set egress_block_private = false (not recommended)"
                    )
                log.warning("ip6tables is missing: no IPv6 egress rules for sandboxes")
                continue
            script = self.policy.script(chain, version, input_chain=input_chain)
            try:
                await _run(f"{tool}-restore", "-w", "--noflush", stdin=script.encode())
                for parent, match in jumps:
                    target = input_chain if parent == "INPUT" and input_chain else chain
                    if parent == FORWARDED:  # Docker's chain for user rules, where it has one
                        has_docker_user = await self._has_chain(tool, "DOCKER-USER")
                        parent = "DOCKER-USER" if has_docker_user else "FORWARD"
                    await self._ensure_jump(tool, parent, match, target)
            except RuntimeUnavailable:
                if version == 4:
                    raise
                log.warning("IPv6 egress rules could not be installed", chain=chain)

    async def _ensure_jump(self, tool: str, parent: str, match: str, target: str) -> None:
        """The parent chain's first rule sends the sandboxes' packets into `target`."""
        rule = [*match.split(), "-j", target]
        try:
            await _run(tool, "-w", "-C", parent, *rule)
        except RuntimeUnavailable:
            await _run(tool, "-w", "-I", parent, "1", *rule)

    async def _has_chain(self, tool: str, name: str) -> bool:
        try:
            await _run(tool, "-w", "-S", name)
        except RuntimeUnavailable:
            return False
        return True


async def _run(*argv: str, stdin: bytes | None = None) -> str:
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        )  # fmt: skip
    except OSError as exc:
        raise RuntimeUnavailable(f"{argv[0]} could not run: {exc}") from exc
    out, err = await process.communicate(stdin)
    if process.returncode != 0:
        raise RuntimeUnavailable(f"{' '.join(argv)} failed: {err.decode(errors='replace').strip()}")
    return out.decode(errors="replace")
