"""Throttling of the console's password login: failed tries slow down, then lock, each client and each name.

One shared password guards the console, so nothing but the number of tries stands between a
guesser and the images. Failures are counted per client (its address, see `client_key`) and per
reviewer name (as typed, case and surrounding blanks ignored), in one store per server process
that every session shares: a reload or a new browser session starts with the same counts.
(Each console replica counts for itself: a guesser spread over N replicas gets N times the tries.)

The rules (`Rules`, from the `ui.login_*` settings): the first `free_failures` wrong passwords
cost nothing; after that each failure makes the next try wait 1 s, 2 s, 4 s, ... (at most the
lockout); `max_failures` of them lock the client or name for `lockout_s`. A count is forgotten
`lockout_s` after its last failure, and a correct password clears the counts of its client and
name. A try that must wait is refused before the password is looked at, so a right guess made
during a lockout gains nothing; refused tries are not counted, so waiting out a lock works.

Every admitted try counts as a failure at once (`admit`) and only a correct password takes it
back (`succeeded`): parallel sessions submitting together cannot all slip past the same count.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ui.settings import UISettings

MAX_KEYS = 100_000  # bounds the store's memory; the oldest counts go first


@dataclass(frozen=True)
class Rules:
    """How many failures are free, how many lock, and for how long."""

    free_failures: int
    max_failures: int
    lockout_s: float

    @classmethod
    def of(cls, ui: UISettings) -> Rules:
        return cls(ui.login_free_failures, ui.login_max_failures, ui.login_lockout_s)

    def wait_after(self, failures: int) -> float:
        """Seconds a key must wait after its latest failure, having failed `failures` times."""
        if failures >= self.max_failures:
            return self.lockout_s
        if failures < self.free_failures:
            return 0.0
        return min(2.0 ** (failures - self.free_failures), self.lockout_s)


@dataclass
class _Failures:
    count: int
    last: float  # clock time of the latest failure


class LoginThrottle:
    """Failed sign-ins by key, thread-safe (sessions run in threads of one process), forgotten after the lockout."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS):
        self._clock = clock
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, _Failures] = OrderedDict()  # oldest latest-failure first

    def admit(self, keys: Sequence[str], rules: Rules) -> float:
        """0.0 if a try may be made now (and it is counted as a failure); else the seconds to wait (nothing counted)."""
        with self._lock:
            now = self._clock()
            self._forget_before(now - rules.lockout_s)
            wait = max((self._wait(key, now, rules) for key in keys), default=0.0)
            if wait > 0:
                return wait
            for key in keys:
                entry = self._failures.pop(key, None) or _Failures(0, now)
                entry.count, entry.last = entry.count + 1, now
                self._failures[key] = entry  # to the end: the order stays by latest failure
            while len(self._failures) > self._max_keys:
                self._failures.popitem(last=False)
            return 0.0

    def succeeded(self, keys: Sequence[str]) -> None:
        """The password was right: the admitted try was no failure, and earlier ones are forgiven."""
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)

    def _wait(self, key: str, now: float, rules: Rules) -> float:
        entry = self._failures.get(key)
        if entry is None:
            return 0.0
        return max(0.0, entry.last + rules.wait_after(entry.count) - now)

    def _forget_before(self, cutoff: float) -> None:
        while self._failures:
            oldest = next(iter(self._failures.values()))
            if oldest.last > cutoff:
                return
            self._failures.popitem(last=False)


THROTTLE = LoginThrottle()  # the server process's one store, shared by every session


def client_key(address: str | None) -> str:
    """The client as Streamlit's server saw it; an IPv6 client by its /64, which one host can roam freely.

    `st.context.ip_address` is the TCP peer of the session's websocket; uvicorn (Streamlit's
    server) replaces it with the X-Forwarded-For client only when the peer is a proxy listed in
    FORWARDED_ALLOW_IPS (default: loopback), taking the nearest address a listed proxy reports,
    which a client cannot forge past that proxy. Behind a proxy not listed, every client shares
    the proxy's address (safe, if coarse); the chart's `console.trustedProxies` lists them.
    No address (Streamlit says None for loopback) is one shared client.
    """
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return "client unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is None:
            return f"client {ipaddress.IPv6Network((ip, 64), strict=False)}"
        ip = ip.ipv4_mapped
    return f"client {ip}"


def user_key(name: str) -> str:
    """The reviewer name as typed, so that 'Alice' and ' alice' share a count."""
    return f"user {name.strip().casefold()}"


def refusal(wait_s: float) -> str:
    """What a refused try is told: how long to wait, rounded up to whole seconds."""
    minutes, seconds = divmod(math.ceil(wait_s), 60)
    duration = f"{minutes} min {seconds} s" if minutes else f"{seconds} s"
    return f"Too many wrong passwords: sign-in is refused for this client or name. Try again in {duration}."
