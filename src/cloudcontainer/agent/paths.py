"""Workspace paths as WebContainer's fs names them: the one normaliser of the agent and gateway.

A client names a workspace entry in any of these forms, and they are all the same entry:
`src/a.ts`, `/src/a.ts`, `./src//a.ts`, `../../src/a.ts` and `/home/project/src/a.ts` (the
workspace root spelt out). `workdir_rooted` turns each into its one form, `/src/a.ts`:

- a path that is the root or starts with `root + "/"` loses that prefix (`/home/projects/x`
  is not under `/home/project` and is taken as the workspace's `home/projects/x`);
- what is left is read from the root whether or not it starts with `/` (`x` is `/x`);
- `.` segments, empty segments (`a//b`) and a trailing `/` go; `..` removes the segment
  before it and is dropped at the root, so no path ever names anything outside the
  workspace (PARITY.md: bolt writes AI files as `../../src/App.tsx`);
- the root itself is `/`.

Only text is handled: nothing is opened, symlinks are not resolved (the agent refuses those
that lead outside), and the caller refuses NUL and over-long paths. Stdlib only, Python >= 3.9:
the agent (inside sandboxes) and the gateway (files, locks, history) import it alike.
"""

from __future__ import annotations

import posixpath

__all__ = ["covers", "unrooted", "workdir_rooted"]


def unrooted(path: str, root: str) -> str:
    """`path` without a leading `root` folder: `/home/project/src` → `/src`, `/home/project`
    → ``; anything else (`src`, `/src`, `/home/projects`) is returned as it is."""
    if path == root or path.startswith(root + "/"):
        return path[len(root) :]
    return path


def workdir_rooted(path: str, root: str) -> str:
    """The one workdir-rooted form of a client's `path` (see the module docstring):
    always starts with `/`, has no `.`, `..`, empty segment or trailing `/`."""
    normal = posixpath.normpath("/" + unrooted(path, root))
    # POSIX lets normpath keep exactly two leading slashes; one root is meant.
    return "/" + normal.lstrip("/")


def covers(folder: str, path: str) -> bool:
    """Whether the workdir-rooted `folder` is `path` or one of its folders (`/` covers all)."""
    return folder == "/" or path == folder or path.startswith(folder + "/")
