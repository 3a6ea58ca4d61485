"""Project templates shipped in the package, laid into a new workspace by the agent."""

from __future__ import annotations

from importlib import resources

from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.files import write_file

__all__ = ["TEMPLATES", "apply_template"]

TEMPLATES = ("node", "vite-react", "vite-vue", "nextjs", "express")


def template_files(name: str) -> dict[str, bytes]:
    """Relative path → bytes of every file in the template."""
    root = resources.files("cloudcontainer.sandbox").joinpath("templates", name)
    files: dict[str, bytes] = {}
    stack = [(root, "")]
    while stack:
        directory, prefix = stack.pop()
        for item in directory.iterdir():
            path = f"{prefix}/{item.name}"
            if item.is_dir():
                stack.append((item, path))
            else:
                files[path] = item.read_bytes()
    return files


async def apply_template(agent: AgentClient, name: str) -> int:
    """Write the template's files into the workspace (dependencies are installed on request)."""
    files = template_files(name)
    for path, data in sorted(files.items()):
        await write_file(agent, path, data, mkdirs=True)
    return len(files)
