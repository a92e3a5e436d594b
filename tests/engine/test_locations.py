"""engine.locations: the one allow-list of locations (local paths, http(s), enabled object stores).

Checking a location connects to nothing: an object store's endpoint is only resolved
(IP literals here, so not even DNS is asked) and judged by the fetch address check.
"""

from __future__ import annotations

import fsspec.config
import pytest

from engine.locations import ENABLE_HINT, LocationRefused, Locations
from engine.settings import FetchPolicy

ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "STORAGE_EMULATOR_HOST", "AZURE_STORAGE_CONNECTION_STRING")


@pytest.fixture(autouse=True)
def _no_configured_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test configures the endpoints it is about, and nothing from the machine leaks in."""
    for name in ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for scheme in ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"):
        monkeypatch.delitem(fsspec.config.conf, scheme, raising=False)


@pytest.mark.parametrize(
    "location, path",
    [
        ("/data/images/a.png", "/data/images/a.png"),
        ("imgs/a.png", "imgs/a.png"),
        ("./odd:name.png", "./odd:name.png"),
        ("file:///data/two%20words.png", "/data/two words.png"),
        ("file://localhost/data/a.png", "/data/a.png"),
    ],
)
def test_local_paths_and_file_urls_are_local(location: str, path: str) -> None:
    checked = Locations(FetchPolicy()).check(location)
    assert (checked.kind, checked.uri) == ("local", path)


def test_http_urls_go_to_the_fetcher() -> None:
    locations = Locations(FetchPolicy())
    assert locations.check("https://images.example.com/a.png").kind == "http"
    assert locations.check("HTTP://images.example.com/a.png").kind == "http"


@pytest.mark.parametrize(
    "location, scheme",
    [
        ("local:///etc/hostname", "local"),
        ("webhdfs://127.0.0.1:9870/x.png", "webhdfs"),
        ("ftp://127.0.0.1:21/x.png", "ftp"),
        ("reference://x", "reference"),
        ("sftp://127.0.0.1/x.png", "sftp"),
        ("data:image/png;base64,iVBORw0KGgo=", "data"),
        ("LOCAL:///etc/hostname", "local"),
        ("s3://bucket/x.png", "s3"),  # an object store, not enabled
        ("memory://bucket/x.png", "memory"),
    ],
)
def test_every_other_scheme_is_refused_naming_it(location: str, scheme: str) -> None:
    with pytest.raises(LocationRefused) as refused:
        Locations(FetchPolicy()).check(location)
    message = str(refused.value)
    assert f"the {scheme}: scheme is not read" in message
    assert "enabled object stores: none" in message and ENABLE_HINT in message


@pytest.mark.parametrize(
    "location",
    [
        "zip://x.png::http://127.0.0.1:8000/z.zip",
        "simplecache::http://127.0.0.1:8000/x.png",
        "memory://bucket/x.png::http://127.0.0.1:8000/x.png",  # behind an enabled store too
        "https://example.com/a.png::file:///etc/passwd",
    ],
)
def test_chained_urls_are_refused(location: str) -> None:
    with pytest.raises(LocationRefused, match=r"chained URLs \('::'\) are not read"):
        Locations(FetchPolicy(object_stores=["memory"])).check(location)


def test_a_file_url_with_a_host_is_refused() -> None:
    with pytest.raises(LocationRefused, match="a file URL with a host"):
        Locations(FetchPolicy()).check("file://fileserver/share/a.png")


def test_a_long_location_is_cut_short_in_the_message() -> None:
    with pytest.raises(LocationRefused) as refused:
        Locations(FetchPolicy()).check("data:image/png;base64," + "A" * 100_000)
    assert len(str(refused.value)) < 500


@pytest.mark.parametrize(
    "enabled, location",
    [(["s3"], "s3://bucket/a.png"), (["s3"], "s3a://bucket/a.png"), (["gs"], "gcs://bucket/a.png"), (["az"], "abfs://c/a.png")],
)
def test_enabled_object_stores_are_read_under_each_of_their_schemes(enabled: list, location: str) -> None:
    checked = Locations(FetchPolicy(object_stores=enabled)).check(location)
    assert (checked.kind, checked.uri) == ("store", location)


@pytest.mark.parametrize(
    "variable, value, words",
    [
        ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000", "the s3 endpoint (127.0.0.1): 127.0.0.1 resolves to 127.0.0.1, a loopback address"),
        ("AWS_ENDPOINT_URL_S3", "https://10.1.2.3", "10.1.2.3, a private address"),
        ("AWS_ENDPOINT_URL", "http://[::ffff:169.254.169.254]", "a link-local address"),
    ],
)
def test_an_s3_endpoint_on_an_internal_address_is_refused(monkeypatch, variable: str, value: str, words: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(LocationRefused, match="ALLOW_PRIVATE") as refused:
        Locations(FetchPolicy(object_stores=["s3"])).check("s3://bucket/a.png")
    assert words in str(refused.value)
    assert Locations(FetchPolicy(object_stores=["s3"], allow_private=True)).check("s3://bucket/a.png").kind == "store"


def test_a_public_s3_endpoint_is_accepted(monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://93.184.215.14")
    assert Locations(FetchPolicy(object_stores=["s3"])).check("s3://bucket/a.png").kind == "store"


def test_an_endpoint_from_the_fsspec_config_is_checked(monkeypatch) -> None:
    monkeypatch.setitem(fsspec.config.conf, "s3", {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}})
    with pytest.raises(LocationRefused, match="loopback address"):
        Locations(FetchPolicy(object_stores=["s3"])).check("s3a://bucket/a.png")
    monkeypatch.setitem(fsspec.config.conf, "gcs", {"endpoint_url": "http://192.168.1.20:4443"})
    with pytest.raises(LocationRefused, match="the gs endpoint .* a private address"):
        Locations(FetchPolicy(object_stores=["gs"])).check("gs://bucket/a.png")


def test_a_gcs_emulator_host_without_a_scheme_is_checked(monkeypatch) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:4443")
    with pytest.raises(LocationRefused, match="the gs endpoint .* a loopback address"):
        Locations(FetchPolicy(object_stores=["gs"])).check("gs://bucket/a.png")


@pytest.mark.parametrize(
    "connection_string",
    [
        "DefaultEndpointsProtocol=http;AccountName=dev;AccountKey=SECRET-KEY;BlobEndpoint=http://127.0.0.1:10000/dev;",
        "UseDevelopmentStorage=true",
    ],
)
def test_an_azure_connection_string_endpoint_is_checked_without_showing_the_key(monkeypatch, connection_string: str) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection_string)
    with pytest.raises(LocationRefused, match="the az endpoint .* a loopback address") as refused:
        Locations(FetchPolicy(object_stores=["az"])).check("az://container/a.png")
    assert "SECRET" not in str(refused.value)


def test_an_endpoint_that_is_no_url_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:not-a-port")
    with pytest.raises(LocationRefused, match="the s3 endpoint is not a valid URL"):
        Locations(FetchPolicy(object_stores=["s3"])).check("s3://bucket/a.png")


def test_the_memory_store_has_no_endpoint_to_check() -> None:
    assert Locations(FetchPolicy(object_stores=["memory"])).check("memory://bucket/a.png").kind == "store"
