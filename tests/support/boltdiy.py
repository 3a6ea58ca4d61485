"""bolt.diy itself, switched to cloudcontainer by integrations/bolt-diy/kit.py, for the tests and
the benchmark that drive it in a browser.

    tree = prepared_bolt(tmp_dir)              # kit.py prepare of the pinned source archive
    async with running_bolt(tree, gateway_url, api_key) as bolt:
        ...  # bolt.url serves bolt.diy; its LLM is integrations/bolt-diy/llm.py

The source is bolt.diy's pinned archive (MIT): $BOLT_DIY_ARCHIVE, else
../shared/thirdparty/bolt.diy.tar.gz beside the repository, else /work/shared/thirdparty. It is
unpacked into a temporary folder, never into this repository.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
from playwright.async_api import BrowserContext

from tests.support.net import free_port

REPOSITORY = Path(__file__).resolve().parents[2]
KIT = REPOSITORY / "integrations" / "bolt-diy" / "kit.py"
LLM = REPOSITORY / "integrations" / "bolt-diy" / "llm.py"
MODEL = "cloudcontainer-scripted"  # the model llm.py lists
PREPARE_SECONDS = 1200  # pnpm install of bolt.diy from the registry: an upper bound
START_SECONDS = 300  # bolt's dev server, to its first page (Vite optimises its deps)


def bolt_archive() -> Path:
    candidates = [
        os.environ.get("BOLT_DIY_ARCHIVE", ""),
        str(REPOSITORY.parent / "shared" / "thirdparty" / "bolt.diy.tar.gz"),
        "/work/shared/thirdparty/bolt.diy.tar.gz",
    ]
    for candidate in filter(None, candidates):
        if Path(candidate).is_file():
            return Path(candidate)
    raise FileNotFoundError(f"bolt.diy's source archive is at none of {candidates}")


def prepared_bolt(folder: Path) -> Path:
    """`kit.py prepare` of the pinned archive into `folder`/bolt.diy; returns that tree."""
    tree = folder / "bolt.diy"
    subprocess.run(
        [sys.executable, str(KIT), "prepare", str(bolt_archive()), str(tree)],
        check=True, timeout=PREPARE_SECONDS,
    )  # fmt: skip
    return tree


@dataclass(frozen=True)
class Bolt:
    url: str  # bolt.diy's page
    llm_url: str  # the scripted LLM's OpenAI base URL
    log: Path  # bolt's and the LLM's output


@asynccontextmanager
async def running_bolt(
    tree: Path, gateway: str, api_key: str, port: int, log: Path,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Bolt]:  # fmt: skip
    """The scripted LLM and bolt.diy's dev server (`kit.py run`) on loopback until the block
    ends; `port` is bolt's (the gateway's `cors_origins` must name http://127.0.0.1:PORT).
    `env` is added to bolt's server environment (e.g. NODE_EXTRA_CA_CERTS)."""
    llm_port = free_port()
    llm_url = f"http://127.0.0.1:{llm_port}/v1"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as output:
        llm = await _start(output, sys.executable, str(LLM), "--port", str(llm_port))
        bolt = await _start(
            output, sys.executable, str(KIT), "run", str(tree), "--server", gateway,
            "--api-key", api_key, "--llm", llm_url, "--port", str(port),
            env={**os.environ, **(env or {})},
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}"
            await _until_serving(url, bolt, log)
            yield Bolt(url, llm_url, log)
        finally:
            for process in (bolt, llm):
                await _stop(process)


async def _start(
    output: IO[bytes], *argv: str, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv, stdout=output, stderr=subprocess.STDOUT, start_new_session=True, env=env
    )


async def _until_serving(url: str, process: asyncio.subprocess.Process, log: Path) -> None:
    async with httpx.AsyncClient(timeout=60) as client, asyncio.timeout(START_SECONDS):
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"bolt.diy exited: {log.read_text()[-4000:]}")
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.5)


async def _stop(process: asyncio.subprocess.Process) -> None:
    """The process and what it started (pnpm → remix → vite, esbuild): its whole group."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        async with asyncio.timeout(10):
            await process.wait()
    except TimeoutError:
        os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


# bolt enables OpenAILike on a page's first load only once it has asked its server which
# providers are configured; its model menu, rendered before that, moves the chat to the first
# enabled provider (AmazonBedrock) and keeps that in its cookie. A person who set up
# OpenAILike before has it enabled in `provider_settings`, as this gives the page.
_OPENAI_LIKE_ENABLED = """
if (localStorage.getItem('provider_settings') === null) {
  localStorage.setItem('provider_settings', JSON.stringify({OpenAILike: {settings: {enabled: true}}}));
}
"""


async def choose_scripted_model(context: BrowserContext, url: str) -> None:
    """bolt pages of `context` at `url` chat with llm.py: the OpenAILike provider enabled and
    chosen, with the scripted model (bolt's cookies)."""
    await context.add_init_script(_OPENAI_LIKE_ENABLED)
    await context.add_cookies([
        {"name": "selectedProvider", "value": "OpenAILike", "url": url},
        {"name": "selectedModel", "value": MODEL, "url": url},
    ])  # fmt: skip
