"""The watch stream, as PARITY.md's watch rules written as checks against the real agent.

Writers here are the agent's own fs ops and, standing in for "any process", this test
process writing straight into the workspace folder the agent watches.
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.errors import AgentOpError
from tests.agent.conftest import RunningAgent, until

BOLT_EXCLUDE = ["**/node_modules", ".git", "**/package-lock.json"]


class Feed:
    """Every fs.watch message of one subscription, flattened to events in arrival order."""

    def __init__(self, client: AgentClient, sub: str) -> None:
        self.messages: list[dict[str, Any]] = []
        client.on_event(self._on_event)
        self.sub = sub

    def _on_event(self, name: str, data: dict[str, Any]) -> None:
        if name == "fs.watch" and data["sub"] == self.sub:
            self.messages.append(data)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [event for message in self.messages for event in message["events"]]

    def pairs(self) -> list[tuple[str, str]]:
        return [(event["type"], event["path"]) for event in self.events]

    async def wait_for(self, kind: str, path: Path) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            matches = [e for e in self.events if e["type"] == kind and e["path"] == str(path)]
            return matches[-1] if matches else None

        return await until(found, f"{kind} {path} in {self.pairs()}")

    def clear(self) -> None:
        self.messages.clear()


async def subscribe(
    client: AgentClient, sub: str = "w1", **options: Any
) -> tuple[Feed, dict[str, Any]]:
    feed = Feed(client, sub)
    options.setdefault("include", ["**"])
    options.setdefault("exclude", BOLT_EXCLUDE)
    answer = await client.call("watch.subscribe", id=sub, **options)
    return feed, answer


def content(event: dict[str, Any]) -> bytes:
    return base64.b64decode(event["buffer"])


async def test_writes_from_any_writer_arrive_with_their_bytes(
    agent: RunningAgent, client: AgentClient
) -> None:
    feed, _ = await subscribe(client)
    await client.call("fs.write", path="/a.txt", data=base64.b64encode(b"one").decode())
    added = await feed.wait_for("add_file", agent.workspace / "a.txt")
    assert content(added) == b"one"
    assert added["ino"] == (agent.workspace / "a.txt").stat().st_ino
    assert added["mtime"] == pytest.approx((agent.workspace / "a.txt").stat().st_mtime * 1000)
    (agent.workspace / "a.txt").write_bytes(b"two")  # a process, not the API
    changed = await feed.wait_for("change", agent.workspace / "a.txt")
    assert content(changed) == b"two"
    (agent.workspace / "a.txt").unlink()
    removed = await feed.wait_for("remove_file", agent.workspace / "a.txt")
    assert "buffer" not in removed
    # The agent's temporary write files are never reported.
    assert not [p for _, p in feed.pairs() if ".cc-write-" in p]


async def test_a_new_folder_comes_before_the_files_inside_it(
    agent: RunningAgent, client: AgentClient
) -> None:
    feed, _ = await subscribe(client)
    deep = agent.workspace / "src" / "components" / "ui"
    deep.mkdir(parents=True)
    for name in ("Button.tsx", "Card.tsx"):
        (deep / name).write_text(f"export const {name[:-4]} = 1;\n")
    await feed.wait_for("add_file", deep / "Card.tsx")
    await feed.wait_for("add_file", deep / "Button.tsx")
    order = [path for _, path in feed.pairs()]
    for child, parent in (
        (deep / "Button.tsx", deep),
        (deep, deep.parent),
        (deep.parent, agent.workspace / "src"),
    ):
        assert order.index(str(parent)) < order.index(str(child)), feed.pairs()
    kinds = dict((path, kind) for kind, path in feed.pairs())
    assert kinds[str(deep)] == "add_dir"


async def test_deleting_a_tree_removes_each_entry_children_first(
    agent: RunningAgent, client: AgentClient
) -> None:
    tree = agent.workspace / "lib"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "c.js").write_text("c")
    (tree / "a" / "d.js").write_text("d")
    (tree / "e.js").write_text("e")
    feed, _ = await subscribe(client)
    await client.call("fs.remove", path="/lib", recursive=True)
    await feed.wait_for("remove_dir", tree)
    removed = [(kind, path) for kind, path in feed.pairs() if kind.startswith("remove")]
    assert sorted(removed) == sorted(
        [
            ("remove_file", str(tree / "a" / "b" / "c.js")),
            ("remove_dir", str(tree / "a" / "b")),
            ("remove_file", str(tree / "a" / "d.js")),
            ("remove_dir", str(tree / "a")),
            ("remove_file", str(tree / "e.js")),
            ("remove_dir", str(tree)),
        ]
    )
    position = {path: index for index, (_, path) in enumerate(removed)}
    for _, path in removed:
        parent = str(Path(path).parent)
        if parent in position:
            assert position[path] < position[parent], removed


async def test_a_rename_is_a_removal_plus_an_add(agent: RunningAgent, client: AgentClient) -> None:
    (agent.workspace / "old").mkdir()
    (agent.workspace / "old" / "x.ts").write_text("x")
    (agent.workspace / "f.txt").write_text("f")
    feed, _ = await subscribe(client)
    await client.call("fs.rename", source="/f.txt", target="/g.txt")
    os.rename(agent.workspace / "old", agent.workspace / "new")
    added = await feed.wait_for("add_file", agent.workspace / "new" / "x.ts")
    assert content(added) == b"x"
    assert content(await feed.wait_for("add_file", agent.workspace / "g.txt")) == b"f"
    await feed.wait_for("remove_file", agent.workspace / "f.txt")
    await feed.wait_for("remove_file", agent.workspace / "old" / "x.ts")
    await feed.wait_for("remove_dir", agent.workspace / "old")
    await feed.wait_for("add_dir", agent.workspace / "new")
    # The moved folder is watched under its new name.
    (agent.workspace / "new" / "y.ts").write_text("y")
    await feed.wait_for("add_file", agent.workspace / "new" / "y.ts")


async def test_excluded_paths_never_leave_the_sandbox_and_are_not_watched(
    agent: RunningAgent, client: AgentClient
) -> None:
    feed, _ = await subscribe(client)
    modules = agent.workspace / "node_modules" / "react"
    modules.mkdir(parents=True)
    (modules / "index.js").write_text("module.exports = {};")
    (agent.workspace / "package-lock.json").write_text("{}")
    (agent.workspace / ".git").mkdir()
    (agent.workspace / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (agent.workspace / "src").mkdir()
    (agent.workspace / "src" / "node_modules").mkdir()  # `**/` reaches any depth
    (agent.workspace / "src" / "node_modules" / "x.js").write_text("x")
    (agent.workspace / "marker.txt").write_text("after the excluded writes")
    await feed.wait_for("add_file", agent.workspace / "marker.txt")
    paths = [path for _, path in feed.pairs()]
    assert not [p for p in paths if "node_modules" in p or ".git" in p or "lock" in p], paths
    stats = (await client.call("ping"))["watch"]
    assert stats["watched_folders"] == 2  # the workspace and src; no node_modules, no .git


async def test_rapid_writes_may_coalesce_but_the_last_bytes_arrive(
    agent: RunningAgent, client: AgentClient
) -> None:
    feed, _ = await subscribe(client)
    target = agent.workspace / "hot.txt"
    for index in range(300):
        target.write_text(f"version {index}")
    final = b"version 299"

    def last_bytes() -> bool:
        events = [e for e in feed.events if e["path"] == str(target) and "buffer" in e]
        return bool(events) and content(events[-1]) == final

    await until(last_bytes, f"the final bytes of {target}")
    assert feed.events[0]["type"] == "add_file"
    assert len(feed.events) < 300  # coalesced, not one event per write


async def test_content_can_be_left_out_and_includes_select_paths(
    agent: RunningAgent, client: AgentClient
) -> None:
    feed, _ = await subscribe(client, include=["src/**"], content=False)
    (agent.workspace / "src").mkdir()
    (agent.workspace / "src" / "in.ts").write_text("in")
    (agent.workspace / "out.ts").write_text("out")
    (agent.workspace / "src" / "last.ts").write_text("last")
    event = await feed.wait_for("add_file", agent.workspace / "src" / "last.ts")
    assert "buffer" not in event
    assert str(agent.workspace / "out.ts") not in [p for _, p in feed.pairs()]
    assert str(agent.workspace / "src" / "in.ts") in [p for _, p in feed.pairs()]


async def test_initial_state_is_reported_parents_first_when_asked(
    agent: RunningAgent, client: AgentClient
) -> None:
    (agent.workspace / "src").mkdir()
    (agent.workspace / "src" / "main.ts").write_text("main")
    (agent.workspace / "node_modules").mkdir()
    feed, _ = await subscribe(client, initial=True)
    await until(lambda: feed.events, "the initial state")
    assert feed.pairs() == [
        ("add_dir", str(agent.workspace / "src")),
        ("add_file", str(agent.workspace / "src" / "main.ts")),
    ]
    assert content(feed.events[1]) == b"main"


async def test_a_reconnecting_client_gets_what_it_missed_from_the_journal(
    agent: RunningAgent, client: AgentClient
) -> None:
    _, first = await subscribe(client)
    await client.aclose()  # offline: the agent keeps journaling for this filter
    (agent.workspace / "kept.txt").write_text("v1")
    (agent.workspace / "kept.txt").write_text("v2")
    (agent.workspace / "gone.txt").write_text("short-lived")
    (agent.workspace / "dir").mkdir()
    (agent.workspace / "dir" / "f").write_text("f")
    stats_client = await agent.connect()
    await until_flushed(stats_client)
    (agent.workspace / "gone.txt").unlink()
    await until_flushed(stats_client)

    second = await agent.connect()
    feed, answer = await subscribe(second, since=first["cursor"])
    assert answer["resync"] is False
    assert answer["cursor"] != first["cursor"]
    pairs = feed.pairs()
    assert ("add_file", str(agent.workspace / "kept.txt")) in pairs
    assert pairs.index(("add_dir", str(agent.workspace / "dir"))) < pairs.index(
        ("add_file", str(agent.workspace / "dir" / "f"))
    )
    kept = [e for e in feed.events if e["path"] == str(agent.workspace / "kept.txt")]
    assert len(kept) == 1
    assert content(kept[0]) == b"v2"
    assert ("remove_file", str(agent.workspace / "gone.txt")) in pairs

    # Nothing new since the latest cursor: an empty replay.
    feed2, again = await subscribe(second, sub="w2", since=answer["cursor"])
    assert again["resync"] is False
    assert feed2.events == []


async def until_flushed(client: AgentClient) -> None:
    """Wait until the agent has journaled every change made so far."""

    async def settled() -> bool:
        await client.call("watch.subscribe", id="probe", include=["**"], exclude=BOLT_EXCLUDE)
        return True

    await settled()


@pytest.mark.parametrize("cursor", ["not-a-cursor", "ffffffff:1", "0:0"])
async def test_a_cursor_the_journal_cannot_answer_gets_a_full_resync(
    agent: RunningAgent, client: AgentClient, cursor: str
) -> None:
    (agent.workspace / "a.txt").write_text("a")
    feed, answer = await subscribe(client, since=cursor)
    assert answer["resync"] is True
    assert feed.messages
    assert feed.messages[0].get("resync") is True
    assert feed.pairs() == [("add_file", str(agent.workspace / "a.txt"))]


async def test_a_new_filter_cannot_replay_what_it_did_not_track(
    agent: RunningAgent, client: AgentClient
) -> None:
    _, first = await subscribe(client)  # excludes node_modules
    (agent.workspace / "node_modules").mkdir()
    (agent.workspace / "node_modules" / "x.js").write_text("x")
    feed, answer = await subscribe(client, sub="all", exclude=[], since=first["cursor"])
    assert answer["resync"] is True
    assert ("add_file", str(agent.workspace / "node_modules" / "x.js")) in feed.pairs()


async def test_unsubscribe_stops_the_feed(agent: RunningAgent, client: AgentClient) -> None:
    feed, _ = await subscribe(client)
    assert (await client.call("watch.unsubscribe", id="w1")) == {"removed": True}
    (agent.workspace / "quiet.txt").write_text("q")
    other, _ = await subscribe(client, sub="w2")
    (agent.workspace / "loud.txt").write_text("l")
    await other.wait_for("add_file", agent.workspace / "loud.txt")
    assert feed.events == []


async def test_bad_subscriptions_are_refused(client: AgentClient) -> None:
    with pytest.raises(AgentOpError) as caught:
        await client.call("watch.subscribe", id="x", include="**")
    assert caught.value.errno == "EINVAL"


async def test_a_replaced_folder_is_rescanned(agent: RunningAgent, client: AgentClient) -> None:
    (agent.workspace / "app").mkdir()
    (agent.workspace / "app" / "one.js").write_text("1")
    feed, _ = await subscribe(client)
    shutil.rmtree(agent.workspace / "app")
    (agent.workspace / "app").mkdir()
    (agent.workspace / "app" / "two.js").write_text("2")
    await feed.wait_for("add_file", agent.workspace / "app" / "two.js")
    await feed.wait_for("remove_file", agent.workspace / "app" / "one.js")


async def test_a_fifo_appearing_under_a_content_watch_does_not_block_the_agent(
    agent: RunningAgent, client: AgentClient
) -> None:
    feed, _ = await subscribe(client, content=True)
    os.mkfifo(agent.workspace / "pipe")
    await client.call("fs.write", path="/after.txt", data=base64.b64encode(b"next").decode())
    added = await feed.wait_for("add_file", agent.workspace / "after.txt")
    assert content(added) == b"next"
