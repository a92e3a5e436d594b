"""Prometheus metrics of the workers: items finished, batch latency, queue depth.

A worker is one process (its batches in flight are threads), so the counters live in
prometheus_client's default registry; the worker serves them with the queue depth, which
it reads from the database on each scrape (items not yet finished in queued and running
jobs).
"""

from __future__ import annotations

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from labeler.batches import BatchResult
from labeler.db import Database
from labeler.models import ACTIVE_JOB_STATES, Job

ITEMS = Counter("labeler_items_total", "Items finished by this worker, by final state.", ["status"])
RETRIED = Counter("labeler_items_retried_total", "Items released for a retry after a transient engine error.")
BATCH_SECONDS = Histogram(
    "labeler_batch_seconds",
    "Wall time of one batch, claim to record.",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
ENGINE_SECONDS = Histogram(
    "labeler_engine_seconds",
    "Time the engine spent on one batch.",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)


def observe(result: BatchResult, seconds: float) -> None:
    if result.skipped:
        return
    ITEMS.labels("done").inc(result.done)
    ITEMS.labels("failed").inc(result.failed)
    RETRIED.inc(result.released)
    BATCH_SECONDS.observe(seconds)
    ENGINE_SECONDS.observe(result.engine_seconds)


class QueueDepth(Collector):
    """Items still to do in queued and running jobs, read from the job counters at scrape time."""

    def __init__(self, db: Database):
        self.db = db

    def collect(self):
        remaining = Job.total - Job.done - Job.failed - Job.cancelled
        with self.db.read() as session:
            value = session.scalar(select(func.coalesce(func.sum(remaining), 0)).where(Job.status.in_(ACTIVE_JOB_STATES)))
        yield GaugeMetricFamily("labeler_queue_depth_items", "Items not yet finished in queued and running jobs.", value=value)


def serve(host: str, port: int, db: Database) -> None:
    """Serve the worker's metrics and the queue depth on `host`:`port` (a daemon thread).

    `host` is 127.0.0.1 by default and the pod's own IP in a cluster (the chart sets it), not
    0.0.0.0: only the pod network, where the NetworkPolicy lets Prometheus in, reaches it.
    """
    REGISTRY.register(QueueDepth(db))
    start_http_server(port, addr=host, registry=REGISTRY)
