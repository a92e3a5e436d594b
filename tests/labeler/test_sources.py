"""Sources: directories, globs, JSONL manifests (file, http, object store), the location allow-list, the path and SSRF guards."""

from __future__ import annotations

import json
import os
import re
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import fsspec
import pytest

from engine.settings import FetchPolicy
from entrypoints.settings import Settings
from labeler.reading import ReadError, read_image_bytes
from labeler.sources import SourceError, iter_source

OPEN = FetchPolicy(allow_private=True, timeout_s=5)
MEMORY = FetchPolicy(object_stores=["memory"])


def _uris(items) -> list[str]:
    return [item.uri for item in items]


def _manifest(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real HTTP server on 127.0.0.1 serving a directory: (directory, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_directory_is_walked_recursively_by_extension(mixed_folder) -> None:
    folder, _ = mixed_folder
    uris = _uris(iter_source(str(folder), FetchPolicy()))
    names = [Path(uri).name for uri in uris]
    assert sorted(names) == sorted(
        ["good-0.png", "good-1.png", "good-2.png", "good-3.png", "good-4.png", "good-5.PNG", "truncated.png", "empty.jpg", "notes-renamed.png"]
    )
    assert "readme.txt" not in names
    assert all(Path(uri).is_absolute() for uri in uris)
    assert uris == _uris(iter_source(str(folder), FetchPolicy())), "the order must be stable"
    only_jpg = _uris(iter_source(str(folder), FetchPolicy(), extensions=(".jpg",)))
    assert [Path(u).name for u in only_jpg] == ["empty.jpg"]


def test_glob(mixed_folder) -> None:
    folder, _ = mixed_folder
    names = [Path(u).name for u in _uris(iter_source(f"{folder}/**/good-*", FetchPolicy()))]
    assert sorted(names) == ["good-0.png", "good-1.png", "good-2.png", "good-3.png", "good-4.png", "good-5.PNG"]


def test_symlink_out_of_a_listed_directory_fails_its_item_without_showing_where_it_leads(tmp_path: Path, png) -> None:
    """Item errors are read by people who may not see the files: no link targets, no process ids (/proc/self)."""
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes(png(1))
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "ok.png").write_bytes(png(2))
    (folder / "link.png").symlink_to(secret)
    (folder / "me.png").symlink_to("/proc/self/status")
    (folder / "escape").symlink_to(secret.parent)
    items = {Path(item.uri).name: item for item in iter_source(str(folder), FetchPolicy())}
    assert items["ok.png"].error is None
    manifest = _manifest(folder / "m.jsonl", [{"image": "escape/secret.png"}, {"image": "/proc/self/environ"}])
    errors = [items["link.png"].error, items["me.png"].error, *(item.error for item in iter_source(str(manifest), FetchPolicy()))]
    for error in errors:
        assert "outside the allowed roots" in error
        assert str(secret) not in error and f"/proc/{os.getpid()}" not in error, error


def test_manifest_with_questions_metadata_and_references(tmp_path: Path, png) -> None:
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png(1))
    manifest = _manifest(
        tmp_path / "m.jsonl",
        [
            {"image": "imgs/a.png", "question": "What color?", "metadata": {"shot": 3}, "reference": "red", "split": "eval"},
            "",
            {"image": str(tmp_path / "imgs" / "a.png"), "reference": {"shape": "circle"}},
            {"image": "https://images.example.com/x.png"},
        ],
    )
    items = list(iter_source(str(manifest), FetchPolicy()))
    assert [i.uri for i in items] == [str(tmp_path / "imgs" / "a.png")] * 2 + ["https://images.example.com/x.png"]
    assert items[0].question == "What color?"
    assert items[0].metadata == {"shot": 3, "split": "eval"}
    assert items[0].reference == "red" and items[1].reference == {"shape": "circle"}
    assert all(item.error is None for item in items)


@pytest.mark.parametrize(
    "entry",
    ["../secret.png", "imgs/../../secret.png", "/etc/passwd", "file:///etc/passwd", "imgs/escape/secret.png"],
)
def test_manifest_paths_cannot_escape_the_manifest_directory(tmp_path: Path, png, entry: str) -> None:
    (tmp_path / "secret.png").write_bytes(png(9))
    data = tmp_path / "data"
    (data / "imgs").mkdir(parents=True)
    (data / "imgs" / "escape").symlink_to(tmp_path)  # a symlinked directory leading out
    manifest = _manifest(data / "m.jsonl", [{"image": entry}, {"image": "imgs/../imgs/ok.png"}])
    refused, allowed = list(iter_source(str(manifest), FetchPolicy()))
    assert refused.error and "outside the allowed roots" in refused.error and str(data) in refused.error
    assert allowed.error is None and allowed.uri == str(data / "imgs" / "ok.png")


def test_the_guard_follows_every_line_in_a_directory_it_has_seen(tmp_path: Path, png) -> None:
    """The guard resolves each directory once per manifest; a symlinked file among plain ones, or a path
    through a linked directory, is still followed on every line: refused where it leads out, kept where not."""
    (tmp_path / "secret.png").write_bytes(png(9))
    data = tmp_path / "data"
    (data / "imgs").mkdir(parents=True)
    (data / "imgs" / "ok.png").write_bytes(png(1))
    (data / "imgs" / "out.png").symlink_to(tmp_path / "secret.png")
    (data / "imgs" / "in.png").symlink_to(data / "imgs" / "ok.png")
    (data / "imgs" / "escape").symlink_to(tmp_path)
    entries = ["imgs/ok.png", "imgs/out.png", "imgs/in.png", "imgs/escape/secret.png", "imgs/ok.png", "imgs/out.png", "../data"]
    items = list(iter_source(str(_manifest(data / "m.jsonl", [{"image": entry} for entry in entries])), FetchPolicy()))
    assert [item.error is None for item in items] == [True, False, True, False, True, False, True]
    assert [items[n].uri for n in (0, 2, 4, 6)] == [str(data / "imgs" / "ok.png")] * 3 + [str(data)]  # links: their targets


def test_allowed_roots_widen_the_guard(tmp_path: Path, png) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "x.png").write_bytes(png(1))
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    manifest = _manifest(manifests / "m.jsonl", [{"image": "../shared/x.png"}, {"image": "/etc/hostname"}])
    policy = FetchPolicy(allowed_roots=[shared])
    inside, outside = list(iter_source(str(manifest), policy))
    assert inside.error is None and inside.uri == str(shared / "x.png")
    assert "outside the allowed roots" in outside.error


def test_a_symlink_that_appears_after_submit_is_refused_at_read_time(tmp_path: Path, png) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(png(1))
    (item,) = iter_source(str(image), FetchPolicy())
    settings = Settings()
    assert read_image_bytes(item.uri, settings) == png(1)
    image.unlink()
    image.symlink_to("/etc/hostname")
    with pytest.raises(ReadError, match="a symlink appeared after submit") as refused:
        read_image_bytes(item.uri, settings)
    assert "hostname" not in str(refused.value), "where the new link leads is not shown"


@pytest.mark.parametrize(
    "line, words",
    [
        ("{not json", "line 2: not valid JSON"),
        ('{"question": "no image"}', 'line 2: needs an object with an "image"'),
        ('["a.png"]', 'line 2: needs an object with an "image"'),
        ('{"image": "a.png", "question": 3}', 'line 2: "question" must be a string'),
        ('{"image": "a.png", "metadata": [1]}', 'line 2: "metadata" must be an object'),
    ],
)
def test_malformed_manifest_lines_name_the_line(tmp_path: Path, line: str, words: str) -> None:
    manifest = _manifest(tmp_path / "m.jsonl", [{"image": "ok.png"}, line])
    with pytest.raises(SourceError, match=words):
        list(iter_source(str(manifest), FetchPolicy()))


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="source not found"):
        list(iter_source(str(tmp_path / "nope"), FetchPolicy()))
    with pytest.raises(SourceError, match="cannot read manifest"):
        list(iter_source(str(tmp_path / "nope.jsonl"), FetchPolicy()))


def test_http_manifest_resolves_entries_against_its_url(http_root, png) -> None:
    root, base = http_root
    (root / "imgs").mkdir()
    (root / "imgs" / "a.png").write_bytes(png(3))
    _manifest(root / "m.jsonl", [{"image": "imgs/a.png", "reference": "x"}, {"image": "/etc/passwd"}])
    items = list(iter_source(f"{base}/m.jsonl", OPEN))
    assert [i.uri for i in items] == [f"{base}/imgs/a.png", f"{base}/etc/passwd"]  # never a local path
    settings = Settings(fetch=OPEN)
    assert read_image_bytes(items[0].uri, settings) == png(3)
    with pytest.raises(ReadError, match="HTTP 404"):
        read_image_bytes(items[1].uri, settings)


def test_ssrf_guard_refuses_internal_urls_by_default(http_root, png) -> None:
    root, base = http_root
    (root / "a.png").write_bytes(png(3))
    _manifest(root / "m.jsonl", [{"image": "a.png"}])
    with pytest.raises(SourceError, match="127.0.0.1, a loopback address"):
        list(iter_source(f"{base}/m.jsonl", FetchPolicy()))
    with pytest.raises(ReadError, match="loopback address"):
        read_image_bytes(f"{base}/a.png", Settings())
    with pytest.raises(ReadError, match="link-local address"):
        read_image_bytes("http://169.254.169.254/latest/meta-data/iam", Settings())


def test_image_size_limit_on_every_scheme(tmp_path: Path, http_root) -> None:
    root, base = http_root
    big = b"\x89PNG" + b"0" * 5000
    (root / "big.png").write_bytes(big)
    (tmp_path / "big.png").write_bytes(big)
    settings = Settings(fetch=OPEN, images={"max_bytes": 1000})
    with pytest.raises(ReadError, match="over the 1,000-byte limit"):
        read_image_bytes(f"{base}/big.png", settings)
    with pytest.raises(ReadError, match="over the 1,000-byte image limit") as refused:
        read_image_bytes(str(tmp_path / "big.png"), settings)
    assert f"{len(big):,}" not in str(refused.value) and str(len(big)) not in str(refused.value), "a local file's size is not shown"


def test_object_store_prefix_glob_and_manifest(png) -> None:
    fs = fsspec.filesystem("memory")
    prefix = f"/bucket-{os.getpid()}"
    fs.pipe(f"{prefix}/a/1.png", png(1))
    fs.pipe(f"{prefix}/a/b/2.jpg", png(2))
    fs.pipe(f"{prefix}/a/notes.txt", b"text")
    fs.pipe(f"{prefix}/m.jsonl", b'{"image": "a/1.png", "question": "q?"}\n{"image": "s3://other/x.png"}\n')
    try:
        listed = _uris(iter_source(f"memory://{prefix}/a", MEMORY))
        assert listed == [f"memory://{prefix}/a/1.png", f"memory://{prefix}/a/b/2.jpg"]
        assert _uris(iter_source(f"memory://{prefix}/a/**/*.jpg", MEMORY)) == [f"memory://{prefix}/a/b/2.jpg"]
        inside, s3 = iter_source(f"memory://{prefix}/m.jsonl", MEMORY)
        assert (inside.uri, inside.question, inside.error) == (f"memory://{prefix}/a/1.png", "q?", None)
        assert "the s3: scheme is not read" in s3.error, "s3 is not enabled"
        assert read_image_bytes(listed[0], Settings(fetch=MEMORY)) == png(1)
        with pytest.raises(ReadError, match="the memory: scheme is not read"):
            read_image_bytes(listed[0], Settings())
    finally:
        fs.rm(prefix, recursive=True)


def test_remote_store_without_its_driver_says_what_to_install(monkeypatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    with pytest.raises(SourceError, match="s3fs"):
        list(iter_source("s3://bucket/prefix/", FetchPolicy(object_stores=["s3"])))


class _Knock(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.knocks.append(self.client_address)  # type: ignore[attr-defined]
        self.request.sendall(b"220 ready\r\n")  # an FTP greeting; an HTTP client gets no further either


@pytest.fixture
def listener() -> Iterator[tuple[int, list]]:
    """A TCP server on 127.0.0.1 that records every connection: (port, connections so far)."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Knock)
    server.daemon_threads = True
    server.knocks = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], server.knocks  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def _assert_never_reached(listener: tuple[int, list]) -> None:
    """No connection came in, and the listener did listen (the one made now is recorded)."""
    port, knocks = listener
    assert knocks == [], f"the listener was reached: {knocks}"
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    deadline = time.monotonic() + 5
    while not knocks and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(knocks) == 1, "the listener records nothing: the test would prove nothing"


def _attacks(port: int, outside: Path) -> dict[str, str]:
    """Locations that once read files or reached loopback servers -> words of their refusal."""
    return {
        "local:///etc/hostname": "the local: scheme is not read",
        f"local://{outside}": "the local: scheme is not read",
        f"zip://x.png::http://127.0.0.1:{port}/z.zip": "chained URLs ('::') are not read",
        f"webhdfs://127.0.0.1:{port}/x.png": "the webhdfs: scheme is not read",
        f"ftp://127.0.0.1:{port}/x.png": "the ftp: scheme is not read",
        "reference://x": "the reference: scheme is not read",
        f"simplecache::http://127.0.0.1:{port}/x.png": "chained URLs ('::') are not read",
        f"memory://x.png::ftp://127.0.0.1:{port}/x.png": "chained URLs ('::') are not read",
        "data:image/png;base64,iVBORw0KGgo=": "the data: scheme is not read",
        "s3://bucket/x.png": "the s3: scheme is not read",
    }


@pytest.mark.parametrize("manifest_at", ["local", "http", "memory"])
def test_manifest_lines_of_other_schemes_fail_alone_and_reach_nothing(manifest_at, request, tmp_path, png, listener) -> None:
    """Even with private addresses allowed, the scheme rule alone stops them; at read time it holds again."""
    outside = tmp_path / "outside.png"
    outside.write_bytes(png(1))
    attacks = _attacks(listener[0], outside)
    lines = [{"image": image} for image in ["ok.png", *attacks]]
    policy = FetchPolicy(allow_private=True, timeout_s=5, object_stores=["memory"])
    fs = fsspec.filesystem("memory")
    prefix = f"/manifests-{os.getpid()}"
    if manifest_at == "local":
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "ok.png").write_bytes(png(2))
        source = str(_manifest(tmp_path / "m" / "m.jsonl", lines))
    elif manifest_at == "http":
        root, base = request.getfixturevalue("http_root")
        (root / "ok.png").write_bytes(png(2))
        _manifest(root / "m.jsonl", lines)
        source = f"{base}/m.jsonl"
    else:
        fs.pipe(f"{prefix}/ok.png", png(2))
        fs.pipe(f"{prefix}/m.jsonl", "".join(json.dumps(line) + "\n" for line in lines).encode())
        source = f"memory://{prefix}/m.jsonl"
    try:
        first, *refused = iter_source(source, policy)
        settings = Settings(fetch=policy)
        assert first.error is None and read_image_bytes(first.uri, settings) == png(2)
        assert [item.uri for item in refused] == list(attacks)
        for item in refused:
            assert attacks[item.uri] in item.error, item.error
            assert "LLAVA_LABELER_FETCH__OBJECT_STORES" in item.error or "chained" in item.error
            with pytest.raises(ReadError, match=re.escape(attacks[item.uri])):  # rows that predate the rule
                read_image_bytes(item.uri, settings)
    finally:
        if fs.exists(prefix):
            fs.rm(prefix, recursive=True)
    _assert_never_reached(listener)


@pytest.mark.parametrize(
    "source, words",
    [
        ("local:///etc", "the local: scheme is not read"),
        ("ftp://127.0.0.1:{port}/", "the ftp: scheme is not read"),
        ("webhdfs://127.0.0.1:{port}/images/", "the webhdfs: scheme is not read"),
        ("zip://*.png::http://127.0.0.1:{port}/z.zip", "chained URLs"),
        ("memory://bucket/images/", "the memory: scheme is not read"),
    ],
)
def test_a_refused_source_stops_the_submit(source: str, words: str, listener) -> None:
    with pytest.raises(SourceError, match=re.escape(words)):
        list(iter_source(source.format(port=listener[0]), OPEN))
    _assert_never_reached(listener)


def test_globs_do_not_follow_symlink_loops_nor_list_a_file_twice(tmp_path: Path, png) -> None:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(png(1))
    (folder / "sub" / "b.png").write_bytes(png(2))
    (folder / "loop").symlink_to(folder)  # two loops: globbing them never ended
    (folder / "sub" / "back").symlink_to(folder)
    (folder / "alias.png").symlink_to(folder / "a.png")
    (folder / "sub" / "alias.png").symlink_to(folder / "a.png")
    (folder / "c.dat").write_bytes(png(3))
    (folder / "c.png").symlink_to(folder / "c.dat")  # the listing names c.dat only through links
    (folder / "again.png").symlink_to(folder / "c.dat")
    expected = [str(folder / "a.png"), str(folder / "c.dat"), str(folder / "sub" / "b.png")]
    for source in (f"{folder}/**/*.png", str(folder)):
        items = list(iter_source(source, FetchPolicy()))
        assert sorted(item.uri for item in items) == expected, source
        assert all(item.error is None for item in items)
    one_down = _uris(iter_source(f"{folder}/*/*.png", FetchPolicy()))  # not through loop/ nor sub/back/
    assert one_down == [str(folder / "a.png"), str(folder / "sub" / "b.png")], "a.png through sub/alias.png, once"


def test_a_relative_glob_lists_real_paths(tmp_path: Path, png, monkeypatch) -> None:
    (tmp_path / "imgs" / "deeper").mkdir(parents=True)
    (tmp_path / "imgs" / "a.png").write_bytes(png(1))
    (tmp_path / "imgs" / "deeper" / "b.png").write_bytes(png(2))
    monkeypatch.chdir(tmp_path)
    items = list(iter_source("imgs/*.png", FetchPolicy()))
    assert [(item.uri, item.error) for item in items] == [(str(tmp_path / "imgs" / "a.png"), None)]
    assert read_image_bytes(items[0].uri, Settings()) == png(1)
    deep = _uris(iter_source("./imgs/**/*.png", FetchPolicy()))
    assert deep == [str(tmp_path / "imgs" / "a.png"), str(tmp_path / "imgs" / "deeper" / "b.png")]
