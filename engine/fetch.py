"""The one safe URL fetcher: every http(s) fetch in llava-labeler goes through here.

Sources fetch manifests and images, the predictor fetches OpenAI `image_url` parts:
both take URLs from people who may not be trusted, so a fetch must not become a way
into the cluster (SSRF). A fetch therefore

- accepts only `http` and `https`;
- resolves the host itself and refuses it when ANY resolved address is loopback,
  link-local (cloud metadata), private, multicast, reserved or otherwise non-public
  (IPv4 inside IPv6 — mapped, NAT64, 6to4 — is judged by the IPv4 address), unless
  `FetchPolicy.allow_private` is on;
- connects to the address it checked: the URL's host is replaced by that IP while the
  `Host` header and TLS SNI keep the name (certificates are verified against the
  name), so a DNS answer that changes between check and connect (rebinding) cannot
  move the connection;
- follows redirects itself, checking every hop the same way, at most `MAX_REDIRECTS`;
- ignores proxy environment variables (a proxy would make the address check moot);
- stops at the byte limit and after `FetchPolicy.timeout_s` in all.

Refusals raise `FetchRefused`; other failures `FetchError`; both name the URL and the problem.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urljoin

import httpx

from engine.settings import FetchPolicy

SCHEMES = ("http", "https")
MAX_REDIRECTS = 5
ALLOW_HINT = "set LLAVA_LABELER_FETCH__ALLOW_PRIVATE=true to allow internal addresses"
NAT64 = ipaddress.ip_network("64:ff9b::/96")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class FetchError(Exception):
    """A URL could not be fetched; the message says why, for a person to read."""


class FetchRefused(FetchError):
    """The policy forbids this URL (scheme, or an internal address)."""


def _embedded_ipv4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4), else the address itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip.teredo is not None:
            return ip.teredo[1]
    return ip


def address_refusal(ip: IPAddress) -> str | None:
    """Why `ip` is not a public internet address ("a loopback address", ...), or None when it is."""
    ip = _embedded_ipv4(ip)
    for attribute, phrase in (
        ("is_unspecified", "an unspecified address"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_reserved", "a reserved address"),
        ("is_private", "a private address"),
    ):
        if getattr(ip, attribute):
            return phrase
    return None if ip.is_global else "a non-public address"


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps a server to this machine (a hostname may resolve anywhere: no)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError(f"cannot resolve host {host!r}: {exc}") from None
    addresses = list(dict.fromkeys(str(info[4][0]).split("%", 1)[0] for info in infos))
    if not addresses:
        raise FetchError(f"cannot resolve host {host!r}: no addresses")
    return addresses


def _check(url: str, policy: FetchPolicy) -> tuple[httpx.URL, str]:
    """The parsed URL and the checked address to connect to, or `FetchRefused`."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise FetchRefused(f"refused {url!r}: not a valid URL ({exc}); only http and https URLs are fetched") from None
    if parsed.scheme not in SCHEMES or not parsed.host:
        raise FetchRefused(f"refused {url}: only http and https URLs with a host are fetched")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return parsed, check_host(parsed.host, port, policy, url)


def check_host(host: str, port: int, policy: FetchPolicy, what: str) -> str:
    """The address to connect to for `host`, or `FetchRefused` naming `what` when any address is internal.

    Public so that every connection the product makes (object-store endpoints too) passes the same check.
    """
    addresses = _resolve(host, port)
    if not policy.allow_private:
        for address in addresses:
            refusal = address_refusal(ipaddress.ip_address(address))
            if refusal:
                raise FetchRefused(f"refused {what}: {host} resolves to {address}, {refusal} ({ALLOW_HINT})")
    return addresses[0]


@contextmanager
def open_url(
    url: str,
    policy: FetchPolicy,
    *,
    max_bytes: int | None = None,
    verify: ssl.SSLContext | bool = True,
) -> Iterator[Iterator[bytes]]:
    """Stream the body of a successful GET of `url` as chunks, within the policy's limits.

    `max_bytes` replaces the policy's byte limit for this call (a manifest may be larger
    than an image); the time limit covers the whole fetch, redirects included.
    """
    limit = max_bytes if max_bytes is not None else policy.max_bytes
    deadline = time.monotonic() + policy.timeout_s
    timed_out = f"timed out after {policy.timeout_s:g} s fetching {url}"
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        target, address = _check(current, policy)
        # A client per hop: a pooled TLS connection made for one name is never reused for another.
        with httpx.Client(timeout=policy.timeout_s, follow_redirects=False, trust_env=False, verify=verify) as client:
            request = client.build_request(
                "GET",
                target.copy_with(host=address),
                headers={"Host": target.netloc.decode("ascii")},
                extensions={"sni_hostname": target.host} if target.scheme == "https" else {},
            )
            try:
                response = client.send(request, stream=True)
            except httpx.TimeoutException:
                raise FetchError(timed_out) from None
            except httpx.HTTPError as exc:
                raise FetchError(f"cannot fetch {current}: {exc or type(exc).__name__}") from None
            try:
                if response.is_redirect:
                    current = urljoin(current, response.headers["location"])
                    continue
                if response.status_code >= 400:
                    raise FetchError(f"HTTP {response.status_code} {response.reason_phrase} from {current}")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise FetchError(f"{current}: Content-Length {int(declared):,} bytes is over the {limit:,}-byte limit")
                yield _limited(response, current, limit, deadline, timed_out)
                return
            finally:
                response.close()
    raise FetchError(f"{url}: more than {MAX_REDIRECTS} redirects")


def _limited(response: httpx.Response, url: str, limit: int, deadline: float, timed_out: str) -> Iterator[bytes]:
    received = 0
    try:
        for chunk in response.iter_bytes():
            received += len(chunk)
            if received > limit:
                raise FetchError(f"{url}: the body is over the {limit:,}-byte limit")
            if time.monotonic() > deadline:
                raise FetchError(timed_out)
            yield chunk
    except httpx.TimeoutException:
        raise FetchError(timed_out) from None
    except httpx.HTTPError as exc:
        raise FetchError(f"cannot fetch {url}: {exc or type(exc).__name__}") from None


def fetch_bytes(url: str, policy: FetchPolicy, *, max_bytes: int | None = None) -> bytes:
    """The whole body of `url` (see `open_url` for the rules)."""
    with open_url(url, policy, max_bytes=max_bytes) as chunks:
        return b"".join(chunks)
