"""Which locations llava-labeler opens: ONE allow-list for every place a path or URL is accepted.

A location (a job's source, a manifest line, a stored item, an image URL) often comes
from someone the operator does not control, and fsspec opens far more than files:
`local://` and `file://` read this machine, `zip://…::http://…`, `ftp://`, `webhdfs://`,
`reference://` or `simplecache::` reach any address. So a location is one of

- a local path (a plain path, or a `file://` URL without a host): the caller's path
  guard decides which directories it may be in;
- an `http`/`https` URL: fetched by `engine.fetch`, whose address check refuses
  internal addresses as it connects;
- a URL of an object store the operator enabled (`FetchPolicy.object_stores`: s3, gs,
  az; memory for tests), whose configured endpoint (environment or fsspec config)
  passes the same address check, so a store aimed at 127.0.0.1 or a private address
  is refused unless `allow_private` is on.

Everything else is refused with a reason naming the scheme: every other scheme, chained
URLs (`a::b`), `data:` URLs. A location that starts `word:` is a URL; a local file whose
name has a colon in its first component is written `./name`.
"""

from __future__ import annotations

import os
import re
import reprlib
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit
from urllib.request import url2pathname

from engine.fetch import FetchError, check_host
from engine.settings import FetchPolicy

Kind = Literal["local", "http", "store"]
STORES: dict[str, tuple[str, ...]] = {  # an object store one may enable -> the URL schemes that name it
    "s3": ("s3", "s3a"),
    "gs": ("gs", "gcs"),
    "az": ("az", "abfs", "abfss"),
    "memory": ("memory",),
}
ENABLE_HINT = """to read an object store set LLAVA_LABELER_FETCH__OBJECT_STORES='["s3"]' (s3, gs, az)"""
_STORE_OF = {scheme: store for store, schemes in STORES.items() for scheme in schemes}
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+):")  # two letters at least: not a drive letter
_SHOWN = reprlib.Repr()
_SHOWN.maxstring = 120  # a data: URL in a message is cut short


class LocationRefused(ValueError):
    """The location is not one llava-labeler may open; the message names it and says why."""


@dataclass(frozen=True)
class Location:
    """An accepted location: `uri` is the local path for `local`, the URL as given otherwise."""

    kind: Kind
    uri: str


class Locations:
    """The allow-list under one policy; each object store's endpoint is checked once per instance (one listing)."""

    def __init__(self, policy: FetchPolicy):
        self.policy = policy
        self._endpoint_refusals: dict[str, str | None] = {}

    def check(self, location: str) -> Location:
        """What `location` is, or `LocationRefused` saying why it may not be opened."""
        match = _SCHEME.match(location)
        if match is None:
            return Location("local", location)
        shown = _SHOWN.repr(location)
        if "::" in location:
            raise LocationRefused(f"refused {shown}: chained URLs ('::') are not read")
        scheme = match.group(1).lower()
        if scheme == "file":
            parts = urlsplit(location)
            if parts.netloc not in ("", "localhost"):
                raise LocationRefused(f"refused {shown}: a file URL with a host; give a local path")
            return Location("local", url2pathname(parts.path))
        if scheme in ("http", "https"):
            return Location("http", location)
        store = _STORE_OF.get(scheme)
        if store is None or store not in self.policy.object_stores:
            enabled = ", ".join(self.policy.object_stores) or "none"
            raise LocationRefused(
                f"refused {shown}: the {scheme}: scheme is not read (only local paths, http(s) URLs and "
                f"the enabled object stores: {enabled}); {ENABLE_HINT}"
            )
        refusal = self._endpoint_refusal(store)
        if refusal:
            raise LocationRefused(f"refused {shown}: {refusal}")
        return Location("store", location)

    def _endpoint_refusal(self, store: str) -> str | None:
        """Why the store's configured endpoint may not be reached, or None (resolved once: a listing has many lines)."""
        if store not in self._endpoint_refusals:
            refusals = (_refusal(store, endpoint, self.policy) for endpoint in _endpoints(store))
            self._endpoint_refusals[store] = next((refusal for refusal in refusals if refusal), None)
        return self._endpoint_refusals[store]


def _refusal(store: str, endpoint: str, policy: FetchPolicy) -> str | None:
    """Why the store's `endpoint` may not be reached (the fetch address check), or None."""
    parts = urlsplit(endpoint if "//" in endpoint else f"//{endpoint}")
    try:
        host, port = parts.hostname, parts.port or (80 if parts.scheme == "http" else 443)
    except ValueError:  # a port that is not a number
        host = None
    if not host:
        return f"the {store} endpoint is not a valid URL"
    try:
        check_host(host, port, policy, f"the {store} endpoint ({host})")
    except FetchError as exc:
        return str(exc)
    return None


def _endpoints(store: str) -> list[str]:
    """The endpoints other than its public default that the store's fsspec driver would use (environment, fsspec config)."""
    import fsspec.config

    conf: dict = {}
    for scheme in STORES[store]:
        conf.update(fsspec.config.conf.get(scheme, {}))
    env = os.environ
    found: list[str | None]
    if store == "s3":
        found = [env.get("AWS_ENDPOINT_URL_S3"), env.get("AWS_ENDPOINT_URL"), conf.get("endpoint_url")]
        found.append((conf.get("client_kwargs") or {}).get("endpoint_url"))
    elif store == "gs":
        found = [env.get("STORAGE_EMULATOR_HOST"), conf.get("endpoint_url")]
    elif store == "az":
        found = [conf.get("account_host")]
        found += _azure_endpoints(env.get("AZURE_STORAGE_CONNECTION_STRING")) + _azure_endpoints(conf.get("connection_string"))
    else:  # memory: in this process
        found = []
    return [str(endpoint) for endpoint in found if endpoint]


def _azure_endpoints(connection_string: str | None) -> list[str]:
    """The blob endpoint an Azure connection string names (never the string itself: it holds the key)."""
    if not connection_string:
        return []
    fields = dict(part.split("=", 1) for part in connection_string.split(";") if "=" in part)
    if fields.get("UseDevelopmentStorage", "").lower() == "true":
        return ["http://127.0.0.1:10000"]
    if fields.get("BlobEndpoint"):
        return [fields["BlobEndpoint"]]
    if fields.get("AccountName"):
        return [f"https://{fields['AccountName']}.blob.{fields.get('EndpointSuffix', 'core.windows.net')}"]
    return []
