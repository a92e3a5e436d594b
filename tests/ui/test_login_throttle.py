"""The login throttle's rules: free failures, doubling delays, the lockout, per client and per name, shared and atomic."""

from __future__ import annotations

import threading

import pytest

from ui.settings import UISettings
from ui.login_throttle import LoginThrottle, Rules, client_key, refusal, user_key

from .conftest import ManualClock

DEFAULTS = Rules.of(UISettings())
ALICE = [client_key("203.0.113.7"), user_key("alice")]


def fail_until_locked(throttle: LoginThrottle, clock: ManualClock, keys: list[str], rules: Rules = DEFAULTS) -> None:
    """Make wrong tries, each as soon as it is allowed, until the keys are locked out."""
    while (wait := throttle.admit(keys, rules)) < rules.lockout_s:
        clock.advance(wait)


def test_the_defaults_are_three_free_failures_then_doubling_delays_then_a_fifteen_minute_lockout() -> None:
    assert DEFAULTS == Rules(free_failures=3, max_failures=10, lockout_s=900.0)
    assert [DEFAULTS.wait_after(n) for n in range(12)] == [0, 0, 0, 1, 2, 4, 8, 16, 32, 64, 900, 900]
    assert Rules(free_failures=0, max_failures=20, lockout_s=60).wait_after(15) == 60, "a delay never exceeds the lockout"
    assert Rules(free_failures=5, max_failures=2, lockout_s=60).wait_after(2) == 60, "the lockout wins over free tries"


def test_each_wrong_try_after_the_free_ones_waits_twice_as_long() -> None:
    clock = ManualClock()
    throttle = LoginThrottle(clock)
    assert [throttle.admit(ALICE, DEFAULTS) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert throttle.admit(ALICE, DEFAULTS) == 1.0
    clock.advance(0.4)
    assert throttle.admit(ALICE, DEFAULTS) == pytest.approx(0.6), "a refused try is not counted"
    clock.advance(0.6)
    assert throttle.admit(ALICE, DEFAULTS) == 0.0
    assert throttle.admit(ALICE, DEFAULTS) == 2.0


def test_ten_failures_lock_for_the_window_and_then_are_forgotten() -> None:
    clock = ManualClock()
    throttle = LoginThrottle(clock)
    fail_until_locked(throttle, clock, ALICE)
    clock.advance(899)
    assert throttle.admit(ALICE, DEFAULTS) == pytest.approx(1.0), "hammering a locked login does not reach the password"
    clock.advance(1)
    assert [throttle.admit(ALICE, DEFAULTS) for _ in range(4)] == [0.0, 0.0, 0.0, 1.0], "a fresh start after the lockout"


def test_a_locked_client_or_name_is_refused_whatever_the_other() -> None:
    clock = ManualClock()
    throttle = LoginThrottle(clock)
    fail_until_locked(throttle, clock, ALICE)
    assert throttle.admit([client_key("203.0.113.7"), user_key("bob")], DEFAULTS) > 0, "the client is locked under any name"
    assert throttle.admit([client_key("198.51.100.2"), user_key(" Alice ")], DEFAULTS) > 0, "the name is locked from any client"
    assert throttle.admit([client_key("198.51.100.2"), user_key("bob")], DEFAULTS) == 0.0


def test_a_right_password_forgives_the_client_and_the_name() -> None:
    clock = ManualClock()
    throttle = LoginThrottle(clock)
    for _ in range(3):
        throttle.admit(ALICE, DEFAULTS)
    assert throttle.admit(ALICE, DEFAULTS) == 1.0
    clock.advance(1)
    assert throttle.admit(ALICE, DEFAULTS) == 0.0
    throttle.succeeded(ALICE)
    assert [throttle.admit(ALICE, DEFAULTS) for _ in range(4)] == [0.0, 0.0, 0.0, 1.0]


def test_parallel_sessions_get_no_more_tries_than_one() -> None:
    throttle = LoginThrottle(ManualClock())
    start = threading.Barrier(40)
    waits: list[float] = []

    def session() -> None:
        start.wait()
        waits.append(throttle.admit(ALICE, DEFAULTS))

    threads = [threading.Thread(target=session) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(waits) == [0.0] * 3 + [1.0] * 37, "the three free tries, then all wait"


def test_the_store_is_bounded_and_drops_the_oldest_counts_first() -> None:
    clock = ManualClock()
    throttle = LoginThrottle(clock, max_keys=2)
    locks_at_once = Rules(free_failures=0, max_failures=1, lockout_s=60)
    for name in ("a", "b", "c"):
        throttle.admit([user_key(name)], locks_at_once)
        clock.advance(1)
    assert throttle.admit([user_key("a")], locks_at_once) == 0.0
    assert throttle.admit([user_key("c")], locks_at_once) == 59.0


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.7", "client 203.0.113.7"),
        ("::ffff:203.0.113.7", "client 203.0.113.7"),
        ("2001:db8:1:2:aaaa::1", "client 2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "client 2001:db8:1:2::/64"),
        (None, "client unknown"),
        ("not an address", "client unknown"),
    ],
)
def test_clients_are_keyed_by_address_and_ipv6_hosts_by_their_network(address: str | None, key: str) -> None:
    assert client_key(address) == key


def test_names_are_counted_whatever_their_case_and_blanks() -> None:
    assert user_key(" Alice\t") == user_key("alice") != user_key("alice2")


def test_the_refusal_says_how_long_to_wait() -> None:
    assert refusal(0.2).endswith("Try again in 1 s.")
    assert refusal(64).endswith("Try again in 1 min 4 s.")
    assert refusal(900).endswith("Try again in 15 min 0 s.")
