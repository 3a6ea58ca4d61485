"""Real dev servers in a sandbox, seen by headless Chromium through the preview proxy, inside
bolt.diy's cross-origin-isolated parent (`open_isolated`): Vite React and Next.js hot-reload
an edit without a reload (the proxy's WebSocket passthrough, Next's Origin rewrite), a Vite
app reaches an Express backend in the same container through Vite's `server.proxy`, and the
injected shim forwards an uncaught error to the parent.

Each test installs its template's packages from the real registry once and reuses them. No
timing is asserted: the waits are generous upper bounds. Screenshots of each step go to
test-artifacts/ (`snap`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from playwright.async_api import Frame, Page

from cloudcontainer.agentlink.client import AgentClient
from tests.conftest import Api, TestUser
from tests.sandbox_helpers import new_container, run
from tests.support.browser import (
    has_marker,
    is_isolated,
    messages,
    open_isolated,
    set_marker,
    snap,
    wait_text,
)

INSTALL_SECONDS = 600  # the real npm registry: an upper bound, never a measured timing
READY_SECONDS = 180  # from the dev command's start to its `server-ready` event
SHOW_SECONDS = 120  # from a navigation or an edit to its text in the frame (Next compiles)

pytestmark = pytest.mark.timeout(INSTALL_SECONDS + 3 * READY_SECONDS + 300)


@dataclass
class Sandbox:
    api: Api
    user: TestUser
    cid: str
    link: AgentClient

    async def write(self, path: str, text: str) -> None:
        response = await self.api.client.put(
            f"/api/containers/{self.cid}/files/{path}?mkdirs=true",
            content=text.encode(),
            headers=self.user.headers,
        )
        assert response.status_code == 200, response.text

    async def start(self, port: int, command: str, *args: str) -> tuple[int, str]:
        """Spawn `command` in the project and wait for `server-ready` on `port`: (its proc id,
        the preview URL, token included)."""
        async with self.api.services.events.subscribe(self.cid) as queue:
            spawned = await self.link.call(
                "proc.spawn", command=command, args=list(args), cwd="/home/project"
            )
            ready = await next_event(queue, READY_SECONDS, type="server-ready", port=port)
        return int(spawned["proc_id"]), str(ready["url"])

    async def stop(self, proc_id: int, port: int) -> None:
        async with self.api.services.events.subscribe(self.cid) as queue:
            await self.link.call("proc.kill", proc_id=proc_id)
            await next_event(queue, 60, type="port", port=port, state="close")


async def next_event(
    queue: asyncio.Queue[dict[str, Any]], timeout: float, **fields: Any
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            event = await queue.get()
            if all(event.get(k) == v for k, v in fields.items()):
                return event


@asynccontextmanager
async def installed(api: Api, template: str, *packages: str) -> AsyncIterator[Sandbox]:
    """A container of `template` with its packages (and `packages`) installed."""
    user = await api.user()
    cid = (await new_container(api, user, template))["id"]
    done = await run(api, user, cid, "npm", "install", *packages, timeout=INSTALL_SECONDS)
    assert done.code == 0, done
    yield Sandbox(api, user, cid, await api.services.containers.agent(user.id, cid))


async def reloaded(page: Page) -> Frame:
    """Reload the parent (and so its iframe, through the tokened URL again): the new frame."""
    await page.reload()
    frame = await (await page.locator("iframe#preview").element_handle()).content_frame()
    assert frame is not None
    return frame


async def shot(page: Page, box: Sandbox, name: str) -> None:
    """A screenshot per step and runtime: test-artifacts/<name>-<runtime>.png."""
    await snap(page, f"{name}-{box.api.services.runtime.name}")


async def assert_hot_update(
    page: Page, box: Sandbox, frame: Frame, path: str, source: str, text: str, name: str
) -> None:
    """Writing `source` to `path` shows `text` in `frame` with the document kept."""
    marker = await set_marker(frame)
    await box.write(path, source)
    await wait_text(frame, text, timeout=SHOW_SECONDS)
    await shot(page, box, name)
    assert await has_marker(frame, marker), "the preview reloaded instead of hot-updating"


APP = """import { useState } from 'react';

export default function App() {
  const [count, setCount] = useState(0);
  return (
    <main>
      <h1>%s</h1>
      <button onClick={() => setCount((n) => n + 1)}>count is {count}</button>
    </main>
  );
}
"""


async def test_vite_react_hot_updates_an_edit_in_the_isolated_iframe(
    sandbox_api: Api, own_page: Page
) -> None:
    page = own_page
    async with installed(sandbox_api, "vite-react") as box:
        _, url = await box.start(5173, "npm", "run", "dev")
        frame = await open_isolated(page, url)
        await wait_text(frame, "Hello from Vite + React", timeout=SHOW_SECONDS)
        await shot(page, box, "vite-react-1-loaded")
        assert await is_isolated(page)

        text = "Edited through the file API"
        await assert_hot_update(page, box, frame, "src/App.jsx", APP % text, text,
                                "vite-react-2-hot-updated")  # fmt: skip


NEXT_PAGE = """export default function Home() {
  return (
    <main>
      <h1>%s</h1>
    </main>
  );
}
"""


async def test_nextjs_hot_updates_a_page_edit_in_the_isolated_iframe(
    sandbox_api: Api, own_page: Page
) -> None:
    page = own_page
    async with installed(sandbox_api, "nextjs") as box:
        # 16.2 and later refuse its dev endpoints to a foreign Origin: the proxy's rewrite is
        # what lets this page hydrate and hot-update (PREVIEWS.md A3).
        version = await run(box.api, box.user, box.cid, "node", "-p",
                            "require('next/package.json').version")  # fmt: skip
        major, minor = (int(part) for part in version.stdout.split(".")[:2])
        assert (major, minor) >= (16, 2), version
        _, url = await box.start(3000, "npm", "run", "dev")
        frame = await open_isolated(page, url)
        await wait_text(frame, "Hello from Next.js", timeout=SHOW_SECONDS)
        await shot(page, box, "nextjs-1-loaded")
        assert await is_isolated(page)

        text = "Next page edited"
        await assert_hot_update(page, box, frame, "app/page.js", NEXT_PAGE % text, text,
                                "nextjs-2-hot-updated")  # fmt: skip


# The pattern generated apps use: the frontend calls a relative /api, Vite's dev server
# proxies it to the backend in the same container.
VITE_CONFIG = """import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

export default defineConfig({
  plugins: [react()],
  server: { proxy: { '/api': 'http://localhost:3001' } },
});
"""
SERVER = """import express from 'express';

const app = express();
app.get('/api/hello', (req, res) => res.json({ message: '%s' }));
app.listen(3001, () => console.log('backend on 3001'));
"""
FETCHING_APP = """import { useEffect, useState } from 'react';

export default function App() {
  const [message, setMessage] = useState('loading');
  useEffect(() => {
    fetch('/api/hello').then((r) => r.json()).then((body) => setMessage(body.message),
      (error) => setMessage('failed: ' + error));
  }, []);
  return (
    <main>
      <h1>%s</h1>
      <p>backend says: {message}</p>
    </main>
  );
}
"""


async def test_vite_frontend_reaches_an_express_backend_in_the_same_container(
    sandbox_api: Api, own_page: Page
) -> None:
    page = own_page
    async with installed(sandbox_api, "vite-react", "express@5") as box:
        await box.write("vite.config.js", VITE_CONFIG)
        await box.write("server.js", SERVER % "first answer")
        await box.write("src/App.jsx", FETCHING_APP % "Full stack")
        backend, _ = await box.start(3001, "node", "server.js")
        _, url = await box.start(5173, "npm", "run", "dev")
        frame = await open_isolated(page, url)
        await wait_text(frame, "backend says: first answer", timeout=SHOW_SECONDS)
        await shot(page, box, "fullstack-1-first-answer")

        await box.stop(backend, 3001)
        await box.write("server.js", SERVER % "second answer")
        await box.start(3001, "node", "server.js")
        frame = await reloaded(page)
        await wait_text(frame, "backend says: second answer", timeout=SHOW_SECONDS)
        await shot(page, box, "fullstack-2-backend-restarted")

        text = "Frontend edited"
        await assert_hot_update(page, box, frame, "src/App.jsx", FETCHING_APP % text, text,
                                "fullstack-3-frontend-hot-updated")  # fmt: skip
        assert "backend says: second answer" in await frame.inner_text("body")


THROWING_APP = """setTimeout(() => { throw new Error('boom from the preview'); }, 0);

export default function App() {
  return <h1>About to throw</h1>;
}
"""


async def test_an_uncaught_error_in_the_preview_reaches_the_parent(
    sandbox_api: Api, own_page: Page
) -> None:
    page = own_page
    async with installed(sandbox_api, "vite-react") as box:
        registered = await box.api.client.put(
            f"/api/containers/{box.cid}/previews:script",
            json={"script": "", "forward_errors": True},
            headers=box.user.headers,
        )
        assert registered.status_code == 204, registered.text
        await box.write("src/App.jsx", THROWING_APP)
        _, url = await box.start(5173, "npm", "run", "dev")
        frame = await open_isolated(page, url)
        await wait_text(frame, "About to throw", timeout=SHOW_SECONDS)
        await page.wait_for_function(
            "() => window.__ccMessages.some((m) => m.data && m.data.type"
            " === 'PREVIEW_UNCAUGHT_EXCEPTION')",
            timeout=SHOW_SECONDS * 1000,
        )
        await shot(page, box, "errors-1-forwarded")
        forwarded = next(
            message["data"]
            for message in await messages(page)
            if isinstance(message["data"], dict)
            and message["data"].get("type") == "PREVIEW_UNCAUGHT_EXCEPTION"
        )
        assert forwarded["__cloudcontainer"] == "preview-message"
        assert "boom from the preview" in forwarded["message"]
        assert forwarded["port"] == 5173
