"""Watch globs: bolt.diy's include/exclude lists and the shapes users write."""

from __future__ import annotations

import pytest

from cloudcontainer.agent.globs import GlobSet, PathFilter

ROOT = "/home/project"


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
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
        ("src/*.ts", "/home/project/src/a.ts", True),
        ("src/*.ts", "/home/project/src/a/b.ts", False),
        ("src/?.ts", "/home/project/src/a.ts", True),
        ("**/*.{ts,tsx}", "/home/project/src/App.tsx", True),
        ("**/*.{ts,tsx}", "/home/project/src/App.jsx", False),
        ("[ab].txt", "/home/project/b.txt", True),
        ("[!ab].txt", "/home/project/b.txt", False),
        ("/home/project/src", "/home/project/src/deep/file", True),
        ("a+b(c).txt", "/home/project/a+b(c).txt", True),
    ],
)
def test_glob_matches(pattern: str, path: str, expected: bool) -> None:
    assert GlobSet([pattern], ROOT).matches(path) is expected


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


def test_no_include_means_everything_and_garbage_patterns_are_ignored() -> None:
    anything = PathFilter([], ["", 5], ROOT)  # type: ignore[list-item]
    assert anything.wants("/home/project/x")
    assert not GlobSet([], ROOT).matches("/home/project/x")
