"""BOLT-APP: bolt.diy itself (switched by integrations/bolt-diy/kit.py) in headless Chromium
against a real server (local runtime), from the prompt to the app in its preview.

Each run opens bolt in a fresh browser context (so bolt boots a fresh, cold container: its npm
cache is empty, as every new container's is) and sends the `vite-react` recording's prompt. The
steps are read from the container through the file API, polled every 50 ms: the answer's
first file written (package.json: P11 counts from there, the model's streaming excluded), all
its files (src/App.jsx), `npm install` done (node_modules/.package-lock.json), then the app's
text in bolt's preview iframe. Then an edit is typed in bolt's editor and saved (Ctrl+S):
save → the preview shows it (Vite's HMR through the proxy). Last, `npm install` of the project
again in that container (a copy without node_modules, through the exec API): its cache warm.

Floor: the same project on the host, plain `npm install` (an empty npm cache, as the
container's) and `vite`, until an HTTP GET of the page answers; then the same with the cache
that install filled.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import Page, async_playwright
from tests.support.boltdiy import choose_scripted_model, prepared_bolt, running_bolt
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS
from tests.support.net import free_port
from tests.test_bolt_diy import edit_heading, open_bolt, preview, send

from bench.server import Server, running_server
from bench.stats import recorded

RECORDING = Path(__file__).resolve().parent.parent / "integrations/bolt-diy/recordings/vite-react"
APP_SECONDS = 300.0  # an upper bound, never a timing


def prompt_to_preview(runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cc-bench-bolt-") as tmp:
        tree = prepared_bolt(Path(tmp))
        port = free_port()
        origins = json.dumps([f"http://127.0.0.1:{port}"])
        with running_server(runtime="local", cors_origins=origins) as server:
            measured = asyncio.run(_runs(server, tree, port, Path(tmp) / "bolt.log", runs))
        measured["floor"] = host_floor(runs)
    return measured


async def _runs(server: Server, tree: Path, port: int, log: Path, runs: int) -> dict[str, Any]:
    key = server.client.post("/api/auth/keys", json={"name": "bench"}).json()["key"]
    gateway = str(server.client.base_url).rstrip("/")
    steps: dict[str, list[float]] = {
        "files": [], "install": [], "preview": [], "total": [], "first_action_to_preview": [],
        "install_warm_cache": [],
    }  # fmt: skip
    saves: list[float] = []
    async with running_bolt(tree, gateway, key, port, log) as bolt, async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        for run in range(runs + 1):  # the first warms bolt's dev server up; not kept
            context = await browser.new_context(viewport={"width": 1400, "height": 900})
            await choose_scripted_model(context, bolt.url)
            page = await context.new_page()
            before = {c["id"] for c in server.client.get("/api/containers").json()}
            await open_bolt(page, bolt.url)  # bolt boots its container as the page loads
            timings, save = await _one(server, page, before)
            if run > 0:
                for name, value in timings.items():
                    steps[name].append(value)
                saves.append(save)
            await context.close()
        await browser.close()
    return {
        "runs": runs,
        **{name: recorded(values) for name, values in steps.items()},
        "save_to_preview": recorded(saves),
    }


async def _one(server: Server, page: Page, before: set[str]) -> tuple[dict[str, float], float]:
    started = time.perf_counter()
    await send(page, "Build a counter app")
    async with httpx.AsyncClient(
        base_url=str(server.client.base_url), headers=dict(server.client.headers)
    ) as http:
        container = await _new_container(http, before)
        first = await _until_file(http, container, "package.json", started)
        files = await _until_file(http, container, "src/App.jsx", started)
        install = await _until_file(http, container, "node_modules/.package-lock.json", started)
        await preview(page, "Counter", APP_SECONDS)
        shown = time.perf_counter() - started
        await edit_heading(page, "Counter", "Clicker")
        saved = time.perf_counter()
        await preview(page, "Clicker", APP_SECONDS)
        save = time.perf_counter() - saved
        warm = await _install_again(http, container)
    timings = {
        "files": files, "install": install - files, "preview": shown - install, "total": shown,
        # P11 (TARGETS.md): from the answer's first action, the model's streaming excluded.
        "first_action_to_preview": shown - first, "install_warm_cache": warm,
    }  # fmt: skip
    return timings, save


async def _install_again(http: httpx.AsyncClient, container: str) -> float:
    """Seconds for `npm install` of the same project in the same container, into a copy
    without node_modules: the container's npm cache is warm from bolt's install."""
    script = (
        "rm -rf ~/again && mkdir ~/again && cp package.json ~/again/ && cd ~/again"
        " && npm install --no-audit --no-fund"
    )
    started = time.perf_counter()
    async with http.stream(
        "POST", f"/api/containers/{container}/exec",
        json={"command": "sh", "args": ["-c", script], "timeout": APP_SECONDS},
        timeout=APP_SECONDS,
    ) as answer:  # fmt: skip
        lines = [json.loads(line) async for line in answer.aiter_lines() if line]
    took = time.perf_counter() - started
    if lines[-1] != {"type": "exit", "code": 0}:
        raise RuntimeError(f"npm install in the container failed: {lines[-5:]}")
    return took


async def _new_container(http: httpx.AsyncClient, before: set[str]) -> str:
    async with asyncio.timeout(APP_SECONDS):
        while True:
            found = [c["id"] for c in (await http.get("/api/containers")).json()]
            fresh = [cid for cid in found if cid not in before]
            if fresh:
                return str(fresh[0])
            await asyncio.sleep(0.05)


async def _until_file(http: httpx.AsyncClient, container: str, path: str, since: float) -> float:
    """Seconds from `since` until `path` exists in the container."""
    async with asyncio.timeout(APP_SECONDS):
        while True:
            answer = await http.get(f"/api/containers/{container}/files/{path}")
            if answer.status_code == 200:
                return time.perf_counter() - since
            await asyncio.sleep(0.05)


def host_floor(runs: int) -> dict[str, Any]:
    """The recording's project on the host: npm install (empty cache), vite, a GET of `/`."""
    files = _recorded_files()
    installs: list[float] = []
    totals: list[float] = []
    warm: list[float] = []
    warm_totals: list[float] = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="cc-bench-host-") as tmp:
            root = Path(tmp) / "app"
            for path, content in files.items():
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                (root / path).write_text(content)
            env = {**os.environ, "npm_config_cache": str(Path(tmp) / "npm-cache")}
            started = time.perf_counter()
            subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=root, env=env,
                           check=True, capture_output=True, timeout=APP_SECONDS)  # fmt: skip
            installs.append(time.perf_counter() - started)
            totals.append(installs[-1] + _vite_up(root, env))
            shutil.rmtree(root / "node_modules")
            (root / "package-lock.json").unlink()
            started = time.perf_counter()
            subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=root, env=env,
                           check=True, capture_output=True, timeout=APP_SECONDS)  # fmt: skip
            warm.append(time.perf_counter() - started)
            warm_totals.append(warm[-1] + _vite_up(root, env))
    return {"install": recorded(installs), "total": recorded(totals),
            "install_warm_cache": recorded(warm), "total_warm_cache": recorded(warm_totals),
            "npm": shutil.which("npm")}  # fmt: skip


def _vite_up(root: Path, env: dict[str, str]) -> float:
    """Seconds from starting `vite` until `/` answers."""
    started = time.perf_counter()
    port = free_port()
    vite = subprocess.Popen(
        ["npx", "vite", "--port", str(port), "--strictPort"], cwd=root, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        _until_answers(f"http://127.0.0.1:{port}/")
        return time.perf_counter() - started
    finally:
        os.killpg(vite.pid, 15)
        vite.wait()


def _until_answers(url: str) -> None:
    deadline = time.monotonic() + APP_SECONDS
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(url)


def _recorded_files() -> dict[str, str]:
    """The files of the recording's first answer (its boltAction file blocks)."""
    turns = json.loads((RECORDING / "turns.json").read_text())
    answer = (RECORDING / turns[0]["answer"]).read_text()
    blocks = re.findall(r'<boltAction type="file" filePath="([^"]+)">(.*?)</boltAction>', answer,
                        re.S)  # fmt: skip
    return dict(blocks)
