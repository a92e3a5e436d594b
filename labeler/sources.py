"""Where a job's images come from: a directory, a glob, a JSONL manifest, or an object store.

`iter_source(source)` turns what the operator typed into a stream of `SourceItem`s,
never a list, so a manifest of millions of lines is read as it is inserted:
- a local directory: every file under it (recursively) whose extension is an image's;
- a glob (`photos/**/*.jpg`): the files it matches (`*` matches names starting with a dot too);
- a `.jsonl` manifest (a path, an http(s) URL or an object-store URL): one JSON object per
  line, `{"image": path-or-URL, "question": ..., "metadata": {...}, "reference": ...}`,
  where only `image` is required, relative paths are relative to the manifest, and
  `reference` is ground truth that `run` scores against; other keys go into metadata;
- an http(s) URL: one image, fetched by `engine.fetch` when the worker reads it;
- an object-store URL (`s3://bucket/prefix/`, `gs://...`, `memory://...`, when enabled in
  `FetchPolicy.object_stores`): a prefix (listed recursively, by extension), a glob, or one object.

Every location (the source, every manifest line) passes `engine.locations` (the one
allow-list of schemes); local paths from a manifest then pass the path guard
(`labeler.paths`). A refused line becomes an item that fails with the reason, and the
rest of the job runs; a refused source stops the submit. Listings never enter symlinked
directories and list a file once. A malformed manifest line stops the submit with its
line number: nothing is written.
"""

from __future__ import annotations

import glob
import json
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urljoin, urlsplit

from engine.fetch import FetchError, open_url
from engine.locations import LocationRefused, Locations
from engine.settings import FetchPolicy
from labeler.paths import PathEscapeError, PathGuard, allowed_roots

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MANIFEST_KEYS = frozenset(("image", "question", "metadata", "reference"))


class SourceError(ValueError):
    """The source cannot be read; the message names it (and the manifest line) and says why."""


class SourceItem(NamedTuple):
    """One image to label. `error` set: the item is recorded as failed with that reason.
    (A named tuple: a manifest of a million lines makes a million of them.)"""

    uri: str
    question: str | None = None
    metadata: dict[str, Any] | None = None
    reference: Any = None
    error: str | None = None


def iter_source(
    source: str,
    policy: FetchPolicy,
    *,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    max_manifest_bytes: int = 1024**3,
) -> Iterator[SourceItem]:
    """The items `source` names, in a stable order (sorted listings, manifest order)."""
    suffixes = tuple(ext.lower() for ext in extensions)
    locations = Locations(policy)
    try:
        location = locations.check(source)
    except LocationRefused as exc:
        raise SourceError(str(exc)) from None
    path = location.uri  # for a local source, without file://
    if location.kind == "http":
        if urlsplit(source).path.endswith(".jsonl"):
            lines = _http_lines(source, policy, max_manifest_bytes)
            yield from _manifest(lines, source, locations, lambda entry: locations.check(urljoin(source, entry)).uri)
        else:
            yield SourceItem(uri=source)
    elif location.kind == "store":
        yield from _store(source, suffixes, locations)
    elif path.endswith(".jsonl") and not glob.has_magic(path):
        yield from _local_manifest(Path(path), policy, locations)
    elif glob.has_magic(path):
        yield from _glob(path)
    elif os.path.isdir(path):
        root = os.path.realpath(path)

        def image(relative: str) -> bool:
            return relative.lower().endswith(suffixes)

        yield from _listed(root, _walk(root, image), image)
    elif os.path.isfile(path):
        yield SourceItem(uri=os.path.realpath(path))
    else:
        raise SourceError(f"source not found: {source} (expected a directory, a glob, a .jsonl manifest or a URL)")


def _walk(root: str, keep: Callable[[str], bool], depth: int | None = None) -> Iterator[str]:
    """Files under `root` whose path relative to it `keep` accepts, sorted.

    Symlinked directories are never entered (a link loop would list files forever), nor
    directories more than `depth` levels down.
    """
    for directory, dirs, files in os.walk(root):
        relative = os.path.relpath(directory, root)
        prefix = "" if relative == "." else relative + "/"
        if depth is not None and prefix.count("/") >= depth:
            dirs.clear()
        dirs.sort()
        for name in sorted(files):
            if keep(prefix + name):
                yield os.path.join(directory, name)


def _glob_split(pattern: str) -> tuple[str, str]:
    """A glob's fixed directory (before its first wildcard) and the rest of it, relative to that directory."""
    parts = Path(pattern).parts
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    return str(Path(*parts[:first])), "/".join(parts[first:])


def _glob(pattern: str) -> Iterator[SourceItem]:
    """The files a local glob matches, found by walking its fixed directory (as `_walk`: links to directories not followed)."""
    from fsspec.utils import glob_translate  # the glob-to-regex translation of Python 3.13, for 3.11

    base, rest = _glob_split(pattern)
    try:
        regex = re.compile(glob_translate(rest))
    except ValueError as exc:
        raise SourceError(f"invalid glob {pattern}: {exc}") from None

    def matches(relative: str) -> bool:
        return regex.match(relative) is not None

    root = os.path.realpath(base)
    yield from _listed(root, _walk(root, matches, None if "**" in rest else rest.count("/")), matches)


def _listed(root: str, paths: Iterable[str], keep: Callable[[str], bool]) -> Iterator[SourceItem]:
    """Items for the files a walk of `root` found, each file once.

    A symlink leading out of the tree fails its item; a symlink to a file the walk lists
    under its own name is skipped, and so is a second link to the same file.
    """
    guard = PathGuard([Path(root)])
    linked: set[str] = set()
    for path in paths:
        try:
            real = guard.resolve(path, root)
        except PathEscapeError as exc:
            yield SourceItem(uri=path, error=str(exc))
            continue
        if real != path:
            if real in linked or (os.path.exists(real) and keep(os.path.relpath(real, root))):
                continue
            linked.add(real)
        yield SourceItem(uri=real)


def _local_manifest(path: Path, policy: FetchPolicy, locations: Locations) -> Iterator[SourceItem]:
    directory = path.resolve().parent
    guard, base = PathGuard(allowed_roots(policy.allowed_roots, directory)), str(directory)
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise SourceError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    with handle:
        yield from _manifest(handle, str(path), locations, lambda entry: guard.resolve(entry, base))


def _http_lines(url: str, policy: FetchPolicy, max_bytes: int) -> Iterator[bytes]:
    try:
        with open_url(url, policy, max_bytes=max_bytes) as chunks:
            pending = b""
            for chunk in chunks:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                yield from lines
            if pending:
                yield pending
    except FetchError as exc:
        raise SourceError(f"cannot read manifest: {exc}") from None


def _manifest(
    lines: Iterable[bytes], name: str, locations: Locations, resolve: Callable[[str], str]
) -> Iterator[SourceItem]:
    """Items from manifest lines; `resolve` turns a line's local path into a checked URI (against the
    manifest: through its guard, or joined to a remote manifest's URL and checked again as the URL it became)."""
    for number, raw in enumerate(lines, start=1):
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if not raw.strip():  # a blank line (checked only here: a million lines are not blank)
                continue
            raise SourceError(f"{name} line {number}: not valid JSON ({exc})") from None
        entry = record.get("image") if isinstance(record, dict) else None
        if not isinstance(entry, str) or not entry:
            raise SourceError(f'{name} line {number}: needs an object with an "image" (a path or URL)')
        question = record.get("question")
        if question is not None and not isinstance(question, str):
            raise SourceError(f'{name} line {number}: "question" must be a string')
        metadata = record.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise SourceError(f'{name} line {number}: "metadata" must be an object')
        if not MANIFEST_KEYS.issuperset(record):
            metadata = {**metadata, **{k: v for k, v in record.items() if k not in MANIFEST_KEYS}}
        try:
            uri, error = _located(entry, locations, resolve), None
        except (LocationRefused, PathEscapeError) as exc:
            uri, error = entry, str(exc)
        yield SourceItem(uri, question, metadata, record.get("reference"), error)


def _located(entry: str, locations: Locations, resolve: Callable[[str], str]) -> str:
    """The URI a manifest line names (a local path resolved against the manifest), or the refusal."""
    location = locations.check(entry)
    return location.uri if location.kind != "local" else resolve(location.uri)


def _store(url: str, suffixes: tuple[str, ...], locations: Locations) -> Iterator[SourceItem]:
    """An enabled object store's manifest, prefix (listed by extension), glob or single object."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise SourceError(f"cannot open {url}: {exc}") from None
    if path.endswith(".jsonl") and not glob.has_magic(path):
        base = posixpath.dirname(path)

        def resolve(entry: str) -> str:
            return locations.check(fs.unstrip_protocol(posixpath.normpath(posixpath.join(base, entry)))).uri

        try:
            handle = fs.open(path, "rb")
        except OSError as exc:
            raise SourceError(f"cannot read manifest {url}: {exc}") from None
        with handle:
            yield from _manifest(handle, url, locations, resolve)
        return
    try:
        if glob.has_magic(path):
            found = sorted(fs.glob(path))
        elif fs.isdir(path):
            found = sorted(p for p in fs.find(path) if p.lower().endswith(suffixes))
        elif fs.exists(path):
            found = [path]
        else:
            raise SourceError(f"source not found: {url}")
    except OSError as exc:
        raise SourceError(f"cannot list {url}: {exc}") from None
    for entry in found:
        yield SourceItem(uri=fs.unstrip_protocol(entry))
