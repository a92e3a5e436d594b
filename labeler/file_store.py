"""Where the batch API keeps its files: a directory by default, any fsspec URL in a cluster.

Uploaded batch files, result files, the batch documents (JSON) and the images that came as
`data:` URLs live here, never in the database: files of hundreds of megabytes stay out of
PostgreSQL and the API needs no migration. Workers read the `data:` images from here too, so
in a cluster the store must be a place both reach: an object store enabled in
`fetch.object_stores`, or a volume mounted in the API and the workers alike.
Keys are relative paths the API makes itself from validated ids, never from a client's text.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from typing import IO, Any

from labeler.settings import LabelerConfig


class FileStore:
    """Bytes and JSON documents under one root (a directory or an fsspec URL)."""

    def __init__(self, url: str):
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        self.fs, root = fsspec.core.url_to_fs(url)
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = os.path.realpath(root) if self.local else root.rstrip("/")
        self.fs.makedirs(self.root, exist_ok=True)

    def path(self, key: str) -> str:
        return posixpath.join(self.root, key)

    def uri(self, key: str) -> str:
        """How a worker names the object: the absolute path of a local store, the full URL of a remote one."""
        return self.path(key) if self.local else self.fs.unstrip_protocol(self.path(key))

    def write(self, key: str, data: bytes) -> None:
        """Write whole; a local file is replaced in one step, so a reader never sees half a document."""
        path = self.path(key)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        if not self.local:
            self.fs.pipe_file(path, data)
            return
        partial = f"{path}.{uuid.uuid4().hex}.part"
        with open(partial, "wb") as handle:
            handle.write(data)
        os.replace(partial, path)

    def open(self, key: str, mode: str = "rb") -> IO[bytes]:
        if "w" in mode:
            self.fs.makedirs(posixpath.dirname(self.path(key)), exist_ok=True)
        return self.fs.open(self.path(key), mode)

    def read(self, key: str) -> bytes:
        return self.fs.cat_file(self.path(key))

    def size(self, key: str) -> int:
        return int(self.fs.size(self.path(key)))

    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def delete(self, key: str) -> None:
        self.fs.rm(self.path(key), recursive=True)

    def keys(self, prefix: str) -> list[str]:
        """The keys directly under `prefix` (a folder), sorted."""
        folder = self.path(prefix)
        if not self.fs.exists(folder):
            return []
        return sorted(posixpath.join(prefix, posixpath.basename(p.rstrip("/"))) for p in self.fs.ls(folder, detail=False))

    def write_json(self, key: str, document: dict[str, Any]) -> None:
        self.write(key, json.dumps(document, ensure_ascii=False).encode())

    def read_json(self, key: str) -> dict[str, Any]:
        return json.loads(self.read(key))


def store_for(settings: LabelerConfig) -> FileStore:
    """The configured store (`api.store`), or the directory `data_dir/api`."""
    return FileStore(settings.api.store or str((settings.data_dir / "api").resolve()))
