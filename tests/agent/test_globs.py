"""The agent's one glob dialect (agent/globs.py): bolt.diy's include/exclude lists and the
shapes users write. tests/agent/test_glob_surfaces.py checks that every feature agrees."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloudcontainer.agent.globs import MAX_GLOBS, GlobSet, PathFilter, glob_list, ripgrep_globs
from cloudcontainer.agent.protocol import AgentError

ROOT = "/home/project"


CASES = [
        ("/home/project/**", "/home/project/src/App.tsx", True),
        ("/home/project/**", "/home/other/x", False),
        ("**/node_modules", "/home/project/node_modules/react/index.js", True),
        ("**/node_modules", "/home/project/src/node_modules", True),
        ("**/node_modules", "/home/project/node_modules_old/x", False),
        (".git", "/home/project/.git/HEAD", True),
        (".git", "/home/project/.gitignore", False),
        ("**/package-lock.json", "/home/project/package-lock.json", True),
        ("**/package-lock.json", "/home/project/a/package-lock.json", True),
        ("*.log", "/home/project/logs/npm.log", True),
        ("*.log", "/home/project/logs/npm.log.txt", False),
        ("src/**", "/home/project/src/a/b.ts", True),
        ("src/**", "/home/project/lib/src/b.ts", False),
        ("src/**", "/home/project/src", False),  # what is inside, not the folder
        ("/src/**", "/home/project/src/a/b.ts", True),  # resolved as paths are
        ("/home/projects/x", "/home/project/home/projects/x", True),
        ("node_modules/**", "/home/project/a/node_modules/x", False),  # a `/`: anchored
        ("src/*.ts", "/home/project/src/a.ts", True),
        ("src/*.ts", "/home/project/src/a/b.ts", False),  # `*` stays in one name
        ("src/?.ts", "/home/project/src/a.ts", True),
        ("a/**/b", "/home/project/a/b", True),
        ("a/**/b", "/home/project/a/x/y/b/f", True),
        ("a/**/b", "/home/project/x/a/b", False),
        ("a**b", "/home/project/a/b", False),  # not a whole segment: `*`
        ("a**b", "/home/project/axxb", True),
        ("**/*.{ts,tsx}", "/home/project/src/App.tsx", True),
        ("**/*.{ts,tsx}", "/home/project/src/App.jsx", False),
        ("{src,lib}/x", "/home/project/lib/x", True),
        ("[ab].txt", "/home/project/b.txt", True),
        ("[!ab].txt", "/home/project/b.txt", False),
        ("[^ab].txt", "/home/project/c.txt", True),
        ("a[!x]b", "/home/project/a/b", False),  # a class never matches `/`
        ("[z-a].txt", "/home/project/[z-a].txt", True),  # a backwards range is literal
        ("a[+-0]b", "/home/project/a/b", False),
        ("a[+-0]b", "/home/project/a.b", True),
        ("[a-]x", "/home/project/-x", True),
        ("[!]]x", "/home/project/]x", False),
        ("[]]x", "/home/project/]x", True),
        ("app/\\[slug\\]", "/home/project/app/[slug]/page.tsx", True),
        ("app/[slug]", "/home/project/app/[slug]/page.tsx", False),
        ("build/", "/home/project/x/build", True),  # a trailing `/` changes nothing
        ("/home/project/src", "/home/project/src/deep/file", True),
        ("/", "/home/project/anything", True),
        ("a+b(c).txt", "/home/project/a+b(c).txt", True),
        ("*", "/home/project/.env", True),  # dot names are not special
        ("*.md", "/home/project/line\nbreak.md", True),
        ("*{,b}.txt", "/home/project/c.txt", False),  # empty alternatives are ignored
        ("a,b.txt", "/home/project/a,b.txt", True),
        ("log ", "/home/project/log", False),  # spaces are kept, trailing ones too
        ("log ", "/home/project/log ", True),
        ("**/**/**/b", "/home/project/b", True),
]  # fmt: skip


@pytest.mark.parametrize(("pattern", "path", "expected"), CASES)
def test_glob_matches(pattern: str, path: str, expected: bool) -> None:
    assert PathFilter([pattern], [], ROOT).wants(path) is expected


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [case for case in CASES if case[1].startswith(ROOT + "/") and "\n" not in case[1]],
)
def test_ripgrep_is_handed_the_same_meaning(
    pattern: str, path: str, expected: bool, tmp_path: Path
) -> None:
    workspace = tmp_path / "project"
    file = workspace / path.removeprefix(ROOT + "/")
    file.parent.mkdir(parents=True)
    file.write_text("x")
    if pattern == ROOT or pattern.startswith(ROOT + "/"):
        pattern = str(workspace) + pattern.removeprefix(ROOT)
    for exclude in (False, True):
        globs = ripgrep_globs([pattern], str(workspace), exclude=exclude)
        listed = subprocess.run(
            ["rg", "--files", "--no-config", "--no-ignore", "--hidden", *globs],
            cwd=workspace, capture_output=True, text=True, check=False,
        ).stdout.splitlines()  # fmt: skip
        assert (listed == [str(file.relative_to(workspace))]) is (expected != exclude), globs


TREE = [
    "src/a.ts", "src/lib/b.ts", "src/App.tsx", "node_modules/pkg/index.js", "lib/src/b.ts",
    "app/[slug]/page.tsx", "a/x/y/b/f", "a/b", "logs/npm.log", "top.log", "a,b.txt", "we!rd",
    "x{a,b", "[x", "sp ace.md", "#hash", "q?.txt", "b.txt", "-x", ".env", "log ",
]  # fmt: skip
PIECES = ["a", "b", "s", "src", "x", ".", "*", "**", "?", "/", "[", "]", "!", "^", "-", "{", "}",
          ",", "\\", "log", "+", " ", "#", "lib", "node_modules"]  # fmt: skip


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workspace = tmp_path_factory.mktemp("tree")
    for name in TREE:
        (workspace / name).parent.mkdir(parents=True, exist_ok=True)
        (workspace / name).write_text("x")
    return workspace


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=7).map("".join), st.booleans())
def test_ripgrep_and_the_matcher_agree_on_any_pattern(
    tree: Path, pattern: str, exclude: bool
) -> None:
    globs = ripgrep_globs([pattern], str(tree), exclude=exclude)
    run = subprocess.run(
        ["rg", "--files", "--no-config", "--no-ignore", "--hidden", *globs],
        cwd=tree, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode in (0, 1), run.stderr  # 1: nothing listed
    matcher = GlobSet([pattern], str(tree))
    assert set(run.stdout.splitlines()) == {f for f in TREE if matcher.matches(f) != exclude}


def test_bolt_filter() -> None:
    bolt = PathFilter(
        ["/home/project/**"], ["**/node_modules", ".git", "**/package-lock.json"], ROOT
    )
    assert bolt.wants("/home/project/src/main.tsx")
    assert bolt.wants("/home/project/package.json")
    assert not bolt.wants("/home/project/package-lock.json")
    assert not bolt.wants("/home/project/node_modules/vite/package.json")
    assert not bolt.wants("/home/project/.git/config")
    assert bolt.prunes("/home/project/node_modules")
    assert not bolt.prunes("/home/project/src")


def test_no_include_means_everything_and_empty_patterns_are_dropped() -> None:
    anything = PathFilter([], glob_list(["", ""], "exclude"), ROOT)
    assert anything.wants("/home/project/x")
    assert not GlobSet([], ROOT).matches("x")
    assert glob_list(None, "include") == []


@pytest.mark.parametrize("value", ["**", [5], ["a\x00b"], ["x"] * (MAX_GLOBS + 1)])
def test_anything_but_a_list_of_globs_is_refused(value: object) -> None:
    with pytest.raises(AgentError) as caught:
        glob_list(value, "exclude")
    assert caught.value.code == "EINVAL"


def test_paths_outside_the_workspace_are_never_wanted() -> None:
    everything = PathFilter(["**"], [], ROOT)
    assert not everything.wants("/home/projects/x")
    assert everything.prunes("/etc")


def test_a_pattern_list_is_compiled_once() -> None:
    first, second = GlobSet(["**/dist", "*.log"], ROOT), GlobSet(["**/dist", "*.log"], ROOT)
    assert first._regex is second._regex
