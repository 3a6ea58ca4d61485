"""The toolchains a sandbox root filesystem carries, and how a sandbox chooses one.

Every Node.js major in `NODE_MAJORS` is installed side by side under `/opt/node/<major>` (the
official binary and headers from the npm registry's `node-linux-*` package, the npm that Node
release ships with, corepack with its pnpm and yarn shims, and an `etc/npmrc` pointing node-gyp
at those headers). `/usr/local/bin` links to the default major, so a plain `docker run IMAGE node`
gets it; a sandbox gets the major it was created with first on its PATH. This module is the one
place that knows that layout: the builder lays it out, the runtimes' environment follows it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BASE_PATH",
    "DEFAULT_NODE",
    "NODE_MAJORS",
    "NodeRelease",
    "UnknownToolchain",
    "node_prefix",
    "toolchain_env",
]


@dataclass(frozen=True)
class NodeRelease:
    """A Node.js major and the npm major its official release bundles."""

    major: str
    npm_major: int


# Newest first; the first is the default (the current LTS line).
NODE_MAJORS: dict[str, NodeRelease] = {
    "24": NodeRelease("24", npm_major=11),
    "22": NodeRelease("22", npm_major=10),
}
DEFAULT_NODE = next(iter(NODE_MAJORS))
COREPACK_MAJOR = 0  # corepack's releases are 0.x
COREPACK_SHIMS = ("pnpm", "pnpx", "yarn", "yarnpkg")
HOME_BIN = "/home/.local/bin"  # where `pip install --user` and `npm i -g` (prefix) put commands
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class UnknownToolchain(ValueError):
    """A Node.js major the image does not carry; the message names the choices."""


def node_prefix(major: str) -> str:
    """Where a major lives inside the rootfs (bin/, include/node/, lib/node_modules/, etc/)."""
    return f"/opt/node/{major}"


def check_node(major: str) -> str:
    """`major` if the image carries it, else UnknownToolchain naming the choices."""
    if major not in NODE_MAJORS:
        raise UnknownToolchain(
            f"Node.js {major!r} is not available; choose one of {', '.join(NODE_MAJORS)}"
        )
    return major


def toolchain_env(node: str) -> dict[str, str]:
    """The environment that selects Node.js `node` for every process of a sandbox.

    node-gyp (npm's builder of native modules, also run on its own) takes its options from
    `npm_package_config_node_gyp_*`: with `nodedir` set there, a native module builds against
    the headers in the image instead of downloading them from nodejs.org, which firewalled
    servers cannot reach. Not `npm_config_nodedir` nor `nodedir` in an npmrc: npm 11 no longer
    knows that setting and warns about it in the output of every command, which bolt.diy shows.
    """
    prefix = node_prefix(check_node(node))
    return {
        "PATH": f"{prefix}/bin:{HOME_BIN}:{BASE_PATH}",
        "npm_package_config_node_gyp_nodedir": prefix,
        # corepack fetches pnpm or yarn on first use; never stop a script to ask first.
        "COREPACK_ENABLE_DOWNLOAD_PROMPT": "0",
        # ...and trusts them as npm trusts every package it installs: the registry over TLS.
        # corepack would also demand the registry's signatures, which mirrors and proxies
        # commonly strip (this one's do), and then refuse every pnpm and yarn.
        "COREPACK_INTEGRITY_KEYS": "0",
    }
