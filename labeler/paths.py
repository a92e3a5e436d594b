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
    component), so each directory a path names is resolved once for the guard's life (one
    source listing), with whether it lies inside a root; per path only its last component
    is checked (one `lstat`), and followed in full when it is a symlink.
    """

    MAX_CACHED_DIRECTORIES = 100_000

    def __init__(self, roots: Sequence[Path]):
        self.roots = [os.path.realpath(root) for root in roots]
        self._prefixes = tuple(root.rstrip(os.sep) + os.sep for root in self.roots)
        self._directories: dict[tuple[str, str], tuple[str, bool]] = {}  # (base, directory as named) -> (resolved + "/", inside)

    def _inside(self, real: str) -> bool:
        return real in self.roots or real.startswith(self._prefixes)

    def resolve(self, path: str | Path, base: str | Path) -> str:
        """`path` (relative to `base`) fully resolved, or `PathEscapeError` when it leaves every root."""
        path, base = os.fspath(path), os.fspath(base)
        head, name = os.path.split(os.path.expanduser(path) if path.startswith("~") else path)
        if name in ("", ".", ".."):
            real = os.path.realpath(os.path.join(base, head, name))
            inside = self._inside(real)
        else:
            known = self._directories.get((base, head))
            if known is None:
                if len(self._directories) >= self.MAX_CACHED_DIRECTORIES:
                    self._directories.clear()
                directory = os.path.realpath(os.path.join(base, head))
                known = self._directories[base, head] = (os.path.join(directory, ""), self._inside(directory))
            real, inside = known[0] + name, known[1]  # a name inside a directory inside a root is inside
            if os.path.islink(real):
                real = os.path.realpath(real)
                inside = self._inside(real)
            elif not inside:
                inside = self._inside(real)  # the root itself, named from its parent
        if inside:
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
