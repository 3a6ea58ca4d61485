"""Every template installs and serves with the sandbox's own toolchain (issue 11): its install
command through `exec`, from the real registries, then its dev command in the background, then
its page, fetched with curl from inside the sandbox, shows the template's text."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Awaitable, Callable
from importlib import resources

import pytest

from cloudcontainer.images.toolchains import DEFAULT_NODE, NODE_MAJORS
from cloudcontainer.sandbox.templates import TEMPLATES, Template, template_files
from tests.conftest import Api
from tests.sandbox_helpers import new_container, run, sh

INSTALL_SECONDS = 600  # real registries: an upper bound, never a measured timing
SERVE_SECONDS = 90  # from the dev command's start to its page (Next compiles on first request)

# Every template on the default Node.js, and the npm ones on each other major too.
CASES = [pytest.param(template, None, id=name) for name, template in TEMPLATES.items()] + [
    pytest.param(template, major, id=f"{name}-node{major}")
    for name, template in TEMPLATES.items()
    if template.install[0] == "npm"
    for major in NODE_MAJORS
    if major != DEFAULT_NODE
]

# -- the metadata, without a sandbox ------------------------------------------------------------


def test_every_template_directory_is_listed_and_every_listed_one_exists() -> None:
    root = resources.files("cloudcontainer.sandbox").joinpath("templates")
    assert {item.name for item in root.iterdir() if item.is_dir()} == set(TEMPLATES)
    assert all(name == template.name for name, template in TEMPLATES.items())


@pytest.mark.parametrize("template", TEMPLATES.values(), ids=list(TEMPLATES))
def test_template_files_show_its_marker_and_fix_its_port(template: Template) -> None:
    files = {path: data.decode() for path, data in template_files(template.name).items()}
    for path in template.paths[1:]:  # served from the file of that name
        assert template.marker in files[path], path
    assert any(template.marker in text for text in files.values())
    if "/package.json" in files:
        package = json.loads(files["/package.json"])
        assert template.dev == ("npm", "run", "dev")
        script = package["scripts"]["dev"]
        listens_in_script = re.search(rf"(--port|-p) {template.port}\b", script)
        listens_in_code = any(f"const port = {template.port};" in t for t in files.values())
        assert listens_in_script or listens_in_code, script
    else:
        assert f"port={template.port}" in files["/app.py"]


# -- installed and served, in a sandbox -------------------------------------------------------


def serves(template: Template, path: str) -> str:
    """A script that waits until the dev server answers `path` with the marker."""
    url = shlex.quote(f"http://127.0.0.1:{template.port}{path}")
    marker = shlex.quote(template.marker)
    return (
        f"timeout {SERVE_SECONDS} sh -c "
        + shlex.quote(
            f"until curl -sS --max-time 10 -o /tmp/page {url} 2>/tmp/curl.err "
            f"&& grep -qF -- {marker} /tmp/page; do sleep 0.25; done"
        )
        + " || { echo '--- last answer:'; head -c 2000 /tmp/page; echo; cat /tmp/curl.err;"
        " echo '--- /tmp/dev.log:'; tail -c 6000 /tmp/dev.log; exit 1; }"
    )


@pytest.mark.timeout(INSTALL_SECONDS + 3 * SERVE_SECONDS + 120)
@pytest.mark.parametrize(("template", "node"), CASES)
async def test_template_installs_and_its_dev_command_serves_its_page(
    sandbox_api_factory: Callable[..., Awaitable[Api]], template: Template, node: str | None
) -> None:
    api = await sandbox_api_factory()
    user = await api.user()
    toolchain = {} if node is None else {"toolchain": {"node": node}}
    container = await new_container(api, user, template.name, **toolchain)
    version = await sh(api, user, container["id"], "node --version")
    assert version.stdout.startswith(f"v{node or DEFAULT_NODE}."), version

    installed = await run(api, user, container["id"], *template.install, timeout=INSTALL_SECONDS)
    assert installed.code == 0, installed

    # Its own session, output to a file: the server outlives this `exec`, whose group is killed.
    dev = " ".join(shlex.quote(arg) for arg in template.dev)
    started = await sh(api, user, container["id"], f"setsid {dev} >/tmp/dev.log 2>&1 </dev/null &")
    assert started.code == 0, started

    for path in template.paths:
        script = ("sh", "-c", serves(template, path))
        answered = await run(api, user, container["id"], *script, timeout=SERVE_SECONDS + 30)
        assert answered.code == 0, f"{template.name} never served {path}:\n{answered.stdout}"
