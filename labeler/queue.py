"""The Celery side: one app configuration for producers and workers, and batch enqueueing.

A message is `(job_id, [item ids])`, JSON only (pickle is refused on both ends). The
queue is a doorbell, not the record: items live in the database, and a worker claims
them there before it works (see `labeler.batches`), so a message delivered twice, or a
batch re-enqueued after a worker died, can never produce a second prediction.

Brokers: Redis in a cluster, kombu's SQLAlchemy transport on a SQLite file by default
(`sqla+sqlite:///build/data/broker.db`). Late acks and `reject_on_worker_lost` make a
broker hand an unfinished batch to another worker; Redis does so after
`visibility_timeout_s`. The SQLite transport forgets a message its worker took, so on
it recovery rests on the item leases alone, which expire after the same time. A message
lost before any worker took it (a flushed or restarted Redis, a purge) leaves its items
pending; `waiting_messages` lets the sweeper see that the queue ran dry while they wait.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

from celery import Celery
from kombu.transport.sqlalchemy import Transport as SqlaTransport
from sqlalchemy.engine import make_url

from labeler.settings import LabelerConfig

TASK_NAME = "labeler.process_batch"
SQLA_PREFIX = "sqla+"
SQL_POLLING_INTERVAL_S = 0.05


def _sqlite_broker_options(broker_url: str) -> dict:
    """SQLite broker: WAL (readers never block the writer), no fsync per message, a long busy wait."""
    path = make_url(broker_url.removeprefix(SQLA_PREFIX)).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(path or ":memory:", timeout=60, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    return {"creator": connect}


def make_celery(settings: LabelerConfig) -> Celery:
    """A Celery app for `settings` (the same for `submit` and for `worker`)."""
    broker = settings.broker_url
    if broker.startswith(SQLA_PREFIX):  # transport options go to create_engine there
        options = _sqlite_broker_options(broker) if broker.startswith(SQLA_PREFIX + "sqlite") else {}
        # The worker polls the message table, and sleeps the interval also whenever its prefetch is
        # full: a thread that has just finished a batch waits up to the interval for its next message.
        # kombu's default of 1 s would idle the engine; 0.2 s still cost 5% of a GPU-like engine's time
        # (`bench.labeler_bench`), 0.05 s about 1%. (Set on the class: its options all go to create_engine.)
        SqlaTransport.polling_interval = SQL_POLLING_INTERVAL_S
    else:
        options = {"visibility_timeout": settings.labeler.visibility_timeout_s}
    app = Celery("llava-labeler", broker=broker, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.labeler.queue,
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        worker_enable_remote_control=False,  # needs fanout, which the SQL transport lacks; we do not use it
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
    )
    return app


def batched(values: Iterable[int], size: int) -> Iterator[list[int]]:
    """Consecutive lists of `size` values (the last may be shorter); never holds more than one."""
    iterator = iter(values)
    while batch := list(islice(iterator, size)):
        yield batch


def enqueue(app: Celery, job_id: int, item_ids: Iterable[int], batch_size: int, queue: str) -> int:
    """Publish one task per `batch_size` items over one broker connection; returns the number of tasks."""
    tasks = 0
    with app.producer_or_acquire() as producer:
        for batch in batched(item_ids, batch_size):
            app.send_task(TASK_NAME, args=(job_id, batch), queue=queue, producer=producer)
            tasks += 1
    return tasks


def waiting_messages(app: Celery, queue: str) -> int:
    """Messages waiting in `queue`, not counting those workers hold: none waiting while items are
    pending means their messages are lost (no broker can say which items a message named)."""
    with app.connection_for_write() as connection:
        return connection.default_channel.queue_declare(queue=queue, durable=True, auto_delete=False).message_count
