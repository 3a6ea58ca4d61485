"""The browser harness tells apart what a preview test must: a preview that loads inside bolt's
cross-origin-isolated parent from one that stays blank, an in-place update from a reload, and a
message the preview posts to its parent."""

from __future__ import annotations

import pytest
from playwright.async_api import Page

from tests.support.browser import (
    PREVIEW_HEADERS,
    PageServer,
    Response,
    frame_text,
    has_marker,
    is_isolated,
    messages,
    open_isolated,
    set_marker,
    wait_text,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="session")
def built_rootfs() -> None:
    """No sandbox here: the suite's root filesystem (minutes to build) is not needed."""


HELLO = "<!doctype html><title>preview</title><h1>Hello from the preview</h1>"

# The page asks for /version every 50 ms; when it changes, it either rewrites its text in place
# (as HMR does) or reloads (as a full-reload fallback does). Either way it then shows `v2`.
POLLING = """<!doctype html><title>preview</title><h1 id="v">v{version}</h1>
<script>
  let seen = "{version}";
  setInterval(async () => {{
    const now = await (await fetch("/version")).text();
    if (now === seen) return;
    seen = now;
    {on_change}
  }}, 50);
</script>
"""
IN_PLACE = 'document.getElementById("v").textContent = "v" + now;'
RELOAD = "location.reload();"


async def test_preview_with_corp_and_coep_renders_in_the_isolated_parent(page: Page) -> None:
    async with PageServer({"/": Response(HELLO, PREVIEW_HEADERS)}) as upstream:
        frame = await open_isolated(page, upstream.url())
        await wait_text(frame, "Hello from the preview", timeout=5)
        assert await is_isolated(page)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="neither"),
        pytest.param({"Cross-Origin-Resource-Policy": "cross-origin"}, id="corp-alone"),
    ],
)
async def test_preview_without_coep_stays_blank_in_the_isolated_parent(
    page: Page, headers: dict[str, str]
) -> None:
    async with PageServer({"/": Response(HELLO, headers)}) as upstream:
        frame = await open_isolated(page, upstream.url())
        assert await is_isolated(page)
        assert "Hello from the preview" not in await frame_text(frame)
        assert frame.url.startswith("chrome-error:")  # Chromium's error page stands in its place


@pytest.mark.parametrize(
    ("on_change", "kept"),
    [pytest.param(IN_PLACE, True, id="in-place"), pytest.param(RELOAD, False, id="reload")],
)
async def test_marker_survives_an_in_place_update_and_not_a_reload(
    page: Page, on_change: str, kept: bool
) -> None:
    version = 1

    def render(_query: str) -> Response:
        return Response(POLLING.format(version=version, on_change=on_change), PREVIEW_HEADERS)

    routes = {"/": render, "/version": lambda _q: Response(str(version), PREVIEW_HEADERS)}
    async with PageServer(routes) as upstream:
        frame = await open_isolated(page, upstream.url())
        await wait_text(frame, "v1", timeout=5)
        marker = await set_marker(frame)
        version = 2
        await wait_text(frame, "v2", timeout=5)
        assert await has_marker(frame, marker) is kept


async def test_post_message_from_the_preview_reaches_the_parent(page: Page) -> None:
    script = '<script>parent.postMessage({type: "hello", n: 1}, "*")</script>'
    async with PageServer({"/": Response(HELLO + script, PREVIEW_HEADERS)}) as upstream:
        frame = await open_isolated(page, upstream.url())
        await wait_text(frame, "Hello from the preview", timeout=5)
        await page.wait_for_function("() => window.__ccMessages.length > 0", timeout=5000)
        assert await messages(page) == [
            {"origin": upstream.origin, "data": {"type": "hello", "n": 1}}
        ]
