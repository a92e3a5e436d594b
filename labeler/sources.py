"""Where a job's images come from: a directory, a glob, a JSONL manifest, or a remote store.

`iter_source(source)` turns what the operator typed into a stream of `SourceItem`s,
never a list, so a manifest of millions of lines is read as it is inserted:
- a local directory: every file under it (recursively) whose extension is an image's;
- a glob (`photos/**/*.jpg`): the files it matches;
- a `.jsonl` manifest (a path, an http(s) URL or any fsspec URL): one JSON object per
  line, `{"image": path-or-URL, "question": ..., "metadata": {...}, "reference": ...}`,
  where only `image` is required, relative paths are relative to the manifest, and
  `reference` is ground truth that `run` scores against; other keys go into metadata;
- an http(s) URL: one image, fetched by `engine.fetch` when the worker reads it;
- any other fsspec URL (`s3://bucket/prefix/`, `gs://...`, `memory://...`): a prefix
  (listed recursively, by extension), a glob, or one object.

Local paths from a manifest are resolved through the path guard (`labeler.paths`); one
that escapes becomes an item that fails with the reason, and the rest of the job runs.
A malformed manifest line stops the submit with its line number: nothing is written.
"""

from __future__ import annotations

import glob
import json
import os
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from engine.fetch import FetchError, open_url
from engine.settings import FetchPolicy
from labeler.paths import PathEscapeError, PathGuard, allowed_roots

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MANIFEST_KEYS = ("image", "question", "metadata", "reference")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


class SourceError(ValueError):
    """The source cannot be read; the message names it (and the manifest line) and says why."""


@dataclass(frozen=True)
class SourceItem:
    """One image to label. `error` set: the item is recorded as failed with that reason."""

    uri: str
    question: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    reference: Any = None
    error: str | None = None


def is_url(text: str) -> bool:
    return bool(_SCHEME.match(text))


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def iter_source(
    source: str,
    policy: FetchPolicy,
    *,
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    max_manifest_bytes: int = 1024**3,
) -> Iterator[SourceItem]:
    """The items `source` names, in a stable order (sorted listings, manifest order)."""
    suffixes = tuple(ext.lower() for ext in extensions)
    if source.startswith("file://"):
        source = urlsplit(source).path
    if is_http(source):
        if urlsplit(source).path.endswith(".jsonl"):
            yield from _manifest(_http_lines(source, policy, max_manifest_bytes), source, lambda entry: urljoin(source, entry))
        else:
            yield SourceItem(uri=source)
    elif is_url(source):
        yield from _fsspec(source, suffixes)
    elif source.endswith(".jsonl") and not glob.has_magic(source):
        yield from _local_manifest(Path(source), policy)
    elif glob.has_magic(source):
        base = Path(_glob_base(source)).resolve()
        matches = (Path(p) for p in sorted(glob.iglob(source, recursive=True)) if os.path.isfile(p))
        yield from _local_files(matches, base)
    elif Path(source).is_dir():
        root = Path(source).resolve()
        yield from _local_files(_walk(root, suffixes), root)
    elif Path(source).is_file():
        yield SourceItem(uri=str(Path(source).resolve()))
    else:
        raise SourceError(f"source not found: {source} (expected a directory, a glob, a .jsonl manifest or a URL)")


def _walk(root: Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    for directory, dirs, files in os.walk(root):  # symlinked directories are not entered
        dirs.sort()
        for name in sorted(files):
            if name.lower().endswith(suffixes):
                yield Path(directory) / name


def _glob_base(pattern: str) -> str:
    """The directory part of a glob before its first wildcard (the root its matches must stay in)."""
    parts = Path(pattern).parts
    fixed = parts[: next(i for i, part in enumerate(parts) if glob.has_magic(part))]
    return str(Path(*fixed)) if fixed else "."


def _local_files(paths: Iterable[Path], root: Path) -> Iterator[SourceItem]:
    """Files from a listing; a symlink leading out of the listed tree fails its item."""
    guard = PathGuard([root])
    for path in paths:
        try:
            yield SourceItem(uri=guard.resolve(path, root))
        except PathEscapeError as exc:
            yield SourceItem(uri=str(path), error=str(exc))


def _local_manifest(path: Path, policy: FetchPolicy) -> Iterator[SourceItem]:
    base = path.resolve().parent
    guard = PathGuard(allowed_roots(policy.allowed_roots, base))

    def resolve(entry: str) -> str:
        return guard.resolve(entry, base)

    try:
        handle = path.open("rb")
    except OSError as exc:
        raise SourceError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    with handle:
        yield from _manifest(handle, str(path), resolve)


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


def _manifest(lines: Iterable[bytes], name: str, resolve: Callable[[str], str]) -> Iterator[SourceItem]:
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SourceError(f"{name} line {number}: not valid JSON ({exc})") from None
        if not isinstance(record, dict) or not isinstance(record.get("image"), str) or not record["image"]:
            raise SourceError(f'{name} line {number}: needs an object with an "image" (a path or URL)')
        question = record.get("question")
        if question is not None and not isinstance(question, str):
            raise SourceError(f'{name} line {number}: "question" must be a string')
        metadata = record.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise SourceError(f'{name} line {number}: "metadata" must be an object')
        metadata = {**metadata, **{k: v for k, v in record.items() if k not in MANIFEST_KEYS}}
        entry: str = record["image"]
        common = dict(question=question, metadata=metadata, reference=record.get("reference"))
        if entry.startswith("file://"):
            entry = urlsplit(entry).path
        if is_url(entry):
            yield SourceItem(uri=entry, **common)
            continue
        try:
            yield SourceItem(uri=resolve(entry), **common)
        except PathEscapeError as exc:
            yield SourceItem(uri=entry, error=str(exc), **common)


def _fsspec(url: str, suffixes: tuple[str, ...]) -> Iterator[SourceItem]:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise SourceError(f"cannot open {url}: {exc}") from None
    if path.endswith(".jsonl") and not glob.has_magic(path):
        base = posixpath.dirname(path)

        def resolve(entry: str) -> str:
            return fs.unstrip_protocol(posixpath.normpath(posixpath.join(base, entry)))

        try:
            handle = fs.open(path, "rb")
        except (OSError, FileNotFoundError) as exc:
            raise SourceError(f"cannot read manifest {url}: {exc}") from None
        with handle:
            yield from _manifest(handle, url, resolve)
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
