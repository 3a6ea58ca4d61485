"""Preview tests in a real browser: Debian's headless Chromium driven by Python playwright.

bolt.diy shows a preview in an `<iframe>` of a cross-origin-isolated page (COOP `same-origin`,
COEP `require-corp`), and what loads there is not what loads in a plain tab (PARITY.md, "Ports
and previews"). `IsolatedHost` serves such a parent around one URL, as bolt does; `open_isolated`
opens it in a page and hands back the preview's frame.

    frame = await open_isolated(page, url)
    await wait_text(frame, "Hello", timeout=10)
    marker = await set_marker(frame)
    ...  # edit a file: HMR updates in place
    assert await has_marker(frame, marker)  # a reload would have cleared it

Tests that also use a sandbox app (function-scoped fixtures on the function's event loop) take
`own_page` instead of `page`: the same page, from a Chromium launched on the test's own loop.

`playwright install` is never run: the browser is the system's `chromium` (installed by
`scripts/install-system-deps.sh test`). A failing test leaves a screenshot of its page in
`test-artifacts/` at the repository root, and `snap(page, name)` saves one on purpose.
"""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import AsyncIterator, Callable, Generator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Frame, Page, async_playwright

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

# Root in a container: no user namespaces for Chromium's sandbox, and a small /dev/shm.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"]

# What bolt.diy's workbench/Preview.tsx puts on its preview iframe.
PREVIEW_SANDBOX = (
    "allow-scripts allow-forms allow-popups allow-modals "
    "allow-storage-access-by-user-activation allow-same-origin"
)
# bolt.diy's app/entry.server.tsx sends these on every page.
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
}
# What a preview must answer with to load inside that parent (PREVIEWS.md B1).
PREVIEW_HEADERS = {
    "Cross-Origin-Resource-Policy": "cross-origin",
    "Cross-Origin-Embedder-Policy": "credentialless",
}

_REPORT = pytest.StashKey[pytest.TestReport]()

# -- tiny HTTP servers ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Response:
    """One answer of a `PageServer`: an HTML body unless `content_type` says otherwise."""

    body: str
    headers: Mapping[str, str] = field(default_factory=dict)
    status: int = 200
    content_type: str = "text/html; charset=utf-8"


Route = Response | Callable[[str], Response]  # a callable gets the query string


class PageServer:
    """An HTTP/1.1 server on 127.0.0.1 (a free port) answering GETs from a path → route table.

    One request per connection and `Connection: close`: browsers cope, and closing the listener
    leaves nothing behind. A path not in the table is a 404.
    """

    def __init__(self, routes: Mapping[str, Route]) -> None:
        self.routes = dict(routes)
        self._server: asyncio.Server | None = None

    @property
    def origin(self) -> str:
        assert self._server is not None, "not started"
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def url(self, path: str = "/") -> str:
        return self.origin + path

    async def start(self) -> PageServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    def close(self) -> None:
        """Stop listening; synchronous so that a page's close event can call it."""
        if self._server is not None:
            self._server.close()

    async def __aenter__(self) -> PageServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            target = head.split(b" ", 2)[1].decode("latin-1")
            writer.write(_render(self._answer(target)))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, IndexError):
            pass  # a client that went away, or a preconnect that never sent a request
        finally:
            writer.close()

    def _answer(self, target: str) -> Response:
        path, _, query = target.partition("?")
        route = self.routes.get(path)
        if route is None:
            return Response("not found", status=404, content_type="text/plain")
        return route(query) if callable(route) else route


def _render(response: Response) -> bytes:
    body = response.body.encode()
    lines = [
        f"HTTP/1.1 {response.status} X",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
        *(f"{name}: {value}" for name, value in response.headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# -- the cross-origin-isolated parent -----------------------------------------------------------

_PARENT = """<!doctype html>
<meta charset="utf-8"><title>isolated parent</title>
<script>
  window.__ccMessages = [];
  addEventListener("message", (event) => {{
    window.__ccMessages.push({{ origin: event.origin, data: event.data }});
  }});
</script>
<iframe id="preview" title="preview" src="{src}" sandbox="{sandbox}"
  allow="cross-origin-isolated" style="border: none; width: 100%; height: 90vh"></iframe>
"""


class IsolatedHost(PageServer):
    """The parent page bolt.diy would be, around one preview URL.

    It is served with bolt's COOP/COEP headers, holds one iframe with bolt's `sandbox` and
    `allow="cross-origin-isolated"`, and records every `message` event it receives in
    `window.__ccMessages` (`{origin, data}` each; read it with `messages(page)`).
    """

    def __init__(self, preview_url: str) -> None:
        page = _PARENT.format(src=html.escape(preview_url), sandbox=PREVIEW_SANDBOX)
        super().__init__({"/": Response(page, ISOLATION_HEADERS)})


# -- helpers a preview test calls ---------------------------------------------------------------


async def open_isolated(page: Page, url: str) -> Frame:
    """Open `url` in an `IsolatedHost` in `page` and return the preview's frame.

    Returns after the parent's `load`, which waits for the iframe's own load (or its error
    page: a preview the browser refuses is still a frame, a blank one). The host lives as long
    as the page.
    """
    host = await IsolatedHost(url).start()
    page.once("close", lambda _: host.close())
    await page.goto(host.url("/"))
    frame = await (await page.locator("iframe#preview").element_handle()).content_frame()
    assert frame is not None, "the preview iframe has no frame"
    return frame


async def wait_text(frame: Frame, text: str, timeout: float = 10) -> None:
    """Wait up to `timeout` seconds for `text` to be visible in `frame`, across reloads."""
    await frame.get_by_text(text).first.wait_for(state="visible", timeout=timeout * 1000)


async def frame_text(frame: Frame) -> str:
    """The visible text of `frame` ('' for a blank or refused one)."""
    return str(await frame.evaluate("() => document.body ? document.body.innerText : ''"))


async def set_marker(frame: Frame) -> float:
    """Mark the document in `frame`; an in-place update keeps the mark, a reload drops it."""
    return float(await frame.evaluate("() => (window.__ccMarker = Math.random())"))


async def has_marker(frame: Frame, marker: float) -> bool:
    """Whether `frame` still shows the document `set_marker` marked with `marker`."""
    return bool(await frame.evaluate("(m) => window.__ccMarker === m", marker))


async def is_isolated(page: Page) -> bool:
    """`crossOriginIsolated` of the page (the parent): true only with COOP and COEP honoured."""
    return bool(await page.evaluate("() => crossOriginIsolated"))


async def messages(page: Page) -> list[dict[str, Any]]:
    """Every `{origin, data}` the parent received by postMessage, oldest first."""
    return list(await page.evaluate("() => window.__ccMessages"))


async def snap(page: Page, name: str) -> Path:
    """Save a full-page screenshot as `test-artifacts/<name>.png` and return its path."""
    path = ARTIFACTS / f"{_safe(name)}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(path), full_page=True)
    return path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:150] or "page"


# -- fixtures -----------------------------------------------------------------------------------
# The browser is launched once per session, so it lives on the session's event loop: tests that
# use it run there too (`pytestmark = pytest.mark.asyncio(loop_scope="session")`).


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep the call's report on the item: the `page` fixture snaps a page whose test failed."""
    report: pytest.TestReport = yield
    if report.when == "call":
        item.stash[_REPORT] = report
    return report


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium, the system's, launched once."""
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest_asyncio.fixture(loop_scope="session")
async def page(browser: Browser, request: pytest.FixtureRequest) -> AsyncIterator[Page]:
    """A page in a fresh context (no cookies or storage from other tests)."""
    async with _tab(browser, request) as tab:
        yield tab


@pytest_asyncio.fixture
async def own_page(request: pytest.FixtureRequest) -> AsyncIterator[Page]:
    """`page` with a Chromium of its own, on the test's event loop: for tests whose other
    fixtures (a sandbox app, its event bus) live on the function's loop, not the session's.
    Launching costs about a second."""
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            async with _tab(chromium, request) as tab:
                yield tab
        finally:
            await chromium.close()


@asynccontextmanager
async def _tab(browser: Browser, request: pytest.FixtureRequest) -> AsyncIterator[Page]:
    """A page in a fresh context, snapped when the test failed, with what every page of the
    context wrote to its console and the errors it threw (test-artifacts/<test>-console.log)."""
    context = await browser.new_context()
    console: list[str] = []
    context.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    context.on("weberror", lambda error: console.append(f"uncaught: {error.error}"))
    try:
        tab = await context.new_page()
        yield tab
        report = request.node.stash.get(_REPORT, None)
        if report is not None and report.failed:
            await snap(tab, request.node.nodeid)
            log = ARTIFACTS / f"{_safe(request.node.nodeid)}-console.log"
            log.write_text("\n".join(console) + "\n")
    finally:
        await context.close()
