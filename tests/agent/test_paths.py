"""The one path normaliser (agent/paths.py), as properties: whatever a client writes, the
agent, the file service and the locks agree on which workspace entry it names."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloudcontainer.agent.fs import Files
from cloudcontainer.agent.paths import covers, unrooted, workdir_rooted
from cloudcontainer.files.service import workdir_path
from cloudcontainer.runtimes.base import WORKSPACE

SEGMENTS = st.sampled_from(["a", "b", "src", "..", ".", "", "home", "project", "projects", "é"])
# Relative or absolute, with the workspace spelt out or not, with every odd segment a client
# may send; and plain text for everything else.
PATHS = st.one_of(
    st.builds(
        lambda prefix, parts: prefix + "/".join(parts),
        st.sampled_from(["", "/", "//", "./", WORKSPACE, WORKSPACE + "/", "/home/projects"]),
        st.lists(SEGMENTS, max_size=8),
    ),
    st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))),
)


@given(PATHS)
def test_the_workdir_rooted_form_is_canonical(path: str) -> None:
    rooted = workdir_rooted(path, WORKSPACE)
    if unrooted(rooted, WORKSPACE) == rooted:  # see the test below for the one exception
        assert workdir_rooted(rooted, WORKSPACE) == rooted  # idempotent
    assert rooted.startswith("/")
    if rooted != "/":  # no trailing `/`, no empty, `.` or `..` segment
        assert not {"", ".", ".."} & set(rooted.split("/")[1:])


def test_a_folder_named_like_the_workspace_is_named_by_its_absolute_path() -> None:
    """WebContainer's rule (a path starting with the workspace is taken as it is) makes the
    rooted form `/home/project` ambiguous: fed back, it names the root. Clients reach the
    workspace's own `home/project` folder by its absolute path, as on WebContainer."""
    assert workdir_rooted(WORKSPACE + WORKSPACE, WORKSPACE) == WORKSPACE
    assert workdir_rooted(WORKSPACE, WORKSPACE) == "/"


@given(PATHS)
def test_a_path_never_escapes_the_workspace(path: str) -> None:
    absolute = Files(WORKSPACE).resolve(path)
    assert covers(WORKSPACE, absolute)
    assert posixpath.normpath(absolute) == absolute  # nothing left for the kernel to resolve


@given(PATHS)
def test_every_spelling_of_a_path_is_the_same_path(path: str) -> None:
    rooted = workdir_rooted(path, WORKSPACE)
    relative = rooted.lstrip("/")
    for spelling in (relative, "../.." + rooted, WORKSPACE + rooted, "./" + relative + "/"):
        assert workdir_rooted(spelling, WORKSPACE) == rooted, spelling


@given(PATHS)
def test_the_file_service_names_what_the_agent_opens(path: str) -> None:
    absolute = Files(WORKSPACE).resolve(path)
    assert workdir_path(path) == workdir_path(absolute) == (absolute[len(WORKSPACE) :] or "/")


@given(PATHS, PATHS)
def test_a_lock_covers_exactly_the_files_the_agent_opens_below_it(lock: str, path: str) -> None:
    files = Files(WORKSPACE)
    folder, target = files.resolve(lock), files.resolve(path)
    inside = target == folder or target.startswith(folder + "/")
    assert covers(workdir_path(lock), workdir_path(path)) is inside


@pytest.mark.parametrize(
    ("path", "rooted"),
    [
        ("src/App.tsx", "/src/App.tsx"),
        ("../../src/App.tsx", "/src/App.tsx"),
        ("/home/project/src//App.tsx/", "/src/App.tsx"),
        ("/home/project", "/"),
        ("/home/projects/x", "/home/projects/x"),  # not the workspace spelt out
        ("//a/./b/../c", "/a/c"),
        ("", "/"),
    ],
)
def test_examples(path: str, rooted: str) -> None:
    assert workdir_rooted(path, WORKSPACE) == rooted
