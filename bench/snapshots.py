"""S1: snapshots of a Vite-sized workspace (local runtime, local object store): the first
snapshot, a delta after one file changed, one of an unchanged workspace, and a new container
of the project restored from the snapshot."""

from __future__ import annotations

import time
from typing import Any

import httpx

from bench.server import running_server

# A Vite + React app's own files: ~300 sources of 2-16 KiB (about 2.5 MiB), plus a
# node_modules of 3,000 small files that snapshots leave out.
MAKE_WORKSPACE = r"""
set -e
for d in $(seq 1 30); do
  mkdir -p src/feature$d
  for f in $(seq 1 10); do
    head -c $(( 2048 + (d * f * 97) % 14336 )) /dev/urandom | base64 > src/feature$d/c$f.tsx
  done
done
for p in $(seq 1 100); do
  mkdir -p node_modules/pkg$p
  for f in $(seq 1 30); do printf 'module.exports = %d;\n' $f > node_modules/pkg$p/f$f.js; done
done
"""


def _exec(client: httpx.Client, cid: str, script: str) -> None:
    response = client.post(
        f"/api/containers/{cid}/exec", json={"command": "sh", "args": ["-c", script]}, timeout=300
    )
    last = response.text.strip().splitlines()[-1]
    if '"code": 0' not in last and '"code":0' not in last:
        raise RuntimeError(response.text[-2000:])


def _timed_snapshot(client: httpx.Client, cid: str) -> dict[str, Any]:
    started = time.perf_counter()
    response = client.post(f"/api/containers/{cid}/snapshots", timeout=300)
    elapsed = time.perf_counter() - started
    if response.status_code != 201:
        raise RuntimeError(response.text)
    body: dict[str, Any] = response.json()
    return {"seconds": elapsed, **body}


def snapshot_round(rounds: int = 3) -> dict[str, Any]:
    with running_server(runtime="local", snapshot_interval_seconds="0") as server:
        client = server.client
        project = client.post("/api/projects", json={"name": "vite"}).json()["id"]
        body = {"project_id": project, "template": "vite-react"}
        cid = client.post("/api/containers?wait=true", json=body, timeout=120).json()["id"]
        _exec(client, cid, MAKE_WORKSPACE)
        first = _timed_snapshot(client, cid)
        deltas, unchanged = [], []
        for n in range(rounds):
            _exec(client, cid, f"printf 'export const n = {n};\\n' > src/feature1/c1.tsx")
            deltas.append(_timed_snapshot(client, cid))
            unchanged.append(_timed_snapshot(client, cid))
        if client.delete(f"/api/containers/{cid}").status_code != 204:
            raise RuntimeError("delete failed")
        started = time.perf_counter()
        restored = client.post("/api/containers?wait=true", json=body, timeout=300).json()
        restore_s = time.perf_counter() - started
        if restored.get("status") != "running":
            raise RuntimeError(f"restore failed: {restored}")
    return {
        "first": first, "delta": deltas, "unchanged": unchanged,
        "create_with_restore_s": restore_s,
    }  # fmt: skip
