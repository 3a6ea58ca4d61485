"""`@cloudcontainer/api` in a real browser, as bolt.diy uses it: headless Chromium loads a
cross-origin-isolated page (bolt's COOP/COEP) from its own origin that imports the package
(bundled for the browser with esbuild), boots a container on the gateway across origins
(the gateway's `cors_origins`), serves a page from a node server in it, shows the preview in
bolt's sandboxed iframe, and receives the page's uncaught error and unhandled rejection as
`preview-message` events; `reloadPreview` reloads the iframe.

No timing is asserted: the waits are generous upper bounds.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Frame, Page

from tests.conftest import Api
from tests.sandbox_helpers import live_server
from tests.support.browser import (
    ISOLATION_HEADERS,
    PREVIEW_SANDBOX,
    PageServer,
    Response,
    has_marker,
    set_marker,
    snap,
    wait_text,
)
from tests.support.jsclient import built_js_client

pytestmark = pytest.mark.timeout(300)

WAIT_MS = 60_000  # an upper bound for a boot, a server's start, a message; never a timing

# A node server in the container; its page throws at load and leaves a promise rejected.
SERVER_JS = """
require('http').createServer((request, response) => {
  response.setHeader('content-type', 'text/html; charset=utf-8');
  response.end(`<!doctype html><html><head><title>app</title></head><body>
    <h1>hello from the container</h1>
    <script>
      Promise.reject(new Error('rejected in the preview'));
      throw new Error('thrown in the preview');
    </script></body></html>`);
}).listen(3000);
"""

# The embedding page: bolt's isolation headers, bolt's iframe, the package as a module.
PAGE = f"""<!doctype html>
<meta charset="utf-8"><title>bolt-like host</title>
<script type="module">
  import * as api from '/client.js';
  window.api = api;
  window.booted = new Promise((resolve) => (window.boot = resolve));
</script>
<iframe id="preview" title="preview" sandbox="{PREVIEW_SANDBOX}"
  allow="cross-origin-isolated" style="border: none; width: 100%; height: 80vh"></iframe>
"""

# What the page does with the package, as bolt.diy's workbench does.
BOOT_AND_SERVE = """async ([url, token, server]) => {
  const { WebContainer, configure } = window.api;
  configure({ url, token });
  const wc = await WebContainer.boot({
    coep: 'credentialless', workdirName: 'project', forwardPreviewErrors: true,
  });
  window.wc = wc;
  window.messages = [];
  wc.on('preview-message', (message) => window.messages.push(message));
  window.ready = new Promise((resolve) => wc.on('server-ready', (port, url) => resolve({ port, url })));
  await wc.fs.writeFile('server.js', server);
  await wc.spawn('node', ['server.js']);
  const ready = await window.ready;
  document.getElementById('preview').src = ready.url;
  return ready;
}"""


@pytest.fixture(scope="module")
def browser_bundle() -> str:
    """The package bundled for a browser (ESM), as a bolt.diy build would bundle it."""
    js = built_js_client()
    done = subprocess.run(
        ["node_modules/.bin/esbuild", "dist/index.js", "--bundle", "--format=esm",
         "--platform=browser", "--log-level=error"],
        cwd=js, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return done.stdout


@pytest_asyncio.fixture
async def host(browser_bundle: str) -> AsyncIterator[PageServer]:
    routes = {
        "/": Response(PAGE, ISOLATION_HEADERS),
        "/client.js": Response(browser_bundle, ISOLATION_HEADERS, content_type="text/javascript"),
    }
    async with PageServer(routes) as server:
        yield server


async def preview_frame(page: Page) -> Frame:
    handle = await page.locator("iframe#preview").element_handle()
    assert handle is not None
    frame = await handle.content_frame()
    assert frame is not None
    return frame


@pytest.mark.parametrize("runtime_name", ["local", "docker"])
async def test_a_preview_page_that_throws_reaches_the_host_as_preview_messages(
    sandbox_api_factory: Any, host: PageServer, own_page: Page
) -> None:
    api: Api = await sandbox_api_factory(cors_origins=[host.origin])
    user = await api.user()
    key = await api.client.post("/api/auth/keys", json={"name": "browser"}, headers=user.headers)
    assert key.status_code == 201, key.text
    async with live_server(api) as base:
        await own_page.goto(host.url("/"))
        await own_page.wait_for_function("() => window.api !== undefined", timeout=WAIT_MS)
        assert await own_page.evaluate("() => crossOriginIsolated"), "the host is not isolated"
        gateway = "http" + base.removeprefix("ws")
        ready = await own_page.evaluate(BOOT_AND_SERVE, [gateway, key.json()["key"], SERVER_JS])
        assert ready["port"] == 3000
        assert re.fullmatch(r"http://[^/]+:\d+", ready["url"]), ready  # an origin, as WC's
        frame = await preview_frame(own_page)
        await wait_text(frame, "hello from the container", timeout=WAIT_MS / 1000)
        await snap(own_page, "js-client-preview-in-isolated-host")
        await own_page.wait_for_function("() => window.messages.length >= 2", timeout=WAIT_MS)
        messages = await own_page.evaluate("() => window.messages")
        by_type = {message["type"]: message for message in messages}
        thrown = by_type["PREVIEW_UNCAUGHT_EXCEPTION"]
        assert "thrown in the preview" in thrown["message"], json.dumps(messages)
        assert (thrown["port"], thrown["pathname"], thrown["previewId"]) == (3000, "/", "3000")
        rejected = by_type["PREVIEW_UNHANDLED_REJECTION"]
        assert "rejected in the preview" in rejected["message"], json.dumps(messages)

        # reloadPreview: the frame's document is replaced (a mark set on it is gone).
        marker = await set_marker(frame)
        await own_page.evaluate(
            "() => window.api.reloadPreview(document.getElementById('preview'))"
        )
        async with asyncio.timeout(WAIT_MS / 1000):
            while await _still_marked(frame, marker):
                await asyncio.sleep(0.05)
        frame = await preview_frame(own_page)
        await wait_text(frame, "hello from the container", timeout=WAIT_MS / 1000)
        await own_page.evaluate("() => window.wc.teardown()")


async def _still_marked(frame: Frame, marker: float) -> bool:
    """Whether the frame still shows the marked document (a navigation under way counts as
    gone: its context is being replaced)."""
    try:
        return await has_marker(frame, marker)
    except PlaywrightError:
        return False
