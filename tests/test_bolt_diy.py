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
import contextlib
import io
import re
import zipfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Frame, Page

from cloudcontainer.config import Settings
from tests.conftest import Api, destroy_sandboxes, make_settings, running_api
from tests.sandbox_helpers import live_server
from tests.support.boltdiy import Bolt, choose_scripted_model, prepared_bolt, running_bolt
from tests.support.browser import ARTIFACTS, snap
from tests.support.githttp import bare_repository, git_https_server
from tests.support.net import free_port
from tests.support.smtp import Mailbox

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
    async with bolt_on_a_gateway(sandbox_api_factory, bolt_tree, request) as running:
        yield running


@asynccontextmanager
async def bolt_on_a_gateway(
    sandbox_api_factory: Any, bolt_tree: Path, request: pytest.FixtureRequest,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Bolt]:  # fmt: skip
    port = free_port()
    api: Api = await sandbox_api_factory(cors_origins=[f"http://127.0.0.1:{port}"])
    user = await api.user()
    key = await api.client.post("/api/auth/keys", json={"name": "bolt"}, headers=user.headers)
    assert key.status_code == 201, key.text
    log = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', request.node.name)}-bolt.log"
    async with live_server(api) as base:
        gateway = "http" + base.removeprefix("ws")
        async with running_bolt(bolt_tree, gateway, key.json()["key"], port, log, env) as running:
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


async def import_from_git(page: Page, url: str) -> Frame:
    """Open bolt's clone route and wait for the imported app in the preview. Chromium fails
    the requests in flight when a network interface appears (net::ERR_NETWORK_CHANGED; the
    docker runtime adds a veth for the container bolt boots as the page loads), and a
    route's code that failed to load leaves bolt's page blank: a person reloads, and so does
    this, a few times."""
    await open_bolt(page, url)
    reloads = 0
    async with asyncio.timeout(APP_SECONDS):
        while True:
            with contextlib.suppress(TimeoutError):
                return await preview(page, "Imported from git", 10)
            try:
                blank = await page.evaluate("!document.body || !document.body.innerText.trim()")
            except PlaywrightError:  # navigating (bolt moves to the new chat's URL)
                blank = False
            if blank and reloads < 3:
                reloads += 1
                await open_bolt(page, url)


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


async def terminal_shows(page: Page, text: str, seconds: float = CHANGE_SECONDS) -> None:
    """Until bolt's terminals show `text`: output reaches xterm after its own render frame,
    so what the preview already shows can still be on its way to the terminal."""
    async with asyncio.timeout(seconds):
        while text not in await terminal_text(page):
            await asyncio.sleep(0.1)


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
    await choose_scripted_model(page.context, bolt.url)
    await open_bolt(page, bolt.url)
    await snap(page, "bolt-1-start")

    # The prompt: bolt writes the files, runs npm install, starts Vite; the preview shows it.
    await send(page, "Build a counter app")
    frame = await preview(page, "Counter", APP_SECONDS)
    await snap(page, "bolt-2-app-in-preview")
    for step in ("npm install", "npm run dev"):
        await page.get_by_text(step, exact=True).first.wait_for()
    await terminal_shows(page, "ready in")  # Vite's banner, in bolt's terminal
    await page.get_by_text("Code", exact=True).first.click()
    for name in ("App.jsx", "main.jsx", "index.css", "index.html", "package.json"):
        await page.get_by_text(name, exact=True).first.wait_for()  # bolt's file tree
    await snap(page, "bolt-3-files")

    # An edit in bolt's editor: the preview changes in place (HMR), no reload.
    marker = await frame.evaluate("() => (window.__ccMarker = Math.random())")
    await edit_heading(page, "Counter", "Clicker")
    frame = await preview(page, "Clicker", CHANGE_SECONDS)
    assert await frame.evaluate("() => window.__ccMarker") == marker, "the preview reloaded"
    await terminal_shows(page, "hmr update")
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


# Typed into a plain terminal: the notes as the running API holds them.
NOTES_FROM_THE_SHELL = (
    "node -e \"fetch('http://localhost:8080/api/notes').then((r) => r.text()).then(console.log)\""
)


@dataclass
class Gateway:
    """A gateway in this process that a test stops and starts again at the same port on the
    same database: a restart, as bolt's page sees one."""

    settings: Settings
    mailbox: Mailbox
    port: int = field(default_factory=free_port)
    api: Api | None = None
    _running: AsyncExitStack | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Api:
        stack = AsyncExitStack()
        self.api = await stack.enter_async_context(running_api(self.settings, self.mailbox))
        await stack.enter_async_context(live_server(self.api, self.port))
        self._running = stack
        return self.api

    async def stop(self) -> None:
        if self._running is not None:
            await self._running.aclose()
        self._running = self.api = None


@pytest_asyncio.fixture
async def gateway(
    request: pytest.FixtureRequest, runtime_name: str, tmp_path: Path,
    smtp: tuple[Mailbox, int], mailbox: Mailbox,
) -> AsyncIterator[tuple[Gateway, int]]:  # fmt: skip
    """A restartable gateway (stopped) whose user has an API key, and bolt's port it lets in."""
    bolt_port = free_port()
    image = {}
    if runtime_name == "docker":
        image["sandbox_image"] = request.getfixturevalue("built_image").tag
    settings = make_settings(
        tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}", smtp[1],
        runtime=runtime_name, health_interval_seconds=0.2,
        cors_origins=[f"http://127.0.0.1:{bolt_port}"], **image,
    )  # fmt: skip
    gateway = Gateway(settings, mailbox)
    try:
        yield gateway, bolt_port
    finally:
        await gateway.stop()
        await destroy_sandboxes(settings)


async def api_key(gateway: Gateway) -> str:
    """A user and an API key for bolt's server, made while the gateway runs."""
    api = await gateway.start()
    user = await api.user()
    key = await api.client.post("/api/auth/keys", json={"name": "bolt"}, headers=user.headers)
    assert key.status_code == 201, key.text
    await gateway.stop()
    return str(key.json()["key"])


async def toast(page: Page, pattern: str) -> None:
    """One of bolt's toasts (react-toastify) matching `pattern` shows, done sliding in (so a
    screenshot after this has it)."""
    found = page.locator(".Toastify__toast").filter(has_text=re.compile(pattern)).first
    await found.wait_for(timeout=CHANGE_SECONDS * 1000)
    await found.evaluate("(e) => Promise.all(e.getAnimations().map((a) => a.finished))")


async def choose_port(page: Page, port: int) -> None:
    """bolt's port menu in the preview's address bar: open it, pick `port`."""
    await page.locator("button:has(.i-ph\\:plug)").click()
    await page.locator(".z-port-dropdown").get_by_text(str(port), exact=True).click()


async def type_in_terminal(page: Page, line: str) -> None:
    """Type `line` and Enter into the terminal tab bolt shows."""
    await page.locator(".xterm >> visible=true").first.click()
    await page.keyboard.type(line)
    await page.keyboard.press("Enter")


@pytest.mark.parametrize("runtime_name", ["local", "docker"])
async def test_bolt_full_stack_app_tools_and_a_gateway_that_comes_and_goes(
    gateway: tuple[Gateway, int], bolt_tree: Path, own_page: Page,
    request: pytest.FixtureRequest,
) -> None:  # fmt: skip
    """The second recording (an Express API and a Vite frontend that calls it) with the
    gateway down when bolt opens and restarted mid-session; bolt's port menu, its failing
    command alert, its plain terminal, search and zip download, all against the container."""
    server, port = gateway
    key = await api_key(server)
    page = own_page
    await page.set_viewport_size({"width": 1400, "height": 900})
    await choose_scripted_model(page.context, f"http://127.0.0.1:{port}")
    log = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', request.node.name)}-bolt.log"
    async with running_bolt(bolt_tree, server.url, key, port, log) as bolt:
        # The gateway is down as bolt opens: bolt says so, and boots once it is up.
        await open_bolt(page, bolt.url)
        await toast(page, r"cloudcontainer: .*cannot be reached")
        await snap(page, "bolt-fullstack-1-server-down")
        await server.start()
        await toast(page, "Connected to cloudcontainer again")

        # The full-stack app: the frontend lists the API's notes (through Vite's proxy).
        await send(page, "Build a notes app with an API")
        frame = await preview(page, "Notes (2)", APP_SECONDS)
        assert "Buy milk" in await frame.evaluate("document.body.innerText")
        await snap(page, "bolt-fullstack-2-app")
        await choose_port(page, 8080)  # the API itself, at its own preview port: Express
        await preview(page, "Cannot GET /", CHANGE_SECONDS)  # (it serves only /api)
        await choose_port(page, 5173)
        frame = await preview(page, "Notes (2)", CHANGE_SECONDS)

        # The app writes through the API: a third note.
        await frame.locator("input").fill("Water the plants")
        await frame.get_by_role("button", name="Add").click()
        frame = await preview(page, "Notes (3)", CHANGE_SECONDS)

        # A plain terminal beside bolt's own: the same container, the same running API.
        await page.get_by_text("Code", exact=True).first.click()
        await page.locator("button:has(.i-ph\\:plus)").click()
        await page.get_by_text("Terminal", exact=True).click()  # the new tab, beside bolt's
        await type_in_terminal(page, NOTES_FROM_THE_SHELL)
        await terminal_shows(page, "Water the plants")
        await snap(page, "bolt-fullstack-3-terminal")

        # Search (the container's text search) finds the API's port in two files.
        await page.get_by_role("tab", name="Search").click()
        box = page.get_by_placeholder("Search", exact=True)
        await box.fill("8080")
        results = page.locator("div.flex-col.h-full", has=box).last
        for name in ("server.js", "vite.config.js"):
            await results.get_by_text(name, exact=True).wait_for()
        assert not await results.get_by_text("App.jsx", exact=True).count()
        await snap(page, "bolt-fullstack-4-search")

        # Download Code: a zip of the project's files, as bolt's file store holds them.
        await page.get_by_text("Export", exact=True).click()
        async with page.expect_download() as download:
            await page.get_by_text("Download Code", exact=True).click()
        zipped = Path(await (await download.value).path()).read_bytes()
        archive = zipfile.ZipFile(io.BytesIO(zipped))
        names = set(archive.namelist())
        assert {"server.js", "src/App.jsx", "vite.config.js", "package.json"} <= names
        assert not any(name.startswith("node_modules/") for name in names)
        assert b"app.listen(8080" in archive.read("server.js")

        # The gateway restarts mid-session: bolt says so, reconnects, and nothing in the
        # container was lost: the API process still holds the note added before.
        await server.stop()
        await toast(page, r"cloudcontainer: .*Reconnecting")
        await snap(page, "bolt-fullstack-5-gateway-restarting")
        await server.start()
        await toast(page, "Connected to cloudcontainer again")
        await type_in_terminal(page, "echo back-$((40 + 2))")  # the same shell, re-attached
        await terminal_shows(page, "back-42")
        await page.get_by_text("Preview", exact=True).first.click()
        await page.locator("button:not([title]):has(.i-ph\\:arrow-clockwise)").click()
        frame = await preview(page, "Notes (3)", CHANGE_SECONDS)
        assert "Water the plants" in await frame.evaluate("document.body.innerText")
        await snap(page, "bolt-fullstack-6-after-restart")

        # A command that fails: bolt's own alert; "Ask Bolt" sends its output to the model.
        await send(page, "Now run the checks")
        await page.get_by_text("Command Failed (exit code: 1)").wait_for(
            timeout=CHANGE_SECONDS * 1000
        )
        await snap(page, "bolt-fullstack-7-failed-command")
        await page.get_by_role("button", name="Ask Bolt").click()
        await page.get_by_text(
            "expected at least 3 seed notes in server.js, found 2"
        ).first.wait_for()
        await page.get_by_text("The check wants the API to start with").wait_for()


IMPORTED_APP = {
    "package.json": '{\n  "name": "imported-app",\n  "private": true,\n'
    '  "scripts": { "dev": "node server.js" }\n}\n',
    "server.js": "import http from 'node:http';\n\n"
    "http.createServer((req, res) => {\n"
    "  res.setHeader('content-type', 'text/html');\n"
    "  res.end('<h1>Imported from git</h1>');\n"
    "}).listen(3000);\n",
    "README.md": "# An app that lives in git\n",
}


@pytest.mark.parametrize("runtime_name", ["local", "docker"])
async def test_bolt_imports_a_git_repository_into_the_container(
    sandbox_api_factory: Any, bolt_tree: Path, own_page: Page, request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:  # fmt: skip
    """bolt's "clone a repo" route with a bare repository served over HTTPS on loopback:
    isomorphic-git in the page clones through bolt's proxy into the container's files (the
    client's fs), bolt imports them as a chat, runs its setup and start commands, and the
    preview shows the app. (bolt's setup, `npx update-browserslist-db@latest && npm install`,
    fails on a project without a lockfile, on WebContainer too; its start still runs.)"""
    repos = tmp_path / "repos"
    repos.mkdir()
    bare_repository(repos, "app.git", IMPORTED_APP)
    with git_https_server(repos) as git:
        trust = {"NODE_EXTRA_CA_CERTS": str(git.ca_file)}  # bolt's proxy fetches over https
        async with bolt_on_a_gateway(sandbox_api_factory, bolt_tree, request, trust) as bolt:
            page = own_page
            await page.set_viewport_size({"width": 1400, "height": 900})
            await choose_scripted_model(page.context, bolt.url)  # as a person set up bolt
            await import_from_git(page, f"{bolt.url}/git?url={git.url}/app.git")
            await page.get_by_text("Code", exact=True).first.click()
            for name in ("server.js", "README.md", "package.json"):
                await page.get_by_text(name, exact=True).first.wait_for()
            await snap(page, "bolt-git-import")
