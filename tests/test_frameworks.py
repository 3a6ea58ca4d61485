"""Dev-server detection: each framework's command, port and environment, the package manager,
projects without a script or without a known server, the warnings about settings that defeat
the preview proxy, and the answers for the shipped templates."""

from __future__ import annotations

import json
from typing import Any, get_args

import pytest

from cloudcontainer.preview.frameworks import (
    DevServer,
    Framework,
    config_files,
    detect_dev_server,
    package_manager,
    proxy_warnings,
)
from cloudcontainer.sandbox.templates import TEMPLATES, template_files


@pytest.fixture(scope="session")
def built_rootfs() -> None:
    """No sandbox here: the suite's root filesystem (minutes to build) is not needed."""


def pkg(*deps: str, **scripts: str) -> dict[str, Any]:
    """A package.json with `deps` (as dependencies) and `scripts`."""
    return {"name": "app", "dependencies": dict.fromkeys(deps, "*"), "scripts": scripts}


VITE_FLAGS = ["--host", "0.0.0.0", "--port", "5173", "--strictPort"]
CRA_ENV = {"HOST": "0.0.0.0", "PORT": "3000", "BROWSER": "none"}

CASES = [
    # -- Vite, whatever the plugin ----------------------------------------------------------
    pytest.param(
        pkg("vite", "@vitejs/plugin-react", "react", dev="vite"), {"package-lock.json"}, None,
        DevServer("vite", ["npm", "run", "dev", "--", *VITE_FLAGS], 5173, {}, "npm"),
        id="vite-react-npm",
    ),
    pytest.param(
        pkg("vite", "@vitejs/plugin-vue", dev="vite"), {"pnpm-lock.yaml"}, None,
        DevServer("vite", ["pnpm", "run", "dev", *VITE_FLAGS], 5173, {}, "pnpm"),
        id="vite-vue-pnpm",
    ),
    pytest.param(
        pkg("vite", "@sveltejs/vite-plugin-svelte", dev="vite"), {"yarn.lock"}, 4000,
        DevServer(
            "vite", ["yarn", "run", "dev", "--host", "0.0.0.0", "--port", "4000", "--strictPort"],
            4000, {}, "yarn",
        ),
        id="vite-svelte-yarn-port",
    ),
    pytest.param(
        pkg("vite", dev="vite --host"), {"bun.lockb"}, None,
        DevServer("vite", ["bun", "run", "dev", "--port", "5173", "--strictPort"], 5173, {}, "bun"),
        id="vite-script-has-host",
    ),
    pytest.param(
        pkg("vite", dev="vite --port 3001"), set(), None,
        DevServer("vite", ["npm", "run", "dev", "--", "--host", "0.0.0.0"], 3001, {}, "npm"),
        id="vite-script-fixes-port",
    ),
    pytest.param(
        pkg("vite", dev="vite --host 0.0.0.0 --port=5174 --strictPort"), set(), 8080,
        DevServer("vite", ["npm", "run", "dev"], 5174, {}, "npm"),
        id="vite-script-fixes-everything",
    ),
    # -- Next.js ----------------------------------------------------------------------------
    pytest.param(
        pkg("next", "react", "express", dev="next dev", start="next start"), set(), None,
        DevServer("nextjs", ["npm", "run", "dev", "--", "-H", "0.0.0.0", "-p", "3000"], 3000, {},
                  "npm"),
        id="next",
    ),
    pytest.param(
        pkg("next", dev="next dev --turbopack"), {"pnpm-lock.yaml"}, 3100,
        DevServer("nextjs", ["pnpm", "run", "dev", "-H", "0.0.0.0", "-p", "3100"], 3100, {},
                  "pnpm"),
        id="next-pnpm-port",
    ),
    pytest.param(
        pkg("next", dev="next dev --hostname 0.0.0.0 -p 3005"), set(), None,
        DevServer("nextjs", ["npm", "run", "dev"], 3005, {}, "npm"),
        id="next-script-fixes-everything",
    ),
    # -- Create React App -------------------------------------------------------------------
    pytest.param(
        pkg("react-scripts", "react", start="react-scripts start", build="react-scripts build"),
        {"package-lock.json"}, None,
        DevServer("create-react-app", ["npm", "run", "start"], 3000, CRA_ENV, "npm"),
        id="cra",
    ),
    # -- Astro, SvelteKit, Nuxt -------------------------------------------------------------
    pytest.param(
        pkg("astro", dev="astro dev"), set(), None,
        DevServer("astro", ["npm", "run", "dev", "--", "--host", "0.0.0.0", "--port", "4321"],
                  4321, {}, "npm"),
        id="astro",
    ),
    pytest.param(
        {"devDependencies": {"@sveltejs/kit": "*", "vite": "*"}, "scripts": {"dev": "vite dev"}},
        set(), None,
        DevServer("sveltekit", ["npm", "run", "dev", "--", *VITE_FLAGS], 5173, {}, "npm"),
        id="sveltekit",
    ),
    pytest.param(
        pkg("nuxt", "vue", dev="nuxt dev"), {"pnpm-lock.yaml"}, None,
        DevServer("nuxt", ["pnpm", "run", "dev", "--host", "0.0.0.0", "--port", "3000"], 3000,
                  {}, "pnpm"),
        id="nuxt",
    ),
    pytest.param(
        pkg("nuxt", dev="nuxt dev -p 4000"), set(), None,
        DevServer("nuxt", ["npm", "run", "dev", "--", "--host", "0.0.0.0"], 4000, {}, "npm"),
        id="nuxt-script-fixes-port",
    ),
    # -- Node.js servers: they get PORT -----------------------------------------------------
    pytest.param(
        pkg("express", start="node server.js"), set(), None,
        DevServer("express", ["npm", "run", "start"], 3000, {"PORT": "3000"}, "npm"),
        id="express",
    ),
    pytest.param(
        pkg("fastify", dev="node --watch app.js", start="node app.js"), {"yarn.lock"}, 8080,
        DevServer("fastify", ["yarn", "run", "dev"], 8080, {"PORT": "8080"}, "yarn"),
        id="fastify-dev-before-start",
    ),
    pytest.param(
        pkg("express"), {"package.json", "server.js"}, None,
        DevServer("express", ["node", "server.js"], 3000, {"PORT": "3000"}, "npm"),
        id="express-no-script",
    ),
    pytest.param(
        {"name": "app", "main": "app.mjs"}, {"app.mjs", "index.js"}, None,
        DevServer("node", ["node", "app.mjs"], 3000, {"PORT": "3000"}, "npm"),
        id="node-main-field",
    ),
    pytest.param(
        pkg(start="node index.js"), {"package.json", "index.js"}, None,
        DevServer("node", ["npm", "run", "start"], 3000, {"PORT": "3000"}, "npm"),
        id="node-script",
    ),
    pytest.param(
        None, {"server.js"}, None,
        DevServer("node", ["node", "server.js"], 3000, {"PORT": "3000"}, None),
        id="server-js-alone",
    ),
    # -- static sites -----------------------------------------------------------------------
    pytest.param(
        None, {"index.html", "style.css"}, None,
        DevServer("static", ["python3", "-m", "http.server", "8000", "--bind", "0.0.0.0"], 8000),
        id="static",
    ),
    pytest.param(
        {"name": "site"}, {"package.json", "index.html"}, 9000,
        DevServer("static", ["python3", "-m", "http.server", "9000", "--bind", "0.0.0.0"], 9000),
        id="static-with-bare-package-json",
    ),
    # -- no dev script: the framework's own binary, through the package manager ---------------
    pytest.param(
        {"devDependencies": {"vite": "*"}}, set(), None,
        DevServer("vite", ["npx", "--no", "vite", *VITE_FLAGS], 5173, {}, "npm"),
        id="vite-no-script",
    ),
    pytest.param(
        pkg("next", build="next build"), {"pnpm-lock.yaml"}, None,
        DevServer("nextjs", ["pnpm", "exec", "next", "dev", "-H", "0.0.0.0", "-p", "3000"], 3000,
                  {}, "pnpm"),
        id="next-no-script",
    ),
    pytest.param(
        pkg("react-scripts"), {"bun.lock"}, None,
        DevServer("create-react-app", ["bunx", "react-scripts", "start"], 3000, CRA_ENV, "bun"),
        id="cra-no-script",
    ),
    pytest.param(
        pkg("astro"), {"yarn.lock"}, None,
        DevServer("astro", ["yarn", "astro", "dev", "--host", "0.0.0.0", "--port", "4321"], 4321,
                  {}, "yarn"),
        id="astro-no-script",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("package_json", "files", "port", "expected"), CASES)
def test_detects_the_dev_server(
    package_json: dict[str, Any] | None, files: set[str], port: int | None, expected: DevServer
) -> None:
    assert detect_dev_server(package_json, files, port) == expected


@pytest.mark.parametrize(
    ("package_json", "files"),
    [
        pytest.param(None, set(), id="empty"),
        pytest.param(None, {"README.md", "main.go"}, id="no-node-no-html"),
        pytest.param(None, {"app.py", "requirements.txt"}, id="python"),
        pytest.param({"name": "lib"}, {"package.json", "README.md"}, id="package-without-server"),
        pytest.param(pkg("express"), {"package.json"}, id="express-without-entry"),
        pytest.param({"scripts": ["dev"], "dependencies": "vite"}, set(), id="malformed"),
    ],
)
def test_unknown_project_is_none(package_json: dict[str, Any] | None, files: set[str]) -> None:
    assert detect_dev_server(package_json, files) is None


@pytest.mark.parametrize(
    ("package_json", "files", "expected"),
    [
        pytest.param({}, set(), "npm", id="default"),
        pytest.param({}, {"package-lock.json"}, "npm", id="npm-lock"),
        pytest.param({}, {"npm-shrinkwrap.json"}, "npm", id="npm-shrinkwrap"),
        pytest.param({}, {"pnpm-lock.yaml"}, "pnpm", id="pnpm-lock"),
        pytest.param({}, {"yarn.lock"}, "yarn", id="yarn-lock"),
        pytest.param({}, {"bun.lockb"}, "bun", id="bun-lockb"),
        pytest.param({}, {"bun.lock"}, "bun", id="bun-lock"),
        pytest.param({}, {"yarn.lock", "package-lock.json"}, "yarn", id="two-locks"),
        pytest.param({"packageManager": "pnpm@9.15.0"}, {"package-lock.json"}, "pnpm",
                     id="field-wins"),
        pytest.param({"packageManager": "yarn@4.5.1+sha512.abc"}, set(), "yarn", id="field-hash"),
        pytest.param({"packageManager": "deno@2"}, {"bun.lock"}, "bun", id="unknown-field"),
    ],
)  # fmt: skip
def test_package_manager(package_json: dict[str, Any], files: set[str], expected: str) -> None:
    assert package_manager(package_json, files) == expected


def test_a_framework_wins_over_the_servers_it_depends_on() -> None:
    found = detect_dev_server(pkg("nuxt", "vite", "express", dev="nuxt dev"), set())
    assert found is not None
    assert found.framework == "nuxt"


# -- settings that defeat the proxy ---------------------------------------------------------------

VITE_HMR = """
import { defineConfig } from 'vite';
export default defineConfig({
  server: {
    port: 3000,
    hmr: { clientPort: 443, overlay: false },
  },
});
"""
VITE_WS = "export default { server: { ws: { host: 'example.com', protocol: 'wss' } } }"
VITE_HARMLESS = """
export default {
  server: { port: 5173, hmr: { overlay: false } },
  // hmr: { clientPort: 443 },
  /* ws: { port: 24678 } */
}
"""
NUXT_HMR = "export default defineNuxtConfig({ vite: { server: { hmr: { port: 24678 } } } })"
CRA_ENV_FILE = "BROWSER=none\nWDS_SOCKET_HOST=example.com\nexport WDS_SOCKET_PORT=0\n"
NEXT_PREFIX = "module.exports = { assetPrefix: 'https://cdn.example.com' }"
NEXT_RELATIVE = "module.exports = { assetPrefix: '/static', basePath: '' }"


@pytest.mark.parametrize(
    ("text", "framework", "expected"),
    [
        pytest.param(VITE_HMR, "vite", ["server.hmr.clientPort"], id="vite-hmr-clientPort"),
        pytest.param(VITE_WS, "vite", ["server.ws.host", "server.ws.protocol"], id="vite-ws"),
        pytest.param(VITE_HMR, "sveltekit", ["server.hmr.clientPort"], id="sveltekit"),
        pytest.param(VITE_HMR, "astro", ["server.hmr.clientPort"], id="astro"),
        pytest.param(NUXT_HMR, "nuxt", ["server.hmr.port"], id="nuxt-vite-hmr"),
        pytest.param(VITE_HARMLESS, "vite", [], id="vite-harmless-and-comments"),
        pytest.param(CRA_ENV_FILE, "create-react-app", ["WDS_SOCKET_HOST", "WDS_SOCKET_PORT"],
                     id="cra-wds-socket"),
        pytest.param("BROWSER=none\nPORT=3000\n", "create-react-app", [], id="cra-harmless"),
        pytest.param(NEXT_PREFIX, "nextjs", ["https://cdn.example.com"], id="next-absolute"),
        pytest.param("const c = { assetPrefix: \"//cdn.example.com/x\" }", "nextjs",
                     ["//cdn.example.com/x"], id="next-protocol-relative"),
        pytest.param(NEXT_RELATIVE, "nextjs", [], id="next-relative"),
        pytest.param(VITE_HMR, "express", [], id="not-a-vite-app"),
    ],
)  # fmt: skip
def test_proxy_warnings(text: str, framework: Framework, expected: list[str]) -> None:
    warnings = proxy_warnings(text, framework)
    assert len(warnings) == len(expected), warnings
    for warning, named in zip(warnings, expected, strict=True):
        assert named in warning
        assert "\n" not in warning


def test_every_framework_with_warnings_names_its_config_files() -> None:
    samples = {"create-react-app": CRA_ENV_FILE, "nextjs": NEXT_PREFIX}
    for framework in get_args(Framework):
        if proxy_warnings(samples.get(framework, VITE_HMR), framework):
            assert config_files(framework), framework


# -- the shipped templates ------------------------------------------------------------------------

TEMPLATE_FRAMEWORKS: dict[str, Framework | None] = {
    "node": "node",
    "vite-react": "vite",
    "vite-vue": "vite",
    "nextjs": "nextjs",
    "express": "express",
    "static": "vite",  # served by Vite (docs/templates.md)
    "python-flask": None,  # not a Node.js project nor a bare index.html: the template says how
}


def test_every_template_has_an_expected_answer() -> None:
    assert set(TEMPLATE_FRAMEWORKS) == set(TEMPLATES)


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_detection_agrees_with_each_template(name: str) -> None:
    files = template_files(name)
    root = {path.split("/")[1] for path in files}
    package_json = json.loads(files["/package.json"]) if "/package.json" in files else None
    found = detect_dev_server(package_json, root)
    expected = TEMPLATE_FRAMEWORKS[name]
    if expected is None:
        assert found is None
        return
    template = TEMPLATES[name]
    assert found is not None
    assert (found.framework, found.package_manager) == (expected, "npm")
    assert tuple(found.command) == template.dev  # the scripts already listen on 0.0.0.0:port
    assert found.port == template.port
    for config in config_files(found.framework):
        if f"/{config}" in files:
            assert proxy_warnings(files[f"/{config}"].decode(), found.framework) == []
