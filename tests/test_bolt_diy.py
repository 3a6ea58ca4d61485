"""bolt.diy itself on cloudcontainer, end to end in headless Chromium, as a person uses it.

bolt.diy's pinned source, switched by integrations/bolt-diy/kit.py (and nothing else), runs its
dev server against a real gateway with real sandboxes; its LLM is the scripted one
(integrations/bolt-diy/llm.py) replaying the `vite-react` recording. The test sends the
prompt and waits for what a person waits for: the files in bolt's file tree, `npm install`
done in bolt's terminal, the app in the preview iframe. It edits App.jsx in bolt's editor and
sees the preview change in place (Vite's HMR through the proxy: a mark set on the page
survives), sends a follow-up prompt and sees its change the same way, opens the preview in
bolt's own new-tab route, and reloads bolt's page, which replays the chat into a fresh
container as it does on WebContainer.

Screenshots of each step go to test-artifacts/ (`snap`). No timing is asserted: every wait
is a generous upper bound.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Frame, Page

from tests.conftest import Api
from tests.sandbox_helpers import live_server
from tests.support.boltdiy import MODEL, Bolt, free_port, prepared_bolt, running_bolt
from tests.support.browser import ARTIFACTS, snap

pytestmark = pytest.mark.timeout(1800)

LOAD_SECONDS = 300  # bolt's first page from its dev server (Vite compiles on demand)
APP_SECONDS = 300  # prompt → the app in the preview: npm install from the registry
CHANGE_SECONDS = 60  # an edit or a follow-up → the preview shows it


@pytest.fixture(scope="session")
def bolt_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bolt.diy switched and installed by the kit, once a session."""
    return prepared_bolt(tmp_path_factory.mktemp("bolt-diy"))


@pytest_asyncio.fixture
async def bolt(
    sandbox_api_factory: Any, bolt_tree: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Bolt]:
    """A gateway that lets bolt's origin call it, a user's API key in bolt's server, and
    bolt.diy with the scripted LLM."""
    port = free_port()
    api: Api = await sandbox_api_factory(cors_origins=[f"http://127.0.0.1:{port}"])
    user = await api.user()
    key = await api.client.post("/api/auth/keys", json={"name": "bolt"}, headers=user.headers)
    assert key.status_code == 201, key.text
    log = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', request.node.name)}-bolt.log"
    async with live_server(api) as base:
        gateway = "http" + base.removeprefix("ws")
        async with running_bolt(bolt_tree, gateway, key.json()["key"], port, log) as running:
            yield running


async def open_bolt(page: Page, url: str) -> None:
    """Load bolt until its chat box shows. A fresh tree's first load can stay blank: Vite
    finds bolt's dependencies as the page asks for them, optimises them again and the chunks
    the page was loading are gone (its log says "optimized dependencies changed"). A person
    reloads; so does this, a few times."""
    for attempt in range(4):
        await page.goto(url, timeout=LOAD_SECONDS * 1000)
        try:
            await page.locator("textarea").first.wait_for(timeout=LOAD_SECONDS * 1000 / 4)
            return
        except PlaywrightError:
            if attempt == 3:
                raise


async def preview(page: Page, text: str, seconds: float) -> Frame:
    """bolt's preview iframe once it shows `text` (the frame is found anew each time: bolt
    replaces it when a server starts)."""
    async with asyncio.timeout(seconds):
        while True:
            for frame in page.frames:
                if frame is not page.main_frame and re.match(r"http://[^/]+:\d+/", frame.url):
                    try:
                        if text in await frame.evaluate("document.body.innerText"):
                            return frame
                    except PlaywrightError:
                        pass  # navigating
            await asyncio.sleep(0.05)  # fine enough for bench/bolt_app.py to time with


async def send(page: Page, prompt: str) -> None:
    box = page.locator("textarea").first
    await box.fill(prompt)
    await box.press("Enter")


async def terminal_text(page: Page) -> str:
    return str(await page.evaluate(
        "() => Array.from(document.querySelectorAll('.xterm-rows')).map((e) => e.innerText)"
        ".join('\\n')"
    ))  # fmt: skip


async def edit_heading(page: Page, old: str, new: str) -> None:
    """In bolt's editor: open src/App.jsx, select the heading's text, type over it, save
    (Ctrl+S)."""
    await page.get_by_text("Code", exact=True).first.click()
    await page.get_by_text("App.jsx", exact=True).first.click()
    await page.locator(".cm-line").filter(has_text=f"<h1>{old}</h1>").click()
    await page.keyboard.press("End")
    for _ in range(len("</h1>")):
        await page.keyboard.press("ArrowLeft")
    for _ in range(len(old)):
        await page.keyboard.press("Shift+ArrowLeft")
    await page.keyboard.insert_text(new)
    # bolt takes the edit into its store after a debounce and then offers Save and Reset;
    # a save before that would write the old text (as on WebContainer: a person is slower).
    unsaved = page.get_by_text("Reset", exact=True)
    await unsaved.wait_for()
    await page.keyboard.press("Control+s")
    await unsaved.wait_for(state="hidden")


@pytest.mark.parametrize("runtime_name", ["local", "docker"])
async def test_bolt_builds_changes_and_recovers_an_app(bolt: Bolt, own_page: Page) -> None:
    page = own_page
    await page.set_viewport_size({"width": 1400, "height": 900})
    await page.context.add_cookies([
        {"name": "selectedProvider", "value": "OpenAILike", "url": bolt.url},
        {"name": "selectedModel", "value": MODEL, "url": bolt.url},
    ])  # fmt: skip
    await open_bolt(page, bolt.url)
    await snap(page, "bolt-1-start")

    # The prompt: bolt writes the files, runs npm install, starts Vite; the preview shows it.
    await send(page, "Build a counter app")
    frame = await preview(page, "Counter", APP_SECONDS)
    await snap(page, "bolt-2-app-in-preview")
    for step in ("npm install", "npm run dev"):
        await page.get_by_text(step, exact=True).first.wait_for()
    assert "ready in" in await terminal_text(page)  # Vite's banner, in bolt's terminal
    await page.get_by_text("Code", exact=True).first.click()
    for name in ("App.jsx", "main.jsx", "index.css", "index.html", "package.json"):
        await page.get_by_text(name, exact=True).first.wait_for()  # bolt's file tree
    await snap(page, "bolt-3-files")

    # An edit in bolt's editor: the preview changes in place (HMR), no reload.
    marker = await frame.evaluate("() => (window.__ccMarker = Math.random())")
    await edit_heading(page, "Counter", "Clicker")
    frame = await preview(page, "Clicker", CHANGE_SECONDS)
    assert await frame.evaluate("() => window.__ccMarker") == marker, "the preview reloaded"
    assert "hmr update" in await terminal_text(page)
    await page.get_by_text("Preview", exact=True).first.click()
    await snap(page, "bolt-4-edited")

    # A follow-up prompt: bolt applies the answer's file; HMR again.
    await send(page, "Please call the app Tally")
    frame = await preview(page, "Tally", CHANGE_SECONDS)
    assert await frame.evaluate("() => window.__ccMarker") == marker, "the preview reloaded"
    await snap(page, "bolt-5-follow-up")

    # bolt's "open in a new tab" route (patched by the kit) shows the same app.
    port = re.match(r"http://[^/]+:(\d+)/", frame.url)
    assert port is not None, frame.url
    tab = await page.context.new_page()
    await tab.goto(f"{bolt.url}/webcontainer/preview/{port.group(1)}")
    await preview(tab, "Tally", CHANGE_SECONDS)
    await snap(tab, "bolt-6-new-tab")
    await tab.close()

    # A reload of bolt's page: bolt boots a fresh container and replays the chat into it.
    await page.reload(timeout=LOAD_SECONDS * 1000)
    await preview(page, "Tally", APP_SECONDS)
    await snap(page, "bolt-7-after-reload")
