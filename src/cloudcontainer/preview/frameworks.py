"""Which dev server a project runs, how to start it so a preview can reach it, and what in its
configuration would defeat the preview proxy.

Pure logic: the caller reads `package.json` (parsed) and lists the project root; nothing here
touches a file. The table of frameworks and commands is docs/previews.md, "Dev-server detection".

The project's own `dev` script (else `start`) is what runs, through its package manager, with
what makes it listen on every address and on a known port: flags where the framework takes them
(Vite, Astro, SvelteKit, Nuxt, Next.js), the environment where it reads it (Create React App's
`HOST`/`PORT`, `PORT` for Node.js servers). A script that already names a port keeps it.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "DEFAULT_PORTS",
    "DevServer",
    "Framework",
    "PackageManager",
    "config_files",
    "detect_dev_server",
    "package_manager",
    "proxy_warnings",
]

PackageManager = Literal["npm", "pnpm", "yarn", "bun"]
Framework = Literal[
    "vite", "nextjs", "create-react-app", "astro", "sveltekit", "nuxt",
    "express", "fastify", "node", "static",
]  # fmt: skip

ALL_ADDRESSES = "0.0.0.0"  # noqa: S104  (the dev server must answer the sandbox's network)

DEFAULT_PORTS: dict[Framework, int] = {
    "vite": 5173, "sveltekit": 5173, "astro": 4321, "nextjs": 3000, "create-react-app": 3000,
    "nuxt": 3000, "express": 3000, "fastify": 3000, "node": 3000, "static": 8000,
}  # fmt: skip

# The dependency that names each framework, most specific first: Nuxt, Astro and SvelteKit
# depend on Vite, and a Next.js or CRA app often also lists express.
_MARKERS: tuple[tuple[str, Framework], ...] = (
    ("next", "nextjs"),
    ("nuxt", "nuxt"),
    ("astro", "astro"),
    ("@sveltejs/kit", "sveltekit"),
    ("react-scripts", "create-react-app"),
    ("vite", "vite"),
    ("fastify", "fastify"),
    ("express", "express"),
)

# How each framework's CLI is told where to listen: (host flag, port flag), or None when it
# reads the environment instead.
_VITE_FLAGS = ("--host", "--port")
_FLAGS: dict[Framework, tuple[str, str]] = {
    "vite": _VITE_FLAGS, "astro": _VITE_FLAGS, "sveltekit": _VITE_FLAGS, "nuxt": _VITE_FLAGS,
    "nextjs": ("-H", "-p"),
}  # fmt: skip
# Vite's CLI; Astro has no such flag, and only recent Nuxt CLIs know it (nuxt/cli b6ee3b9).
_STRICT_PORT = ("vite", "sveltekit")
# How a script may already say where to listen, where the CLI has more than one spelling.
_HOST_SPELLINGS: dict[Framework, tuple[str, ...]] = {
    "nextjs": ("-H", "--hostname"), "nuxt": ("-h", "--host"),
}  # fmt: skip
_PORT_SPELLINGS: dict[Framework, tuple[str, ...]] = {
    "nextjs": ("-p", "--port"), "nuxt": ("-p", "--port"),
}  # fmt: skip

# The binary a framework's dev server is, for a project with neither `dev` nor `start` script;
# the frameworks not listed are Node.js servers, run from their entry file.
_BINARIES: dict[Framework, tuple[str, ...]] = {
    "vite": ("vite",), "sveltekit": ("vite", "dev"), "astro": ("astro", "dev"),
    "nextjs": ("next", "dev"), "create-react-app": ("react-scripts", "start"),
    "nuxt": ("nuxt", "dev"),
}  # fmt: skip

# Lockfiles, in the order they win when a project holds several.
_LOCKFILES: tuple[tuple[str, PackageManager], ...] = (
    ("pnpm-lock.yaml", "pnpm"),
    ("yarn.lock", "yarn"),
    ("bun.lock", "bun"),
    ("bun.lockb", "bun"),
    ("package-lock.json", "npm"),
    ("npm-shrinkwrap.json", "npm"),
)
_MANAGERS: dict[str, PackageManager] = {"npm": "npm", "pnpm": "pnpm", "yarn": "yarn", "bun": "bun"}
_EXEC: dict[PackageManager, tuple[str, ...]] = {
    "npm": ("npx", "--no"), "pnpm": ("pnpm", "exec"), "yarn": ("yarn",), "bun": ("bunx",),
}  # fmt: skip
_NODE_ENTRIES = ("server.js", "server.mjs", "index.js", "index.mjs", "app.js", "main.js")


@dataclass(frozen=True, slots=True)
class DevServer:
    """How to start a project's dev server: `command` (argv, run at the project root with `env`
    added to the sandbox's environment) serves HTTP on `port`, on every address where the
    framework can be told so. `package_manager` is None when none is involved."""

    framework: Framework
    command: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    package_manager: PackageManager | None = None


def detect_dev_server(
    package_json: Mapping[str, Any] | None, files: Collection[str], port: int | None = None
) -> DevServer | None:
    """The dev server of a project whose root holds `files` (names) and whose `package.json`
    parses to `package_json` (None: there is none), listening on `port` (None: the
    framework's default). None when nothing here says how to serve it."""
    if package_json is None:
        return _without_package(files, port)
    framework = _framework(package_json)
    manager = package_manager(package_json, files)
    if framework is None or framework not in _BINARIES:  # express, fastify or plain Node.js
        return _node_server(framework or "node", package_json, files, manager, port)
    chosen = port or DEFAULT_PORTS[framework]
    script = _script(package_json)
    if script is None:
        flags = _listen_flags(framework, "", chosen) if framework in _FLAGS else []
        command = [*_EXEC[manager], *_BINARIES[framework], *flags]
        return DevServer(framework, command, chosen, _env(framework, chosen), manager)
    return _run_script(framework, manager, script, package_json["scripts"][script], chosen)


def package_manager(package_json: Mapping[str, Any], files: Collection[str]) -> PackageManager:
    """The project's package manager: its `packageManager` field (corepack's), else its
    lockfile, else npm."""
    declared = package_json.get("packageManager")
    if isinstance(declared, str) and declared.partition("@")[0] in _MANAGERS:
        return _MANAGERS[declared.partition("@")[0]]
    return next((manager for lock, manager in _LOCKFILES if lock in files), "npm")


def _without_package(files: Collection[str], port: int | None) -> DevServer | None:
    if "server.js" in files:
        chosen = port or DEFAULT_PORTS["node"]
        return DevServer("node", ["node", "server.js"], chosen, {"PORT": str(chosen)})
    if "index.html" in files:
        chosen = port or DEFAULT_PORTS["static"]
        command = ["python3", "-m", "http.server", str(chosen), "--bind", ALL_ADDRESSES]
        return DevServer("static", command, chosen)
    return None


def _framework(package_json: Mapping[str, Any]) -> Framework | None:
    deps = _dependencies(package_json)
    return next((framework for name, framework in _MARKERS if name in deps), None)


def _dependencies(package_json: Mapping[str, Any]) -> set[str]:
    names: set[str] = set()
    for key in ("dependencies", "devDependencies"):
        section = package_json.get(key)
        if isinstance(section, Mapping):
            names.update(section)
    return names


def _script(package_json: Mapping[str, Any]) -> str | None:
    scripts = package_json.get("scripts")
    if not isinstance(scripts, Mapping):
        return None
    return next((name for name in ("dev", "start") if isinstance(scripts.get(name), str)), None)


def _node_server(
    framework: Framework,
    package_json: Mapping[str, Any],
    files: Collection[str],
    manager: PackageManager,
    port: int | None,
) -> DevServer | None:
    """A Node.js server (Express, Fastify, or no framework known): its script, else its entry
    file run by node; given PORT, which such servers read. A project with neither may still be
    a static site."""
    chosen = port or DEFAULT_PORTS[framework]
    env = _env(framework, chosen)
    script = _script(package_json)
    if script is not None:
        return DevServer(framework, _run(manager, script), chosen, env, manager)
    main = package_json.get("main")
    entries = ([main] if isinstance(main, str) else []) + list(_NODE_ENTRIES)
    entry = next((name for name in entries if name in files), None)
    if entry is not None:
        return DevServer(framework, ["node", entry], chosen, env, manager)
    return _without_package(files, port) if framework == "node" else None


def _run_script(
    framework: Framework, manager: PackageManager, script: str, body: str, port: int
) -> DevServer:
    """Run `script` (whose text is `body`), adding the listening flags it lacks."""
    if framework not in _FLAGS:  # Create React App reads its environment
        return DevServer(framework, _run(manager, script), port, _env(framework, port), manager)
    fixed = _fixed_port(framework, body)
    extra = _listen_flags(framework, body, port if fixed is None else None)
    command = _run(manager, script) + (_forward(manager) + extra if extra else [])
    return DevServer(framework, command, fixed or port, {}, manager)


def _env(framework: Framework, port: int) -> dict[str, str]:
    if framework == "create-react-app":
        return {"HOST": ALL_ADDRESSES, "PORT": str(port), "BROWSER": "none"}
    return {} if framework in _FLAGS else {"PORT": str(port)}


def _run(manager: PackageManager, script: str) -> list[str]:
    return [manager, "run", script]


def _forward(manager: PackageManager) -> list[str]:
    """npm needs `--` before arguments meant for the script; pnpm (≥ 7), yarn and bun pass on
    whatever follows the script's name, and pnpm would pass a `--` on too, which Vite's CLI
    then reads as the end of its options (pnpm v7.0.0 release notes; nrwl/nx#10305)."""
    return ["--"] if manager == "npm" else []


def _listen_flags(framework: Framework, script: str, port: int | None) -> list[str]:
    """The flags a script lacks to listen on every address and, unless None, on `port`."""
    host_flag, port_flag = _FLAGS[framework]
    flags: list[str] = []
    if not _has_flag(script, _HOST_SPELLINGS.get(framework, (host_flag,))):
        flags += [host_flag, ALL_ADDRESSES]
    if port is not None:
        flags += [port_flag, str(port)]
        if framework in _STRICT_PORT:  # Vite would move to the next free port instead
            flags.append("--strictPort")
    return flags


def _fixed_port(framework: Framework, script: str) -> int | None:
    """The port a script names already (`--port 3000`, `-p=3000`): the project's choice."""
    for spelling in _PORT_SPELLINGS.get(framework, ("--port",)):
        found = re.search(rf"(?:^|\s){re.escape(spelling)}(?:=|\s+)(\d+)\b", script)
        if found:
            return int(found.group(1))
    return None


def _has_flag(script: str, spellings: tuple[str, ...]) -> bool:
    return any(re.search(rf"(?:^|\s){re.escape(s)}(?:=|\s|$)", script) for s in spellings)


# -- settings that defeat any proxy (docs/previews.md; PREVIEWS.md A5) --------------------------

_VITE_CONFIGS = tuple(f"vite.config.{ext}" for ext in ("js", "ts", "mjs", "mts", "cjs", "cts"))
_CONFIG_FILES: dict[Framework, tuple[str, ...]] = {
    "vite": _VITE_CONFIGS,
    "sveltekit": _VITE_CONFIGS,
    "astro": ("astro.config.mjs", "astro.config.ts", "astro.config.js", "astro.config.mts"),
    "nuxt": ("nuxt.config.ts", "nuxt.config.js", "nuxt.config.mjs"),
    "nextjs": ("next.config.js", "next.config.mjs", "next.config.ts", "next.config.cjs"),
    "create-react-app": (".env", ".env.development", ".env.local", ".env.development.local"),
}
_VITE_FAMILY = ("vite", "sveltekit", "astro", "nuxt")
_SOCKET_BLOCK = re.compile(r"\b(hmr|ws)\s*:\s*\{([^{}]*)\}")
_SOCKET_KEYS = re.compile(r"\b(clientPort|port|host|protocol)\s*:")
_WDS_SOCKET = re.compile(r"^\s*(?:export\s+)?(WDS_SOCKET_(?:HOST|PORT))\s*=", re.MULTILINE)
_ABSOLUTE_PREFIX = re.compile(r"\bassetPrefix\s*:\s*[\"'`]((?:https?:)?//[^\"'`]*)")
_LINE_COMMENT = re.compile(r"(?m)(?:^|\s)//.*$")
_BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)


def config_files(framework: Framework) -> tuple[str, ...]:
    """The files, relative to the project root, whose text `proxy_warnings` reads."""
    return _CONFIG_FILES.get(framework, ())


def proxy_warnings(config_text: str, framework: Framework) -> list[str]:
    """One line per setting in `config_text` (one of `config_files(framework)`) that sends the
    browser around the preview proxy: HMR then fails or reloads the page in a loop."""
    if framework in _VITE_FAMILY:
        return _vite_warnings(_strip_comments(config_text))
    if framework == "create-react-app":
        return [
            f"{name} is set: the dev server's socket URL bypasses the preview proxy; remove it"
            for name in dict.fromkeys(_WDS_SOCKET.findall(config_text))
        ]
    if framework == "nextjs":
        return [
            f"assetPrefix is absolute ({prefix}): scripts and HMR load around the preview "
            "proxy; use a relative prefix or none in development"
            for prefix in _ABSOLUTE_PREFIX.findall(_strip_comments(config_text))
        ]
    return []


def _vite_warnings(text: str) -> list[str]:
    warnings: list[str] = []
    for block, body in _SOCKET_BLOCK.findall(text):
        for key in dict.fromkeys(_SOCKET_KEYS.findall(body)):
            warnings.append(
                f"server.{block}.{key} is set: the HMR socket connects around the preview "
                "proxy and the page reloads in a loop; remove it"
            )
    return warnings


def _strip_comments(text: str) -> str:
    return _LINE_COMMENT.sub("", _BLOCK_COMMENT.sub("", text))
