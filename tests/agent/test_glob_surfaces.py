"""One glob dialect everywhere: the same include/exclude lists select the same files in the
watch (initial state), the search (ripgrep), an archive download and a snapshot manifest."""

from __future__ import annotations

import io
import itertools
import tarfile
from pathlib import Path

import pytest

from cloudcontainer.agent.protocol import ARCHIVE_DATA, ARCHIVE_END
from cloudcontainer.agentlink.client import AgentClient
from tests.agent.conftest import RunningAgent, listen

FILES = [
    "src/a.ts", "src/lib/b.ts", "src/App.tsx", "src/c.css", "src/node_modules/x.js",
    "node_modules/pkg/index.js", "dist/out.js", "dist/assets/x.js", "lib/src/b.ts",
    "app/[slug]/page.tsx", "logs/npm.log", "top.log", "package-lock.json", "README",
]  # fmt: skip
SOURCES = [f for f in FILES if "node_modules" not in f and f != "package-lock.json"]
BOLT_WATCH_EXCLUDE = ["**/node_modules", ".git", "**/package-lock.json"]
BOLT_SEARCH_EXCLUDE = ["node_modules", "package-lock.json", ".git", "dist", "*.lock"]
ROOT = "<root>"  # stands for the workspace spelt out as an absolute path

# (include, exclude, the files selected); an include applies to the watch and the search.
CASES: list[tuple[list[str], list[str], set[str]]] = [
    ([], BOLT_WATCH_EXCLUDE, set(SOURCES)),
    ([], ["node_modules", "dist/**", "*.log"],
     {"src/a.ts", "src/lib/b.ts", "src/App.tsx", "src/c.css", "lib/src/b.ts",
      "app/[slug]/page.tsx", "package-lock.json", "README"}),
    ([], ["/src/lib", "app/\\[slug\\]", "**/node_modules/**", f"{ROOT}/dist"],
     {"src/a.ts", "src/App.tsx", "src/c.css", "lib/src/b.ts", "logs/npm.log", "top.log",
      "package-lock.json", "README"}),
    ([], ["src/*.ts", "node_modules/", "src/**/*.js", "{logs,dist}", "[A-Z]*"],
     {"src/lib/b.ts", "src/c.css", "lib/src/b.ts", "app/[slug]/page.tsx", "top.log",
      "package-lock.json"}),
    (["src"], ["**/node_modules"],  # a bare name: any folder named src
     {"src/a.ts", "src/lib/b.ts", "src/App.tsx", "src/c.css", "lib/src/b.ts"}),
    (["/src"], ["**/node_modules"], {"src/a.ts", "src/lib/b.ts", "src/App.tsx", "src/c.css"}),
    (["**/*.{ts,tsx}"], [],
     {"src/a.ts", "src/lib/b.ts", "src/App.tsx", "lib/src/b.ts", "app/[slug]/page.tsx"}),
    (["**/*.*"], BOLT_SEARCH_EXCLUDE,
     {"src/a.ts", "src/lib/b.ts", "src/App.tsx", "src/c.css", "lib/src/b.ts",
      "app/[slug]/page.tsx", "logs/npm.log", "top.log"}),
    ([f"{ROOT}/**", "a/**/b"], ["lib", "*.log", "**/node_modules"],
     {"src/a.ts", "src/App.tsx", "src/c.css", "dist/out.js", "dist/assets/x.js",
      "app/[slug]/page.tsx", "package-lock.json", "README"}),
]  # fmt: skip

_ids = itertools.count()


def relative(agent: RunningAgent, path: str) -> str:
    return str(Path(path).relative_to(agent.workspace))


async def watched(
    agent: RunningAgent, client: AgentClient, include: list[str], exclude: list[str]
) -> set[str]:
    sub, found = f"w{next(_ids)}", set()

    def on_event(name: str, data: dict[str, object]) -> None:
        if name == "fs.watch" and data["sub"] == sub:
            events = data["events"]
            assert isinstance(events, list)
            found.update(relative(agent, e["path"]) for e in events if e["type"] == "add_file")

    client.on_event(on_event)
    # The initial state arrives before the answer (docs/agent-protocol.md).
    await client.call("watch.subscribe", id=sub, include=include or ["**"], exclude=exclude,
                      content=False, initial=True)  # fmt: skip
    await client.call("watch.unsubscribe", id=sub)
    return found


async def searched(
    agent: RunningAgent, client: AgentClient, include: list[str], exclude: list[str],
    path: str = "/",
) -> set[str]:  # fmt: skip
    search_id, found = f"s{next(_ids)}", set()

    def on_event(name: str, data: dict[str, object]) -> None:
        if name == "search.file" and data["search_id"] == search_id:
            found.add(relative(agent, str(data["path"])))

    client.on_event(on_event)
    await client.call("search.text", search_id=search_id, query="needle", include=include,
                      exclude=exclude, gitignore=False, path=path)  # fmt: skip
    return found


async def archived(client: AgentClient, exclude: list[str]) -> set[str]:
    opened = await client.call("archive.create", path="/", format="tar.gz", exclude=exclude)
    stream = listen(client, ARCHIVE_DATA, opened["stream_id"], eof_kind=ARCHIVE_END)
    data = await stream.wait_eof()  # far below the credit window: no acknowledgement needed
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        return {member.name for member in archive.getmembers() if member.isfile()}


async def snapshotted(client: AgentClient, exclude: list[str]) -> set[str]:
    manifest = await client.call("fs.manifest", exclude=exclude)
    return {e["path"].lstrip("/") for e in manifest["entries"] if e["type"] == "file"}


@pytest.fixture
def agent(agent: RunningAgent) -> RunningAgent:
    """The agent, its workspace holding FILES (each says "needle")."""
    for name in FILES:
        (agent.workspace / name).parent.mkdir(parents=True, exist_ok=True)
        (agent.workspace / name).write_text("needle\n")
    return agent


async def test_every_feature_selects_the_same_files(
    agent: RunningAgent, client: AgentClient
) -> None:
    disagreements = []
    for include, exclude, expected in CASES:
        include = [p.replace(ROOT, str(agent.workspace)) for p in include]
        exclude = [p.replace(ROOT, str(agent.workspace)) for p in exclude]
        selected = {
            "watch": await watched(agent, client, include, exclude),
            "search": await searched(agent, client, include, exclude),
        }
        if not include:
            selected["archive"] = await archived(client, exclude)
            selected["snapshot"] = await snapshotted(client, exclude)
        for feature, files in selected.items():
            if files != expected:
                disagreements.append(
                    f"{feature} {include} {exclude}: "
                    f"extra {sorted(files - expected)}, missing {sorted(expected - files)}"
                )
    assert not disagreements, "\n".join(disagreements)


async def test_search_globs_start_at_the_workspace_whatever_folder_is_searched(
    agent: RunningAgent, client: AgentClient
) -> None:
    found = await searched(agent, client, ["src/**/*.ts"], ["/src/lib"], path="/src")
    assert found == {"src/a.ts"}
