"""Reading one item's image bytes, whatever its URI: a local path, an http(s) URL, an fsspec URL.

Every read is bounded by the image byte limit. http(s) goes through `engine.fetch`
(the SSRF guard); other schemes through fsspec; local paths were resolved by the path
guard at submit and are refused if a symlink has appeared on them since. Problems
raise `ReadError` with a message that ends up as the item's failure reason.
"""

from __future__ import annotations

from pathlib import Path

from engine.fetch import FetchError, fetch_bytes
from engine.settings import Settings
from labeler.paths import PathEscapeError, check_unchanged
from labeler.sources import is_http, is_url


class ReadError(Exception):
    """The item's image could not be read; the message is the reason a person sees."""


def read_image_bytes(uri: str, settings: Settings) -> bytes:
    limit = settings.images.max_bytes
    try:
        if is_http(uri):
            return fetch_bytes(uri, settings.fetch, max_bytes=limit)
        if is_url(uri):
            return _read_fsspec(uri, limit)
        path = Path(uri)
        check_unchanged(path)
        with path.open("rb") as handle:
            return _bounded(handle.read(limit + 1), limit, uri)
    except (FetchError, PathEscapeError) as exc:
        raise ReadError(str(exc)) from None
    except FileNotFoundError:
        raise ReadError(f"no such file: {uri}") from None
    except IsADirectoryError:
        raise ReadError(f"a directory, not an image file: {uri}") from None
    except OSError as exc:
        raise ReadError(f"cannot read {uri}: {exc.strerror or exc}") from None


def _read_fsspec(uri: str, limit: int) -> bytes:
    import fsspec

    try:
        with fsspec.open(uri, "rb") as handle:
            return _bounded(handle.read(limit + 1), limit, uri)
    except ImportError as exc:
        raise ReadError(f"cannot read {uri}: {exc}") from None


def _bounded(data: bytes, limit: int, uri: str) -> bytes:
    if len(data) > limit:
        raise ReadError(f"{uri} is over the {limit:,}-byte image limit")
    return data
