"""NPM: `npm install` of the vite-react template inside a `local` sandbox (through the exec
API) against the same install on the host with the host's npm, both from a clean node_modules
and a clean npm cache every time: what running in a sandbox costs the install users wait for
most. The template is read from the `main` branch, as it is when the bench runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.server import REPO, running_server
from bench.stats import Summary

TEMPLATE = "src/cloudcontainer/sandbox/templates/vite-react"
NPM_FLAGS = ["--no-audit", "--no-fund", "--no-update-notifier"]
SANDBOX_CACHE = "$HOME/.npm-bench"
LOCKFILE = "package-lock.json"


def _git(*argv: str) -> str:
    done = subprocess.run(["git", *argv], capture_output=True, text=True, cwd=REPO, check=True)
    return done.stdout


def template_files(ref: str = "main") -> dict[str, bytes]:
    """The template's files at `ref`, by path inside the template."""
    names = _git("ls-tree", "-r", "--name-only", ref, "--", f"{TEMPLATE}/").split()
    files = {}
    for name in names:
        done = subprocess.run(
            ["git", "show", f"{ref}:{name}"], capture_output=True, cwd=REPO, check=True
        )
        files[name.removeprefix(f"{TEMPLATE}/")] = done.stdout
    if "package.json" not in files:
        raise RuntimeError(f"{ref} has no {TEMPLATE}/package.json")
    return files


def install_ratio(samples: int) -> dict[str, Any]:
    """`samples` installs in the sandbox and as many on the host, alternating which goes
    first, so a registry or network slowing down in between weighs on both."""
    files = template_files()
    sandbox_times: list[float] = []
    host_times: list[float] = []
    with running_server(runtime="local") as server, tempfile.TemporaryDirectory() as tmp:
        container = _container(server.client)
        for path, content in files.items():
            response = server.client.put(
                f"/api/containers/{container['id']}/files/{path}", content=content
            )
            if response.status_code != 200:
                raise RuntimeError(f"PUT {path}: {response.status_code} {response.text}")
        host_dir = Path(tmp) / "project"
        for path, content in files.items():
            (host_dir / path).parent.mkdir(parents=True, exist_ok=True)
            (host_dir / path).write_bytes(content)
        clean = "rm -rf node_modules " + SANDBOX_CACHE
        if LOCKFILE not in files:
            clean += f" {LOCKFILE}"
        for i in range(samples):
            order = ("sandbox", "host") if i % 2 == 0 else ("host", "sandbox")
            for where in order:
                if where == "sandbox":
                    _exec(server.client, container["id"], ["sh", "-c", clean])
                    sandbox_times.append(_sandbox_install(server.client, container["id"]))
                else:
                    host_times.append(_host_install(host_dir, Path(tmp) / "cache", files))
        entries = _exec(server.client, container["id"], ["sh", "-c", "find node_modules | wc -l"])
        versions = _exec(server.client, container["id"], ["sh", "-c", "node -v; npm -v"])
    host_versions = [_version(["node", "-v"]), _version(["npm", "-v"])]
    sandbox = Summary.of(sandbox_times)
    host = Summary.of(host_times)
    return {
        "sandbox": {"samples_s": sandbox_times, "summary": sandbox.__dict__,
                    "node": versions.split()[0], "npm": versions.split()[1],
                    "resources": container.get("resources")},
        "host": {"samples_s": host_times, "summary": host.__dict__,
                 "node": host_versions[0], "npm": host_versions[1]},
        "ratio_p50": sandbox.p50 / host.p50,
        "node_modules_entries": int(entries.strip()),
        "template": {"ref": "main", "commit": _git("rev-parse", "main").strip(),
                     "files": sorted(files), "package_json": json.loads(files["package.json"])},
        "npm_flags": NPM_FLAGS,
    }  # fmt: skip


def _container(client: httpx.Client) -> dict[str, Any]:
    project = client.post("/api/projects", json={"name": f"npm-{time.time()}"}).json()
    container: dict[str, Any] = client.post(
        "/api/containers?wait=true", json={"project_id": project["id"], "template": "vite-react"}
    ).json()
    if container.get("status") != "running":
        raise RuntimeError(f"container did not start: {container}")
    return container


def _exec(client: httpx.Client, container: str, argv: list[str], timeout: float = 60) -> str:
    """Run a command in the sandbox; its stdout. Fails unless it exits 0."""
    response = client.post(
        f"/api/containers/{container}/exec",
        json={"command": argv[0], "args": argv[1:], "timeout": timeout},
        timeout=timeout + 60,
    )
    frames = [json.loads(line) for line in response.text.splitlines() if line]
    if not frames or frames[-1] != {"type": "exit", "code": 0}:
        raise RuntimeError(f"`{' '.join(argv)}` in the sandbox: {frames[-5:]}")
    return "".join(f.get("data", "") for f in frames if f["type"] == "stdout")


def _sandbox_install(client: httpx.Client, container: str) -> float:
    started = time.perf_counter()
    install = f"npm install {' '.join(NPM_FLAGS)} --cache {SANDBOX_CACHE}"
    _exec(client, container, ["sh", "-c", install], timeout=900)
    return time.perf_counter() - started


def _host_install(directory: Path, cache: Path, files: dict[str, bytes]) -> float:
    shutil.rmtree(directory / "node_modules", ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    if LOCKFILE not in files:
        (directory / LOCKFILE).unlink(missing_ok=True)
    env = {**os.environ, "npm_config_update_notifier": "false"}
    started = time.perf_counter()
    subprocess.run(
        ["npm", "install", *NPM_FLAGS, "--cache", str(cache)],
        cwd=directory, env=env, check=True, capture_output=True, timeout=900,
    )  # fmt: skip
    return time.perf_counter() - started


def _version(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    return subprocess.run(argv, capture_output=True, text=True).stdout.strip()


__all__ = ["install_ratio", "template_files"]
