"""Project templates shipped in the package, laid into a new workspace by the agent.

`TEMPLATES` is the one list of them: the files are in `templates/<name>/`, and each entry says
how the project is installed and served (see docs/templates.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.files import write_file

__all__ = ["BLANK", "TEMPLATES", "TEMPLATE_NAMES", "Template", "apply_template"]

NPM_INSTALL = ("npm", "install", "--no-audit", "--no-fund")
NPM_DEV = ("npm", "run", "dev")


@dataclass(frozen=True, slots=True)
class Template:
    """A template's files are `templates/<name>/`; the rest says how to run them.

    `install` and `dev` are argv run in the workspace; `dev` serves HTTP on `port`, on every
    address, and the answer at each of `paths` contains `marker` (the page; for Vite apps also
    the app's component as the dev server compiles it).
    """

    name: str
    install: tuple[str, ...]
    dev: tuple[str, ...]
    port: int
    marker: str
    paths: tuple[str, ...] = ("/",)


def _npm(name: str, port: int, marker: str, *paths: str) -> Template:
    # The port is fixed in the template's `dev` script (tests/test_templates_serve.py checks it).
    return Template(name, NPM_INSTALL, NPM_DEV, port, marker, ("/", *paths))


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        _npm("node", 3000, "Hello from Node.js"),
        _npm("vite-react", 5173, "Vite + React", "/src/App.jsx"),
        _npm("vite-vue", 5173, "Vite + Vue", "/src/App.vue"),
        _npm("nextjs", 3000, "Hello from Next.js"),
        _npm("express", 3000, "Hello from Express"),
        Template(
            "python-flask",
            ("python3", "-m", "pip", "install", "-r", "requirements.txt"),
            ("python3", "app.py"),
            5000,
            "Hello from Flask",
        ),
        _npm("static", 5173, "Hello from a static site"),
    )
}


# An empty workspace, as WebContainer boots: what `@cloudcontainer/api`'s boot() asks for.
BLANK = "blank"
TEMPLATE_NAMES = (*TEMPLATES, BLANK)


def template_files(name: str) -> dict[str, bytes]:
    """Relative path → bytes of every file in the template."""
    root = resources.files("cloudcontainer.sandbox").joinpath("templates", name)
    files: dict[str, bytes] = {}
    stack = [(root, "")]
    while stack:
        directory, prefix = stack.pop()
        for item in directory.iterdir():
            path = f"{prefix}/{item.name}"
            if item.name == "__pycache__":  # python-flask's app.py, if the package is compiled
                continue
            if item.is_dir():
                stack.append((item, path))
            else:
                files[path] = item.read_bytes()
    return files


async def apply_template(agent: AgentClient, name: str) -> int:
    """Write the template's files into the workspace (dependencies are installed on request)."""
    files = {} if name == BLANK else template_files(name)
    for path, data in sorted(files.items()):
        await write_file(agent, path, data, mkdirs=True)
    return len(files)
