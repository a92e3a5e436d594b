"""The consumer watch: a worker that holds no message while messages wait is made to reconnect,
and only then (a busy worker, an empty queue or a message received resets the count)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from celery.worker import state
from kombu.asynchronous import Hub

from labeler.consumer_watch import ConsumerWatch, QuietConsumer


class Held:
    """Stands for a task request the worker holds (Celery keeps them in a weak set)."""


@pytest.fixture
def watched() -> tuple[ConsumerWatch, Hub]:
    hub = Hub()
    watch = ConsumerWatch(patience_s=10)
    watch.attach(SimpleNamespace(hub=hub))
    yield watch, hub
    hub.close()


def _run_ready(hub: Hub) -> None:
    for callback in hub._pop_ready():
        callback()


def test_messages_waiting_on_an_idle_worker_make_it_reconnect_after_the_patience(watched) -> None:
    watch, hub = watched
    assert not watch.check(waiting=5, now=100.0)
    assert not watch.check(waiting=5, now=109.0)
    assert watch.check(waiting=5, now=110.0)
    with pytest.raises(QuietConsumer):  # raised inside the event loop: Celery's consumer reconnects on it
        _run_ready(hub)
    assert not watch.check(waiting=5, now=111.0), "the reconnect gets a full patience of its own"


@pytest.mark.parametrize("reset", ["empty queue", "message received", "batch in hand"])
def test_the_quiet_time_restarts_when_the_worker_is_consuming(watched, reset) -> None:
    watch, hub = watched
    watch.check(waiting=5, now=100.0)
    held = Held()
    if reset == "empty queue":
        watch.check(waiting=0, now=105.0)
    elif reset == "message received":
        watch.received()
    else:
        state.reserved_requests.add(held)
    try:
        assert not watch.check(waiting=5, now=112.0)
    finally:
        state.reserved_requests.discard(held)
    assert not hub._ready


def test_a_worker_without_an_event_loop_is_left_alone() -> None:
    watch = ConsumerWatch(patience_s=1)
    watch.attach(SimpleNamespace(hub=None))  # the solo pool of `llava-labeler run`
    assert not watch.check(waiting=5, now=0.0) and not watch.check(waiting=5, now=10.0)
