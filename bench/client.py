"""P12: what `@cloudcontainer/api` (clients/js) adds on top of the server.

A real server (local runtime); Node runs clients/js/bench/overhead.mjs against it, which boots a
WebContainer through the package and measures, interleaved sample by sample in that container:
`fs.writeFile` (10 KiB) through the client against the same `fs.write` call sent by hand on a
raw events WebSocket and a raw HTTP PUT; `spawn('echo')` until its exit against the same steps
by hand (POST the terminal, a ticket, its WebSocket, the `exit` frame); and bolt.diy's own
`BoltShell.executeCommand` (bundled from its source archive) through the client. The same echo
commands through this repo's Python BoltShell on a raw WebSocket, in the same server, are the
executeCommand floor.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.support.jsclient import built_js_client

from bench.boltshell import bolt_shell, echoes
from bench.server import Server, running_server
from bench.stats import recorded
from bench.watch import _container

RUN_SECONDS = 900  # an upper bound for the Node script, never a timing


def overhead(samples: int) -> dict[str, Any]:
    js = built_js_client()
    with running_server(runtime="local") as server, tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "overhead.json"
        token = server.client.headers["Authorization"].removeprefix("Bearer ")
        env = {
            **os.environ, "SAMPLES": str(samples), "OUTPUT": str(output),
            "CLOUDCONTAINER_URL": str(server.client.base_url).rstrip("/"),
            "CLOUDCONTAINER_TOKEN": token,
        }  # fmt: skip
        done = subprocess.run(
            ["node", "bench/overhead.mjs"], cwd=js, env=env, capture_output=True, text=True,
            timeout=RUN_SECONDS,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"clients/js/bench/overhead.mjs failed: {done.stderr[-4000:]}")
        measured = json.loads(output.read_text())
        raw_commands = asyncio.run(_raw_echoes(server, len(measured["executeCommand"])))
    return {
        "node": measured["node"],
        "writeFile": _pair(measured["writeFile"], "client", ("socket", "http")),
        "spawn": _pair(measured["spawn"], "client", ("raw",)),
        "executeCommand": {
            "client": recorded(measured["executeCommand"]), "raw": recorded(raw_commands),
        },
    }  # fmt: skip


def _pair(samples: dict[str, list[float]], client: str, raws: tuple[str, ...]) -> dict[str, Any]:
    """Each variant's samples and summary, and the client's p50 minus each raw one's."""
    result: dict[str, Any] = {name: recorded(values) for name, values in samples.items()}
    for raw in raws:
        result[f"added_p50_over_{raw}_s"] = (
            result[client]["summary"]["p50"] - result[raw]["summary"]["p50"]
        )
    return result


async def _raw_echoes(server: Server, count: int) -> list[float]:
    container = _container(server, "blank")
    async with bolt_shell(server, container) as shell:
        await echoes(shell, 10)  # warm-up, as the Node side's
        return await echoes(shell, count)
