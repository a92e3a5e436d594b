"""engine.fetch against a real HTTP server on 127.0.0.1.

Loopback is exactly what the SSRF guard refuses, so the server is reachable only with
`allow_private`; the refusal tests check the server never saw a request. Host names other
than localhost cannot be resolved here, so the DNS-rebinding tests replace
`socket.getaddrinfo` (a fake resolver, named as such) and still connect for real.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine import fetch
from engine.fetch import FetchError, FetchRefused, address_refusal, fetch_bytes, open_url
from engine.settings import FetchPolicy

BODY = b"\x89PNG fake image bytes " * 100
OPEN = FetchPolicy(allow_private=True, timeout_s=5)


class _Handler(BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None]] = []

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.seen.append((self.path, self.headers.get("Host")))
        route = self.path.split("?", 1)[0]
        if route == "/image.png":
            self._send(200, BODY)
        elif route == "/redirect":
            self._redirect(self.path.split("to=", 1)[1])
        elif route == "/loop":
            self._redirect("/loop")
        elif route == "/declared-big":
            self.send_response(200)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
        elif route == "/chunked-big":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(64):
                chunk = b"x" * 4096
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif route == "/slow":
            time.sleep(3)
            self._send(200, b"late")
        else:
            self._send(404, b"no such thing")

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _clear_seen() -> None:
    _Handler.seen.clear()


def test_fetches_from_loopback_only_when_private_addresses_are_allowed(server: str) -> None:
    assert fetch_bytes(f"{server}/image.png", OPEN) == BODY
    _Handler.seen.clear()
    with pytest.raises(FetchRefused, match=r"127\.0\.0\.1, a loopback address .*ALLOW_PRIVATE=true"):
        fetch_bytes(f"{server}/image.png", FetchPolicy())
    assert _Handler.seen == [], "a refused URL must not be requested at all"


def test_localhost_by_name_is_refused(server: str) -> None:
    port = server.rsplit(":", 1)[1]
    with pytest.raises(FetchRefused, match="localhost resolves to .*loopback"):
        fetch_bytes(f"http://localhost:{port}/image.png", FetchPolicy())
    assert _Handler.seen == []


@pytest.mark.parametrize(
    "url, words",
    [
        ("http://10.1.2.3/x.png", "a private address"),
        ("http://172.16.0.1/x.png", "a private address"),
        ("http://192.168.1.1/x.png", "a private address"),
        ("http://169.254.169.254/latest/meta-data/", "a link-local address"),
        ("http://[::1]/x.png", "a loopback address"),
        ("http://[fe80::1]/x.png", "a link-local address"),
        ("http://[fc00::1]/x.png", "a private address"),
        ("http://224.0.0.1/x.png", "a multicast address"),
        ("http://0.0.0.0/x.png", "an unspecified address"),
        ("http://0.1.2.3/x.png", "a private address"),  # 0.0.0.0/8 is "this network"
        ("http://100.64.0.1/x.png", "a non-public address"),  # carrier-grade NAT
        ("http://240.0.0.1/x.png", "a reserved address"),
        ("http://[::ffff:127.0.0.1]/x.png", "a loopback address"),  # IPv4-mapped
        ("http://[64:ff9b::a9fe:a9fe]/x.png", "a link-local address"),  # NAT64 of 169.254.169.254
        ("http://[2002:7f00:1::]/x.png", "a loopback address"),  # 6to4 of 127.0.0.1
        ("http://2130706433/x.png", "a loopback address"),  # 127.0.0.1 as one integer
    ],
)
def test_internal_addresses_are_refused(url: str, words: str) -> None:
    with pytest.raises(FetchRefused, match=words):
        fetch_bytes(url, FetchPolicy())


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_pass_the_check(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x.png", "gopher://example.com/", "/etc/passwd"])
def test_only_http_and_https(url: str) -> None:
    with pytest.raises(FetchRefused, match="only http and https"):
        fetch_bytes(url, OPEN)


def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[list[str]]]) -> list[str]:
    """Resolve the given names to successive answers (a fake resolver); others resolve for real."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:
            return real(host, port, *args, **kwargs)
        asked.append(host)
        addresses = answers[host][min(len(asked), len(answers[host])) - 1]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    monkeypatch.setattr(fetch.socket, "getaddrinfo", getaddrinfo)
    return asked


def test_connects_to_the_address_it_checked(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS rebinding: a second lookup would answer 10.255.255.1; the fetch must never make it."""
    port = server.rsplit(":", 1)[1]
    asked = _fake_dns(monkeypatch, {"rebind.test": [["127.0.0.1"], ["10.255.255.1"]]})
    assert fetch_bytes(f"http://rebind.test:{port}/image.png", OPEN) == BODY
    assert asked == ["rebind.test"]
    assert _Handler.seen == [("/image.png", f"rebind.test:{port}")]


def test_one_internal_address_among_public_ones_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, {"mixed.test": [["93.184.216.34", "127.0.0.1"]]})
    with pytest.raises(FetchRefused, match="mixed.test resolves to 127.0.0.1, a loopback address"):
        fetch_bytes("http://mixed.test/x.png", FetchPolicy())


def test_redirects_are_followed_and_each_hop_is_checked(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert fetch_bytes(f"{server}/redirect?to=/image.png", OPEN) == BODY
    port = server.rsplit(":", 1)[1]
    # Stand-in for the internet: treat this server's 127.0.0.1 as public, and only it.
    real = fetch.address_refusal
    monkeypatch.setattr(fetch, "address_refusal", lambda ip: None if str(ip) == "127.0.0.1" else real(ip))
    _Handler.seen.clear()
    with pytest.raises(FetchRefused, match=r"http://127\.0\.0\.2:\d+/image\.png: 127\.0\.0\.2 resolves to 127\.0\.0\.2, a loopback"):
        fetch_bytes(f"{server}/redirect?to=http://127.0.0.2:{port}/image.png", FetchPolicy())
    assert [path for path, _ in _Handler.seen] == [f"/redirect?to=http://127.0.0.2:{port}/image.png"]
    with pytest.raises(FetchRefused, match="only http and https"):
        fetch_bytes(f"{server}/redirect?to=file:///etc/passwd", FetchPolicy())


def test_redirect_loops_end(server: str) -> None:
    with pytest.raises(FetchError, match="more than 5 redirects"):
        fetch_bytes(f"{server}/loop", OPEN)


def test_size_limits(server: str) -> None:
    small = FetchPolicy(allow_private=True, max_bytes=100_000, timeout_s=5)
    with pytest.raises(FetchError, match="1,000,000,000 bytes is over the 100,000-byte limit"):
        fetch_bytes(f"{server}/declared-big", small)
    with pytest.raises(FetchError, match="the body is over the 100,000-byte limit"):
        fetch_bytes(f"{server}/chunked-big", small)
    assert len(fetch_bytes(f"{server}/chunked-big", small, max_bytes=300_000)) == 64 * 4096


def test_time_limit(server: str) -> None:
    started = time.monotonic()
    with pytest.raises(FetchError, match=r"timed out after 0\.5 s"):
        fetch_bytes(f"{server}/slow", FetchPolicy(allow_private=True, timeout_s=0.5))
    assert time.monotonic() - started < 2.5


def test_http_errors_name_the_status(server: str) -> None:
    with pytest.raises(FetchError, match="HTTP 404 Not Found"):
        fetch_bytes(f"{server}/missing.png", OPEN)


def test_unresolvable_host() -> None:
    with pytest.raises(FetchError, match="cannot resolve host 'no-such-host.invalid'"):
        fetch_bytes("http://no-such-host.invalid/x.png", OPEN)


def test_streaming_yields_the_body_in_chunks(server: str) -> None:
    with open_url(f"{server}/chunked-big", OPEN) as chunks:
        sizes = [len(chunk) for chunk in chunks]
    assert sum(sizes) == 64 * 4096
