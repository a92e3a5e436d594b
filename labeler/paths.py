"""The path guard: local paths named by a manifest must stay inside the operator's allowed roots.

A manifest is data, often written by someone else; without this guard a line such as
`{"image": "../../home/me/.ssh/id_rsa"}` or a symlink to `/etc` would make a job read
(and export) files the operator never meant to share. The rule: the path, with every
symlink and `..` resolved, must lie inside one of `FetchPolicy.allowed_roots`, or, when
none are configured, inside the manifest's own directory.

Paths are resolved once, at submit, and the resolved path is stored; `check_unchanged`
refuses it at read time if a symlink has appeared on it since.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


class PathEscapeError(ValueError):
    """A path points outside the allowed roots; the message names the path and the roots, never its target."""


def allowed_roots(configured: Sequence[Path], default: Path) -> list[Path]:
    """The operator's roots, resolved; `default` (the manifest's directory) when none are set."""
    return [Path(root).resolve() for root in (configured or [default])]


class PathGuard:
    """Resolves paths and refuses those outside `roots`.

    Resolving is what makes a manifest of a million lines slow (a `realpath` stats every
    component), so the resolved form of each directory is remembered for the guard's
    life (one source listing); only a path's last component is checked each time, and
    followed in full when it is a symlink.
    """

    MAX_CACHED_DIRECTORIES = 100_000

    def __init__(self, roots: Sequence[Path]):
        self.roots = [os.path.realpath(root) for root in roots]
        self._directories: dict[str, str] = {}

    def resolve(self, path: str | Path, base: str | Path) -> str:
        """`path` (relative to `base`) fully resolved, or `PathEscapeError` when it leaves every root."""
        joined = os.path.join(base, os.path.expanduser(path))
        head, name = os.path.split(joined)
        if name in ("", ".", ".."):
            real = os.path.realpath(joined)
        else:
            directory = self._directories.get(head)
            if directory is None:
                if len(self._directories) >= self.MAX_CACHED_DIRECTORIES:
                    self._directories.clear()
                directory = self._directories[head] = os.path.realpath(head)
            real = os.path.join(directory, name)
            if os.path.islink(real):
                real = os.path.realpath(real)
        if any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in self.roots):
            return real
        listed = ", ".join(self.roots)
        raise PathEscapeError(  # not where it leads: a link's target can reveal paths and process ids (/proc/self)
            f"refused: {path} leads outside the allowed roots ({listed}) once symlinks and '..' are resolved; "
            "set LLAVA_LABELER_FETCH__ALLOWED_ROOTS to allow more"
        )


def check_unchanged(path: Path) -> None:
    """Refuse a stored (already resolved) path that now leads elsewhere through a new symlink."""
    if Path(os.path.realpath(path)) != path:
        raise PathEscapeError(f"refused: {path} now leads elsewhere (a symlink appeared after submit)")
