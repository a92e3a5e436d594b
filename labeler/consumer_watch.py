"""Wake a Celery consumer that went quiet after a broker restart.

After Redis restarts mid-job, Celery's consumer can stay connected in name while it
takes no message at all (celery/celery#10302 and its predecessors, still open with
Celery and kombu 5.7 and redis-py 8): the worker holds nothing, messages wait in the
queue, and nothing moves until someone restarts the process. The sweeper sees both
facts from outside the event loop; once they have held for `patience_s`, `ConsumerWatch`
raises a connection error inside the loop, which is exactly what makes Celery's
consumer reconnect, re-declare its queues and consume again.
"""

from __future__ import annotations

import logging
import time

from celery.worker import state

log = logging.getLogger(__name__)


class QuietConsumer(ConnectionError):
    """Raised inside the consumer's event loop to make it reconnect (a connection error to Celery)."""


class ConsumerWatch:
    """Counts how long messages have waited while this worker held none and took none."""

    def __init__(self, patience_s: float):
        self.patience_s = patience_s
        self.consumer = None  # Celery's Consumer, once the worker is ready
        self.quiet_since: float | None = None

    def attach(self, consumer) -> None:
        self.consumer = consumer

    def received(self) -> None:
        """A message reached this worker: it is consuming."""
        self.quiet_since = None

    def check(self, waiting: int, now: float | None = None) -> bool:
        """Given the messages waiting in the queue, wake the consumer if it has been quiet too long; True if woken."""
        now = time.monotonic() if now is None else now
        if not waiting or state.reserved_requests or self.consumer is None or self.consumer.hub is None:
            self.quiet_since = None
            return False
        if self.quiet_since is None:
            self.quiet_since = now
        if now - self.quiet_since < self.patience_s:
            return False
        log.warning(
            "%d messages have waited %.0f s while this worker took none: reconnecting to the broker", waiting, now - self.quiet_since
        )
        self.consumer.hub.call_soon(self._reconnect)
        self.quiet_since = None  # the reconnect gets a full patience before it is judged
        return True

    @staticmethod
    def _reconnect() -> None:
        raise QuietConsumer("the consumer took no message while messages waited")
