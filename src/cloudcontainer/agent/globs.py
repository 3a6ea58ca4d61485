"""Include/exclude globs over workspace paths, as watchers (and bolt.diy) write them.

Patterns are matched against absolute paths:
- `/home/project/src/**` (absolute) is taken as written;
- `src/**` (relative, with a slash) is rooted at the workspace: `/home/project/src/**`;
- `node_modules`, `*.log` (no slash) match that name at any depth, like .gitignore.
`**` spans folders, `*` and `?` stay within one name, `{a,b}` and `[abc]` work as in shells.
A path matches when it or one of its folders matches: excluding `**/node_modules` excludes
everything below it, and including `/home/project/src` includes its files.
"""

from __future__ import annotations

import posixpath
import re
from typing import Iterable, List, Optional, Pattern


def translate(pattern: str, root: str) -> str:
    """The regular expression (without anchors) for one glob."""
    if pattern.startswith("/"):
        absolute = pattern
    elif "/" in pattern.rstrip("/"):
        absolute = root + "/" + pattern
    else:
        absolute = "**/" + pattern
    absolute = absolute.rstrip("/") or "/"
    out: List[str] = []
    i, n = 0, len(absolute)
    while i < n:
        char = absolute[i]
        if absolute.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif absolute.startswith("**", i):
            out.append(".*")
            i += 2
        elif char == "*":
            out.append("[^/]*")
            i += 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif char == "[":
            end = absolute.find("]", i + 2)
            if end < 0:
                out.append(re.escape(char))
                i += 1
            else:
                body = absolute[i + 1 : end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append("[" + body + "]")
                i = end + 1
        elif char == "{":
            end = absolute.find("}", i)
            if end < 0:
                out.append(re.escape(char))
                i += 1
            else:
                choices = absolute[i + 1 : end].split(",")
                out.append("(?:" + "|".join(translate_plain(c) for c in choices) + ")")
                i = end + 1
        else:
            out.append(re.escape(char))
            i += 1
    body = "".join(out)
    if absolute.startswith("**/"):
        body = "/" + body  # `**/x` must match `/x` at the top too
    return body


def translate_plain(text: str) -> str:
    """A `{a,b}` alternative: only `*` and `?` are special inside."""
    return "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in text)


class GlobSet:
    """Several globs as one compiled expression; empty means "matches nothing"."""

    def __init__(self, patterns: Iterable[str], root: str) -> None:
        self.patterns = [p for p in patterns if isinstance(p, str) and p]
        self._regex: Optional[Pattern[str]] = None
        if self.patterns:
            alternatives = "|".join("(?:%s)" % translate(p, root) for p in self.patterns)
            self._regex = re.compile("(?:%s)\\Z" % alternatives)

    def __bool__(self) -> bool:
        return self._regex is not None

    def matches(self, path: str) -> bool:
        """True when `path` or one of its folders matches."""
        regex = self._regex
        if regex is None:
            return False
        while True:
            if regex.match(path):
                return True
            parent = posixpath.dirname(path)
            if parent == path:
                return False
            path = parent


class PathFilter:
    """A watcher's view: wanted when included (everything, if no include) and not excluded."""

    def __init__(self, include: Iterable[str], exclude: Iterable[str], root: str) -> None:
        self.include = GlobSet(include, root)
        self.exclude = GlobSet(exclude, root)
        self.key = (tuple(self.include.patterns), tuple(self.exclude.patterns))

    def wants(self, path: str) -> bool:
        if self.exclude.matches(path):
            return False
        return not self.include or self.include.matches(path)

    def prunes(self, directory: str) -> bool:
        """True when nothing at or below `directory` can be wanted (no need to watch it)."""
        return self.exclude.matches(directory)
