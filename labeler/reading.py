"""Reading one item's image bytes, whatever its URI: a local path, an http(s) URL, an object-store URL.

Every URI passes `engine.locations` again here, whatever was checked at submit (rows may
predate a rule, a failed item may be retried): http(s) then goes through `engine.fetch`
(the SSRF guard), an enabled object store through fsspec, and a local path, resolved by
the path guard at submit, is refused if a symlink has appeared on it since. Every read
is bounded by the image byte limit. Problems raise `ReadError` with a message that ends
up as the item's failure reason.
"""

from __future__ import annotations

from pathlib import Path

from engine.fetch import FetchError, fetch_bytes
from engine.locations import LocationRefused, Locations
from labeler.settings import LabelerConfig
from labeler.paths import PathEscapeError, check_unchanged


class ReadError(Exception):
    """The item's image could not be read; the message is the reason a person sees."""


def read_image_bytes(uri: str, settings: LabelerConfig) -> bytes:
    limit = settings.images.max_bytes
    try:
        location = Locations(settings.fetch).check(uri)
        if location.kind == "http":
            return fetch_bytes(uri, settings.fetch, max_bytes=limit)
        if location.kind == "store":
            return _read_store(uri, limit)
        path = Path(location.uri)
        check_unchanged(path)
        with path.open("rb") as handle:
            return _bounded(handle.read(limit + 1), limit, uri)
    except (LocationRefused, FetchError, PathEscapeError) as exc:
        raise ReadError(str(exc)) from None
    except FileNotFoundError:
        raise ReadError(f"no such file: {uri}") from None
    except IsADirectoryError:
        raise ReadError(f"a directory, not an image file: {uri}") from None
    except OSError as exc:
        raise ReadError(f"cannot read {uri}: {exc.strerror or exc}") from None


def _read_store(uri: str, limit: int) -> bytes:
    import fsspec

    try:
        with fsspec.open(uri, "rb") as handle:
            return _bounded(handle.read(limit + 1), limit, uri)
    except ImportError as exc:
        raise ReadError(f"cannot read {uri}: {exc}") from None


def _bounded(data: bytes, limit: int, uri: str) -> bytes:
    if len(data) > limit:  # never the size: whoever reads item errors may not see the files themselves
        raise ReadError(f"{uri} is over the {limit:,}-byte image limit")
    return data
