#!/usr/bin/env python3
"""bolt.diy on cloudcontainer: apply the switch of docs/bolt-diy.md to a bolt.diy source tree,
install it, and start it against a running cloudcontainer server.

    kit.py prepare SOURCE DEST      SOURCE: a bolt.diy checkout or its source .tar.gz
    kit.py run DEST --server URL --api-key cc_... [--llm URL] [--port 5173]

`prepare` copies SOURCE to DEST (never changing SOURCE), points `@webcontainer/api` at this
repository's clients/js (built first), patches the spots where bolt hard-codes WebContainer's
preview host, adds the route that mints page tokens and the page's server config, and
installs with pnpm (bolt's package manager, through corepack). Every patch names the text it
expects: when bolt's source has moved on, `prepare` stops and says which spot, instead of
leaving a half-switched tree.

`run` writes DEST/.env.local (the server URL, the API key, the LLM endpoint) and runs bolt's dev
server (`remix vite:dev`) in the foreground. The API key stays in bolt's server: the page
asks bolt for short-lived page tokens (`POST /api/auth/page-tokens` on cloudcontainer).

Standard library only: it runs with any Python 3.11, outside this repository's virtualenv.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parent.parent
CLIENT = REPOSITORY / "clients" / "js"
# Added to bolt: the route that mints page tokens with the key in bolt's server environment.
TOKEN_ROUTE = HERE / "files" / "api.cloudcontainer-token.ts"

# Desktop-app packages: `electron` downloads its binary from GitHub at install, and
# `electron-builder` pulls a node-gyp fork from a GitHub tarball. Neither is part of the web
# app, and servers that reach only package registries cannot fetch them.
DESKTOP_ONLY = ("electron", "electron-builder", "@electron/notarize", "@types/electron")

WC_PREVIEW_ID = r"/^https?:\/\/([^.]+)\.local-credentialless\.webcontainer-api\.io/"
PORT_AS_ID = r"/^https?:\/\/[^/]+:(\d+)/"


@dataclass(frozen=True)
class Patch:
    """Replace `old` (exactly `count` times) with `new` in `path`; `why` is for the reader."""

    path: str
    old: str
    new: str
    count: int
    why: str


PATCHES = (
    Patch(
        "app/lib/stores/previews.ts", WC_PREVIEW_ID, PORT_AS_ID, 1,
        "a preview's id (for refreshes across tabs) is its port: previews are http://HOST:PORT",
    ),
    Patch(
        "app/components/workbench/Preview.tsx", WC_PREVIEW_ID, PORT_AS_ID, 2,
        "'open in a new window' (both menus) finds the preview's id the same way",
    ),
    Patch(
        "app/routes/webcontainer.preview.$id.tsx",
        "    const url = `https://${previewId}.local-credentialless.webcontainer-api.io`;\n",
        "    const server = new URL(\n"
        "      (globalThis as any).__CLOUDCONTAINER__?.url || location.href);\n"
        "    const url = `${server.protocol}//${server.hostname}:${previewId}`;\n",
        1, "the preview window rebuilds the preview's URL: the server's host at that port",
    ),
    Patch(
        "app/utils/stacktrace.ts", r"[^\/]+\.webcontainer-api\.io", r"[^\/]+:\d+", 3,
        "stack traces from a preview lose the preview's origin, as they lose WebContainer's",
    ),
    Patch(
        "app/root.tsx",
        "export const Head = createHead(() => (\n",
        "// cloudcontainer: where @cloudcontainer/api finds the server, and how the page gets a\n"
        "// short-lived token: from bolt's own server (routes/api.cloudcontainer-token.ts).\n"
        "const cloudcontainerConfig = `globalThis.__CLOUDCONTAINER__ = {\n"
        "  url: ${JSON.stringify(import.meta.env.VITE_CLOUDCONTAINER_URL || '')},\n"
        "  waitForServer: true,\n"
        "  token: () => fetch('/api/cloudcontainer-token', { method: 'POST' })\n"
        "    .then((r) => r.json().catch(() => ({ error: r.status + ' ' + r.statusText }))\n"
        "      .then((j) => r.ok ? j.token : Promise.reject(new Error(j.error)))),\n"
        "};`;\n\n"
        "export const Head = createHead(() => (\n",
        1, "the page's server config, before any of bolt's scripts",
    ),
    Patch(
        "app/lib/webcontainer/index.ts",
        "import { WebContainer } from '@webcontainer/api';\n",
        "import { WebContainer, onConnectionChange } from '@webcontainer/api';\n"
        "import { toast } from 'react-toastify';\n",
        1, "the connection to the server, shown with bolt's own toasts (next patch)",
    ),
    Patch(
        "app/lib/webcontainer/index.ts",
        "if (!import.meta.env.SSR) {\n  webcontainer =\n",
        "if (!import.meta.env.SSR) {\n"
        "  // cloudcontainer: a server that is down or restarting is said, not silent; the client\n"
        "  // waits for it (boot) or reconnects (sockets) on its own.\n"
        "  onConnectionChange(({ state, message }) => {\n"
        "    const id = 'cloudcontainer-connection';\n"
        "    if (state === 'online') {\n"
        "      toast.dismiss(id);\n"
        "      toast.success('Connected to cloudcontainer again', { toastId: `${id}-online` });\n"
        "    } else if (toast.isActive(id)) {\n"
        "      toast.update(id, { render: `cloudcontainer: ${message}` });\n"
        "    } else {\n"
        "      toast.error(`cloudcontainer: ${message}`, { toastId: id, autoClose: false });\n"
        "    }\n"
        "  });\n"
        "  webcontainer =\n",
        1, "...registered before boot, which waits for the server (waitForServer in root.tsx)",
    ),
    Patch(
        "app/root.tsx",
        "    <script dangerouslySetInnerHTML={{ __html: inlineThemeCode }} />\n",
        "    <script dangerouslySetInnerHTML={{ __html: inlineThemeCode }} />\n"
        "    <script dangerouslySetInnerHTML={{ __html: cloudcontainerConfig }} />\n",
        1, "...rendered in <head>",
    ),
)  # fmt: skip


class KitError(Exception):
    """Something the person running the kit must fix; the message says what."""


def prepare(source: Path, dest: Path) -> None:
    if not source.exists():
        raise KitError(f"{source} does not exist: give a bolt.diy checkout or its .tar.gz")
    if dest.exists() and any(dest.iterdir()):
        raise KitError(f"{dest} is not empty: give a new folder (the kit never edits in place)")
    build_client()
    copy_source(source, dest)
    switch_package(dest)
    apply_patches(dest)
    shutil.copyfile(TOKEN_ROUTE, dest / "app" / "routes" / TOKEN_ROUTE.name)
    print("installing bolt.diy's packages (pnpm) …", flush=True)
    pnpm(dest, "install", "--no-frozen-lockfile", "--config.confirmModulesPurge=false")
    print(f"bolt.diy is ready in {dest}: run `kit.py run {dest} --server URL --api-key KEY`")


def build_client() -> None:
    """clients/js's dist, which bolt's `@webcontainer/api` dependency points at."""
    print("building @cloudcontainer/api (clients/js) …", flush=True)
    if not (CLIENT / "node_modules" / ".package-lock.json").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=CLIENT, check=True)
    subprocess.run(["npm", "run", "--silent", "build"], cwd=CLIENT, check=True)


def copy_source(source: Path, dest: Path) -> None:
    """A checkout is copied (without node_modules or .git); an archive is unpacked, its one
    top folder becoming DEST."""
    if source.is_dir():
        if not (source / "package.json").is_file():
            raise KitError(f"{source} has no package.json: not a bolt.diy checkout")
        shutil.copytree(
            source, dest, ignore=shutil.ignore_patterns("node_modules", ".git"), dirs_exist_ok=True
        )
        return
    if not tarfile.is_tarfile(source):
        raise KitError(f"{source} is neither a folder nor a tar archive")
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp, tarfile.open(source) as archive:
        archive.extractall(tmp, filter="data")
        tops = [path for path in Path(tmp).iterdir() if path.is_dir()]
        if len(tops) != 1 or not (tops[0] / "package.json").is_file():
            raise KitError(f"{source} does not hold one bolt.diy folder")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            dest.rmdir()
        shutil.move(str(tops[0]), dest)


def switch_package(dest: Path) -> None:
    """`@webcontainer/api` → this repository's client; the desktop-only packages out."""
    path = dest / "package.json"
    package = json.loads(path.read_text())
    dependencies = package.get("dependencies", {})
    if "@webcontainer/api" not in dependencies:
        raise KitError(f"{path} does not depend on @webcontainer/api: not a bolt.diy tree?")
    dependencies["@webcontainer/api"] = f"file:{CLIENT}"
    for name in DESKTOP_ONLY:
        package.get("devDependencies", {}).pop(name, None)
    path.write_text(json.dumps(package, indent=2) + "\n")


def apply_patches(dest: Path) -> None:
    for patch in PATCHES:
        path = dest / patch.path
        if not path.is_file():
            raise KitError(f"{patch.path} is missing: this bolt.diy differs from the kit's")
        text = path.read_text()
        found = text.count(patch.old)
        if found != patch.count:
            raise KitError(
                f"{patch.path}: expected {patch.count} of {patch.old!r}, found {found} — bolt.diy "
                f"changed here ({patch.why}); see docs/bolt-diy.md to do this spot by hand"
            )
        path.write_text(text.replace(patch.old, patch.new))


def run(dest: Path, server: str, api_key: str, llm: str | None, port: int, host: str) -> None:
    write_env(dest, server, api_key, llm)
    print(f"bolt.diy on http://{host}:{port}/ against {server}", flush=True)
    pnpm(dest, "exec", "remix", "vite:dev", "--host", host, "--port", str(port), "--strictPort")


def write_env(dest: Path, server: str, api_key: str, llm: str | None) -> None:
    """DEST/.env.local, read by bolt's vite config: secrets for bolt's server only, and the
    one public value (VITE_…) the page needs."""
    server = server.rstrip("/")
    lines = [
        "# Written by cloudcontainer's integrations/bolt-diy/kit.py",
        f"CLOUDCONTAINER_URL={server}",
        f"CLOUDCONTAINER_API_KEY={api_key}",
        f"VITE_CLOUDCONTAINER_URL={server}",
    ]
    if llm:
        lines += [f"OPENAI_LIKE_API_BASE_URL={llm.rstrip('/')}", "OPENAI_LIKE_API_KEY=scripted"]
    env = dest / ".env.local"
    env.write_text("\n".join(lines) + "\n")
    env.chmod(0o600)


def pnpm(dest: Path, *args: str) -> None:
    """bolt's pnpm: through corepack (the version bolt pins), else npm's npx."""
    env = {**os.environ, "COREPACK_ENABLE_DOWNLOAD_PROMPT": "0"}
    if shutil.which("corepack"):
        command = ["corepack", "pnpm"]
    elif shutil.which("npx"):
        command = ["npx", "--yes", "pnpm@9"]
    else:
        raise KitError("Node.js with npm is needed (https://nodejs.org, or Debian's nodejs npm)")
    subprocess.run([*command, *args], cwd=dest, env=env, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kit.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    made = commands.add_parser("prepare", help="copy, switch, patch and install bolt.diy")
    made.add_argument("source", type=Path, help="a bolt.diy checkout or source .tar.gz")
    made.add_argument("dest", type=Path, help="a new folder for the switched copy")
    ran = commands.add_parser("run", help="start a prepared bolt.diy against a server")
    ran.add_argument("dest", type=Path)
    ran.add_argument("--server", required=True, help="the cloudcontainer server's URL")
    ran.add_argument("--api-key", default=os.environ.get("CLOUDCONTAINER_API_KEY"),
                     help="an API key (cc_…); default: $CLOUDCONTAINER_API_KEY")  # fmt: skip
    ran.add_argument("--llm", help="an OpenAI-compatible endpoint for bolt's OpenAILike provider")
    ran.add_argument("--port", type=int, default=5173)
    ran.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    try:
        if args.command == "prepare":
            prepare(args.source.resolve(), args.dest.resolve())
        else:
            if not args.api_key:
                raise KitError("give --api-key or set CLOUDCONTAINER_API_KEY")
            run(args.dest.resolve(), args.server, args.api_key, args.llm, args.port, args.host)
    except KitError as exc:
        print(f"kit.py: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130  # Ctrl-C: bolt's dev server stops with it
    except subprocess.CalledProcessError as exc:
        print(f"kit.py: {' '.join(map(str, exc.cmd))} failed ({exc.returncode})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
