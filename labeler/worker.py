"""Worker processes: the Celery task, one engine per process, lease recovery, metrics.

`start_worker` is what `llava-labeler worker` runs: one process that loads the engine
once and keeps `worker_concurrency` batches in flight through `BatchProcessor` (Celery's
threads pool; an in-process engine generates one batch at a time, `SharedEngine`, while
the others are claimed, read and recorded); it serves Prometheus metrics and runs the
sweeper every few seconds. The sweeper records the worker's heartbeat (so `status` can
tell a job no worker serves); resends the items of a worker that died and those waiting out a retry
backoff (`requeue_expired`) and pending items whose messages the broker lost
(`resend_stale`); tops the queue up from the database (`top_up`); and wakes a consumer
that takes no message while messages wait (`ConsumerWatch`: Celery's consumer can go
quiet after a broker restart). `InProcessWorker` runs the same in threads of the calling
process (`llava-labeler run`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import cache

from celery import Celery, signals
from celery.worker import WorkController
from sqlalchemy import delete

from engine.backend import Backend
from engine.backends import load_backend
from labeler.settings import LabelerConfig
from labeler import jobs, registry
from labeler.batches import BatchProcessor, BatchResult
from labeler.consumer_watch import ConsumerWatch
from labeler.db import Database, dialect_insert, open_database
from labeler.models import WorkerBeat, utcnow
from labeler.queue import TASK_NAME, make_celery, waiting_messages

log = logging.getLogger(__name__)
FORGET_AFTER = timedelta(days=1)  # heartbeat rows of workers gone this long are deleted


def load_engine(settings: LabelerConfig) -> Backend:
    """The engine a worker uses: the remote predictor when engine.url is set, else in-process (the one place)."""
    return load_backend(settings, url=settings.engine.url)


class SharedEngine:
    """An in-process engine shared by a worker's batches in flight: one generates at a time (the lock),
    while the others are claimed, read and recorded. A remote predictor needs no lock: it gets every
    batch in flight at once and its dynamic batcher merges them."""

    def __init__(self, engine: Backend):
        self.engine = engine
        self.lock = threading.Lock()

    def generate(self, requests):
        with self.lock:
            return self.engine.generate(requests)

    def __getattr__(self, name: str):
        return getattr(self.engine, name)


@cache
def _process_processor(settings_json: str) -> BatchProcessor:
    """The worker's processor, its engine loaded once (at start, see start_worker) and shared by its threads."""
    settings = LabelerConfig.model_validate_json(settings_json)
    db = open_database(settings.database_url)
    with db.read() as session:
        settings = registry.settings_for_new_jobs(session, settings)  # the promoted version, once there is one
    return BatchProcessor(db, settings, engine_for_threads(settings, load_engine(settings)))


def engine_for_threads(settings: LabelerConfig, engine: Backend) -> Callable[[], Backend]:
    """What a worker's threads call: the predictor's client as it is, an in-process engine behind its lock."""
    shared = engine if settings.engine.url else SharedEngine(engine)
    return lambda: shared  # type: ignore[return-value]


def make_app(
    settings: LabelerConfig,
    processor: Callable[[], BatchProcessor],
    on_batch: Callable[[BatchResult, float], None] | None = None,
) -> Celery:
    """A Celery app with the batch task registered (`on_batch(result, seconds)` observes each batch)."""
    app = make_celery(settings)

    @app.task(name=TASK_NAME, ignore_result=True, shared=False, lazy=False)  # this app only
    def process_batch(job_id: int, item_ids: list[int]) -> dict:
        started = time.perf_counter()
        result = processor().process(job_id, item_ids)
        if on_batch:
            on_batch(result, time.perf_counter() - started)
        log.info("job %s batch of %d: %s", job_id, len(item_ids), result)
        return vars(result)

    return app


def record_beat(db: Database, beat: dict) -> None:
    """Upsert one worker's heartbeat row, and delete the rows of workers gone for a day (one transaction)."""
    with db.write() as session:
        insert = dialect_insert(session)(WorkerBeat.__table__).values(beat)
        session.execute(insert.on_conflict_do_update(index_elements=["name"], set_={k: insert.excluded[k] for k in beat if k != "name"}))
        session.execute(delete(WorkerBeat).where(WorkerBeat.last_seen < beat["last_seen"] - FORGET_AFTER))


def forget_worker(db: Database, name: str) -> None:
    """Delete a stopping worker's heartbeat, so that its jobs show "no live worker" at once."""
    with db.write() as session:
        session.execute(delete(WorkerBeat).where(WorkerBeat.name == name))


class Sweeper(threading.Thread):
    """Every `period` seconds: the worker's heartbeat, then resending expired leases (dead workers'
    items, retry backoffs) and pending items whose messages the broker lost, or topping the queue up."""

    def __init__(self, app: Celery, settings: LabelerConfig, worker_name: str):
        super().__init__(name="lease-sweeper", daemon=True)
        self.app, self.settings, self.worker_name = app, settings, worker_name
        limits = settings.labeler
        self.period = max(0.5, min(5.0, limits.visibility_timeout_s / 4, limits.retry_backoff_s or 5.0, limits.heartbeat_s))
        self.stopped = threading.Event()
        self.job_id: int | None = None  # the job of the last batch this worker received
        self.started_at = utcnow()
        self.consumer_watch = ConsumerWatch(limits.stale_after_s)

    def received(self, request, **_) -> None:
        """Celery's `task_received` (in the consumer): remember the batch's job for the heartbeat."""
        self.job_id = request.args[0]
        self.consumer_watch.received()

    def ready(self, sender, **_) -> None:
        """Celery's `worker_ready` (`sender` is the consumer): watch it, and start sweeping."""
        self.consumer_watch.attach(sender)
        self.start()

    def beat(self, now: datetime) -> dict:
        host = self.worker_name.rpartition("@")[2]
        return {
            "name": self.worker_name,
            "host": host,
            "pid": os.getpid(),
            "queue": self.settings.labeler.queue,
            "job_id": self.job_id,
            "started_at": self.started_at,
            "last_seen": now,
        }

    def sweep(self, db: Database) -> None:
        record_beat(db, self.beat(utcnow()))
        if count := jobs.requeue_expired(db, self.app, self.settings):
            log.warning("resent %d items whose lease expired", count)
        waiting = waiting_messages(self.app, self.settings.labeler.queue)
        if count := jobs.resend_stale(db, self.app, self.settings, waiting):
            log.warning("resent %d pending items whose messages the broker lost", count)
        elif count := jobs.top_up(db, self.app, self.settings, waiting):
            log.info("topped the queue up with %d items", count)
        self.consumer_watch.check(waiting)

    def run(self) -> None:
        db = open_database(self.settings.database_url)
        while True:
            try:
                self.sweep(db)
            except Exception:  # a database or broker hiccup must not end recovery for good
                log.exception("sweep failed; trying again in %.1f s", self.period)
            if self.stopped.wait(self.period):
                break
        try:
            forget_worker(db, self.worker_name)
        except Exception:  # the row then simply ages out after MISSED_BEATS beats
            log.warning("could not delete the heartbeat of %s", self.worker_name, exc_info=True)


def start_worker(settings: LabelerConfig, *, concurrency: int | None = None, loglevel: str = "INFO") -> None:
    """Run a worker until it is stopped (the `worker` command): one process, one engine, `concurrency`
    batches in flight (Celery's threads pool), so the engine never waits on the database or the broker."""
    port = settings.labeler.metrics_port
    on_batch = None
    if port:
        from labeler import metrics

        metrics.serve(settings.labeler.metrics_host, port, open_database(settings.database_url))
        on_batch = metrics.observe
    settings_json = settings.model_dump_json()

    def processor() -> BatchProcessor:
        return _process_processor(settings_json)

    processor()  # a model that cannot load stops the worker with the reason before it takes any message
    app = make_app(settings, processor, on_batch)
    hostname = f"labeler-{os.getpid()}@{socket.gethostname()}"
    sweeper = Sweeper(app, settings, hostname)
    signals.worker_ready.connect(sweeper.ready, weak=False)
    signals.task_received.connect(sweeper.received, weak=False)

    def stop_sweeper(**_) -> None:
        sweeper.stopped.set()
        if sweeper.is_alive():
            sweeper.join(timeout=10)  # lets it delete the heartbeat before the process exits

    signals.worker_shutdown.connect(stop_sweeper, weak=False)
    app.set_default()  # the pool's threads look the task up on the default app
    app.worker_main(
        [
            "worker",
            "--pool=threads",
            f"--concurrency={concurrency or settings.labeler.worker_concurrency}",
            f"--loglevel={loglevel}",
            f"--queues={settings.labeler.queue}",
            f"--hostname={hostname}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


class InProcessWorker:
    """The batch task in threads of this process (`worker_concurrency` batches in flight), plus the
    sweeper: `run` uses it."""

    def __init__(self, settings: LabelerConfig, engine: Backend):
        processor = BatchProcessor(open_database(settings.database_url), settings, engine_for_threads(settings, engine))
        self.app = make_app(settings, lambda: processor)
        hostname = f"labeler-run-{os.getpid()}@{socket.gethostname()}"
        self.sweeper = Sweeper(self.app, settings, hostname)
        signals.task_received.connect(self.sweeper.received, weak=False)
        self.controller = WorkController(
            app=self.app,
            pool="threads",
            concurrency=settings.labeler.worker_concurrency,
            queues=[settings.labeler.queue],
            hostname=hostname,
            loglevel="WARNING",
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
        )
        self.sweeper.consumer_watch.attach(self.controller.consumer)
        self.thread = threading.Thread(target=self._serve, name="celery-worker", daemon=True)

    def _serve(self) -> None:
        # Celery looks tasks up on the thread's current app, and the pool's threads start with none.
        self.app.set_current()
        self.app.set_default()
        self.controller.start()

    def __enter__(self) -> "InProcessWorker":
        self.thread.start()
        self.sweeper.start()
        return self

    def __exit__(self, *exc) -> None:
        self.sweeper.stopped.set()
        signals.task_received.disconnect(self.sweeper.received)
        self.controller.stop(in_sighandler=False)
        self.thread.join(timeout=30)
        self.sweeper.join(timeout=10)

