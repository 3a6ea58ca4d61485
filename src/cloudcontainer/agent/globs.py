"""The one glob dialect of the agent: watch include/exclude, archive and snapshot excludes,
search include/exclude (handed to ripgrep with the same meaning). Its user-facing description
is docs/api.md, "Globs"; this docstring is the spec.

Patterns name workspace paths the way bolt.diy, WebContainer's watchPaths and .gitignore
write them, and are resolved against the workspace as paths are (agent/paths.py):

- **Anchored**: a pattern with a `/` anywhere but at its end starts at the workspace root.
  `src/**`, `/src/**` and `/home/project/src/**` are one pattern (the root spelt out is
  dropped, as paths drop it); `/home/projects/x` is the workspace's `home/projects/x`.
- **Bare names**: a pattern without `/` (or with only a trailing one) matches a name at any
  depth: `node_modules`, `.git`, `*.log`.
- A trailing `/` changes nothing: `build/` is `build` (a file named build matches too).
- `*` matches any run of characters within one name (never `/`); `?` one character of a name.
- `**` as a whole segment spans folders: `**/x` is x at any depth (the top included), `x/**`
  everything below x (not x itself), `a/**/b` b zero or more folders below a. Elsewhere
  (`a**b`) it is `*`.
- `[abc]`, `[a-z]`, `[!abc]` or `[^abc]`: one character of a name from (not from) the set; a
  `[` with no `]` before the next `/`, or with a backwards range, is a literal `[`.
- `{a,b}`: one of the alternatives, which may hold any of the above but no other braces;
  empty alternatives are ignored (`{,b}` is `{b}`, as ripgrep has it); a `{` with no `}` is
  literal.
- `\\` makes the next character literal: `app/\\[slug\\]` names Next.js's folder `[slug]`.
- **Folders**: a path matches when it or a folder above it matches. Excluding `node_modules`
  excludes everything inside it; including `src` includes its files (as VS Code's search
  includes do).
- `/` alone (or the root spelt out) is the root, so everything.
- Case-sensitive; names starting with `.` are not special (`*` matches `.env`); spaces are
  kept, trailing ones too (unlike .gitignore).

Each list of patterns is compiled once to one regular expression over workspace-relative
paths (`src/a.ts`; the root is ``) and cached.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, List, Optional, Pattern, Sequence, Tuple

from cloudcontainer.agent.paths import unrooted
from cloudcontainer.agent.protocol import AgentError

MAX_GLOBS = 256  # in one list of an op's arguments
# One parsed piece of a pattern, rendered twice: (Python regex, ripgrep glob).
Piece = Tuple[str, str]
RG_SPECIAL = "\\*?[]{}, "  # a space too: rg drops trailing ones, as .gitignore does


def glob_list(value: Any, name: str) -> List[str]:
    """The op argument `name` as patterns: absent is none, empty strings are dropped, and
    anything but a list of at most MAX_GLOBS strings without NUL is EINVAL."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_GLOBS:
        raise AgentError("EINVAL", "%s must be a list of at most %d globs" % (name, MAX_GLOBS))
    if not all(isinstance(glob, str) and "\x00" not in glob for glob in value):
        raise AgentError("EINVAL", "%s: a glob must be a string without NUL" % name)
    return [glob for glob in value if glob]


class GlobSet:
    """Several patterns (from `glob_list`) as one compiled expression; none matches nothing."""

    def __init__(self, patterns: Sequence[str], root: str) -> None:
        self.patterns = tuple(patterns)
        self._regex = _compiled(self.patterns, root)

    def __bool__(self) -> bool:
        return self._regex is not None

    def matches(self, relative: str) -> bool:
        """True when the workspace-relative path (`src/a.ts`, `` for the root) or one of its
        folders matches."""
        return self._regex is not None and self._regex.match(relative) is not None


class PathFilter:
    """A watcher's view: wanted when included (everything, if no include) and not excluded."""

    def __init__(self, include: Sequence[str], exclude: Sequence[str], root: str) -> None:
        self.root = root
        self.include = GlobSet(include, root)
        self.exclude = GlobSet(exclude, root)
        self.key = (self.include.patterns, self.exclude.patterns)

    def _relative(self, path: str) -> Optional[str]:
        rest = unrooted(path, self.root)
        return None if rest == path else rest[1:]

    def wants(self, path: str) -> bool:
        """Whether the absolute `path` is reported (never, outside the workspace)."""
        relative = self._relative(path)
        if relative is None or self.exclude.matches(relative):
            return False
        return not self.include or self.include.matches(relative)

    def prunes(self, directory: str) -> bool:
        """True when nothing at or below the absolute `directory` can be wanted."""
        relative = self._relative(directory)
        return relative is None or self.exclude.matches(relative)


def ripgrep_globs(patterns: Sequence[str], root: str, exclude: bool) -> List[str]:
    """rg `--glob` options with this dialect's meaning, for rg run in `root`. rg's globs follow
    .gitignore (anchored when they start with `/`, `**/x` at any depth) but match a path
    alone, so each pattern is also given as `pattern/**` for what is inside its folders."""
    options: List[str] = []
    for pattern in patterns:
        glob = _rendered(pattern, root)[1]
        inside = glob == "**" or glob.endswith("/**")  # already everything below
        for form in [glob] if inside else [glob, glob + "/**"]:
            options.append("--glob=" + ("!" if exclude else "") + form)
    return options


@lru_cache(maxsize=64)
def _compiled(patterns: Tuple[str, ...], root: str) -> Optional[Pattern[str]]:
    if not patterns:
        return None
    alternatives = "|".join(_rendered(pattern, root)[0] for pattern in patterns)
    # `(/.*)?`: a path also matches through one of its folders.
    return re.compile("(?:%s)(?:/.*)?\\Z" % alternatives, re.DOTALL)


def _split(pattern: str, root: str) -> Tuple[bool, str]:
    """(anchored, the pattern from the root or as a bare name, without surrounding `/`)."""
    text = pattern.rstrip("/")
    anchored = "/" in text or not text  # `/` alone is the root
    if anchored:
        text = unrooted(text, root).lstrip("/")
    return anchored, text


def _rendered(pattern: str, root: str) -> Piece:
    """One pattern as a regex over workspace-relative paths and as an rg glob run in root."""
    anchored, text = _split(pattern, root)
    if not text:
        return ".*", "**"  # the root, and so everything
    pieces = _pieces(text)
    regex, glob = "".join(r for r, _ in pieces), "".join(g for _, g in pieces)
    return (regex, "/" + glob) if anchored else ("(?:.*/)?" + regex, "**/" + glob)


def _pieces(text: str, in_braces: bool = False) -> List[Piece]:
    pieces: List[Piece] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        bracket = _class(text, i) if char == "[" else None
        if char == "\\" and i + 1 < n:
            pieces.append(_literal(text[i + 1]))
            i += 2
        elif text.startswith("**", i) and _whole_segment(text, i):
            if text.startswith("**/", i):
                pieces.append(("(?:.*/)?", "**/"))
                i += 3
                while text.startswith("**/", i):  # `**/**/` is `**/` (and no slow regex)
                    i += 3
            else:
                pieces.append((".*", "**"))
                i += 2
        elif char == "*":
            while i < n and text[i] == "*":
                i += 1
            pieces.append(("[^/]*", "*"))
        elif char == "?":
            pieces.append(("[^/]", "?"))
            i += 1
        elif bracket is not None:
            pieces.append(bracket[0])
            i = bracket[1]
        elif char == "{" and not in_braces and text.find("}", i) > 0:
            end = text.find("}", i)
            # ripgrep ignores empty alternatives (`{,b}` is `{b}`); so does this dialect.
            words = [word for word in text[i + 1 : end].split(",") if word] or [""]
            choices = [_pieces(word, True) for word in words]
            regex = "|".join("".join(r for r, _ in choice) for choice in choices)
            rg = ",".join("".join(g for _, g in choice) for choice in choices)
            pieces.append(("(?:%s)" % regex, "{%s}" % rg))
            i = end + 1
        else:
            pieces.append(_literal(char))
            i += 1
    return pieces


def _literal(char: str) -> Piece:
    return re.escape(char), ("\\" + char if char in RG_SPECIAL else char)


def _whole_segment(text: str, i: int) -> bool:
    before = i == 0 or text[i - 1] == "/"
    after = i + 2 == len(text) or text[i + 2] == "/"
    return before and after


def _class(text: str, start: int) -> Optional[Tuple[Piece, int]]:
    """The `[...]` at `start` and the index after it, or None when it is not a class."""
    i = start + 1
    negated = i < len(text) and text[i] in "!^"
    if negated:
        i += 1
    end = text.find("]", i + 1)  # a `]` right after `[` or `[!` is a member
    if end < 0 or "/" in text[i:end]:
        return None
    spans = _spans(text[i:end])
    if any(low > high for low, high in spans):
        return None
    regex = "".join(re.escape(low) + ("-" + re.escape(high) if high != low else "")
                    for low, high in spans)  # fmt: skip
    # rg's classes may match `/`: a negated one is told not to, a range across it is split.
    rg = "".join(
        low + "-" + high if high != low else low for low, high in _spans_without_slash(spans)
    )
    if negated:
        return ("(?!/)[^%s]" % regex, "[!%s/]" % rg), end + 1
    return ("(?!/)[%s]" % regex, "[%s]" % rg), end + 1


def _spans(members: str) -> List[Tuple[str, str]]:
    """A class's members as (low, high) character spans: `a-z0_` → a..z, 0..0, _.._; a `-`
    first, last or beside another `-` is itself."""
    spans: List[Tuple[str, str]] = []
    k = 0
    while k < len(members):
        if (
            k + 2 < len(members)
            and members[k + 1] == "-"
            and "-" not in (members[k], members[k + 2])
        ):
            spans.append((members[k], members[k + 2]))
            k += 3
        else:
            spans.append((members[k], members[k]))
            k += 1
    return spans


def _spans_without_slash(spans: List[Tuple[str, str]]) -> List[Tuple[str, str]]:
    out: List[Tuple[str, str]] = []
    for low, high in spans:
        if low < "/" < high:
            out += [(low, "."), ("0", high)]
        else:
            out.append((low, high))
    return out
