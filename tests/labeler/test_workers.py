"""Real worker processes: one is SIGKILLed mid-batch, another finishes the job, nothing is lost or doubled.

Run on both brokers: Redis (+ PostgreSQL), where the broker redelivers the unacked batch
after the visibility timeout, and the default SQLite broker (+ SQLite), which forgets a
message its worker took, so the item leases alone bring the batch back.
"""

from __future__ import annotations

import socket
import urllib.request

import pytest
from sqlalchemy import func, select

from labeler.jobs import JobSpec
from labeler.models import Item, Prediction
from labeler.service import Labeler

ITEMS = 18


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _metric(port: int, sample: str) -> float:
    """One sample's value from the worker's /metrics (`sample` as exported, labels included)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = [float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(sample + " ")]
    assert values, f"{sample} not exported:\n{body}"
    return values[0]


@pytest.mark.parametrize("stack", ["redis+postgres", "sqlite"])
def test_a_worker_killed_mid_batch_loses_nothing(stack, request, labeler_settings, wait_for, tmp_path, png) -> None:
    # A batch the killed worker took but had not claimed yet waits for the stale re-send (its items are pending).
    common = dict(batch_size=3, visibility_timeout_s=6, stale_after_s=6)
    if stack == "sqlite":
        settings = labeler_settings(**common)
    else:
        broker, queue = request.getfixturevalue("redis_broker")
        settings = labeler_settings(database_url=request.getfixturevalue("pg_database"), broker_url=broker, queue=queue, **common)
    start_worker = request.getfixturevalue("start_worker")  # set up last: its workers die before the queue is cleaned
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(ITEMS):
        (folder / f"{i:03d}.png").write_bytes(png(i))
    labeler = Labeler(settings)
    first = start_worker(settings)
    job = labeler.submit(str(folder), JobSpec(task="caption", max_new_tokens=16))

    def states() -> dict[str, int]:
        with labeler.db.read() as session:
            rows = session.execute(select(Item.status, func.count()).where(Item.job_id == job.id).group_by(Item.status))
            return dict(rows.all())

    wait_for(lambda: states().get("done", 0) >= 3 and states().get("running", 0) > 0, 120, "the first worker to be mid-batch", [first.log])
    first.kill()
    with labeler.db.read() as session:
        orphaned = set(session.scalars(select(Item.id).where(Item.job_id == job.id, Item.status == "running")))
    done_by_first = states().get("done", 0)
    assert orphaned, "the kill must land while a batch is claimed"
    assert done_by_first < ITEMS

    settings.labeler.metrics_port = _free_port()
    second = start_worker(settings)
    wait_for(lambda: labeler.status(job.id).finished, 180, "the second worker to finish the job", [first.log, second.log])

    status = labeler.status(job.id)
    assert (status.status, status.done, status.failed, status.cancelled) == ("completed", ITEMS, 0, 0)
    with labeler.db.read() as session:
        per_item = dict(
            session.execute(select(Prediction.item_id, func.count()).where(Prediction.job_id == job.id).group_by(Prediction.item_id)).all()
        )
        attempts = dict(session.execute(select(Item.id, Item.attempts).where(Item.job_id == job.id)).all())
    assert len(per_item) == ITEMS and set(per_item.values()) == {1}, "every item has exactly one prediction"
    assert all(attempts[i] == 2 for i in orphaned), f"the orphaned batch is claimed again exactly once: {attempts} {orphaned}"
    assert all(attempts[i] == 1 for i in attempts if i not in orphaned), "live workers keep their leases (heartbeat)"
    port = settings.labeler.metrics_port
    assert _metric(port, 'labeler_items_total{status="done"}') == ITEMS - done_by_first
    assert _metric(port, "labeler_queue_depth_items") >= 0
    assert _metric(port, "labeler_batch_seconds_count") >= 1
