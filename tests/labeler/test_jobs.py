"""Jobs end to end on the tiny model: bad files fail alone, exactly-once under races, retries, pause/resume/cancel."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select, update

from engine.backend import Backend, GenerationRequest, GenerationResult, TransientEngineError
from labeler import jobs
from labeler.batches import BatchProcessor
from labeler.db import Database
from labeler.jobs import JobError, JobSpec
from labeler.models import Item, Job, Prediction, utcnow
from labeler.service import Labeler
from labeler.sources import SourceError
from labeler.worker import InProcessWorker

SHAPES_SCHEMA = json.loads((Path(__file__).parents[1] / "data" / "schemas" / "shapes.json").read_text())
CAPTION = JobSpec(task="caption", max_new_tokens=6)


def item_states(db: Database, job_id: int) -> dict[str, str]:
    with db.read() as session:
        return {Path(uri).name: status for uri, status in session.execute(select(Item.uri, Item.status).where(Item.job_id == job_id))}


def assert_consistent(db: Database, job_id: int) -> None:
    """Job counters equal the item rows, and every done item has exactly one prediction."""
    with db.read() as session:
        job = session.get(Job, job_id)
        counts = dict(session.execute(select(Item.status, func.count()).where(Item.job_id == job_id).group_by(Item.status)).all())
        per_item = dict(
            session.execute(select(Prediction.item_id, func.count()).where(Prediction.job_id == job_id).group_by(Prediction.item_id)).all()
        )
        done_ids = set(session.scalars(select(Item.id).where(Item.job_id == job_id, Item.status == "done")))
    assert (job.done, job.failed, job.cancelled) == (counts.get("done", 0), counts.get("failed", 0), counts.get("cancelled", 0))
    assert job.total == sum(counts.values())
    assert set(per_item) == done_ids, "predictions exist exactly for the done items"
    assert set(per_item.values()) <= {1}, "an item has more than one prediction"


def load_job(db: Database, job_id: int) -> Job:
    with db.read() as session:
        return session.get(Job, job_id)


def drain(labeler: Labeler, processor: BatchProcessor, job_id: int, batch: int = 4) -> None:
    """Process every pending item of the job directly (no broker), batch by batch."""
    ids = list(jobs.pending_item_ids(labeler.db, job_id))
    for start in range(0, len(ids), batch):
        processor.process(job_id, ids[start : start + batch])


@pytest.fixture
def labeler(labeler_settings) -> Labeler:
    return Labeler(labeler_settings(batch_size=4, retry_backoff_s=0.2, max_retries=2, max_attempts=4))


@pytest.fixture
def processor(labeler: Labeler, tiny_backend) -> BatchProcessor:
    return BatchProcessor(labeler.db, labeler.settings, lambda: tiny_backend)


@pytest.mark.parametrize("backend", ["sqlite", "postgres+redis"])
def test_folder_with_bad_files_finishes_with_each_bad_one_failed(
    backend: str, request, labeler_settings, mixed_folder, tiny_backend, wait_for
) -> None:
    """Through Celery (an in-process worker): corrupt, empty and non-image files fail alone, with the reason."""
    if backend == "sqlite":
        settings = labeler_settings(batch_size=4)
    else:
        broker, queue = request.getfixturevalue("redis_broker")
        settings = labeler_settings(database_url=request.getfixturevalue("pg_database"), broker_url=broker, batch_size=4, queue=queue)
    folder, bad = mixed_folder
    labeler = Labeler(settings)
    with InProcessWorker(settings, tiny_backend):
        job = labeler.submit(str(folder), CAPTION)
        wait_for(lambda: labeler.status(job.id).finished, 120, "the job to finish")
    status = labeler.status(job.id)
    assert (status.status, status.total, status.done, status.failed, status.pending) == ("completed", 9, 6, 3, 0)
    reasons = {Path(item.uri).name: item.error for item in labeler.failed_items(job.id)}
    assert set(reasons) == set(bad)
    for name, words in bad.items():
        assert words in reasons[name], f"{name}: {reasons[name]}"
    assert_consistent(labeler.db, job.id)
    assert status.items_per_second and status.items_per_second > 0 and status.eta_seconds is None


def test_json_answer_cut_off_at_the_length_limit_fails_the_item(labeler_settings, tiny_backend, mixed_folder) -> None:
    """With re-asking off (tests/labeler/test_reask.py has it on): the cut-off answer fails its item, with the reason."""
    labeler = Labeler(labeler_settings(batch_size=4, max_reask_tokens=0))
    processor = BatchProcessor(labeler.db, labeler.settings, lambda: tiny_backend)
    folder, _ = mixed_folder
    spec = JobSpec(task="json", instruction="What shapes are there?", schema=SHAPES_SCHEMA, max_new_tokens=3)
    job = labeler.submit(f"{folder}/good-*.png", spec)
    drain(labeler, processor, job.id)
    failures = labeler.failed_items(job.id)
    assert len(failures) == 5 and labeler.status(job.id).status == "completed"
    assert all(f.error == "length: the JSON answer was cut off at max_new_tokens=3" for f in failures)
    assert_consistent(labeler.db, job.id)


def test_per_item_questions_and_a_vqa_item_without_one(labeler: Labeler, processor, tmp_path: Path, png) -> None:
    (tmp_path / "a.png").write_bytes(png(1))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"image": "a.png", "question": "What color is it?"}\n{"image": "a.png"}\n')
    job = labeler.submit(str(manifest), JobSpec(task="vqa", max_new_tokens=4))
    drain(labeler, processor, job.id)
    assert [f.error for f in labeler.failed_items(job.id)] == ["a vqa task needs a question (instruction)"]
    assert labeler.status(job.id).done == 1


def test_a_redelivered_batch_never_duplicates_a_prediction(labeler: Labeler, processor, mixed_folder) -> None:
    """A worker claims a batch and stalls past its lease; another finishes it; the first's late result is dropped."""
    folder, _ = mixed_folder
    job = labeler.submit(f"{folder}/good-*.png", CAPTION)
    ids = list(jobs.pending_item_ids(labeler.db, job.id))
    stalled = labeler.db.retrying(lambda s: processor._claim(s, job.id, ids, "stalled-worker"))
    assert len(stalled) == len(ids)
    assert processor.process(job.id, ids).skipped == "no item of the batch was claimable"  # leases still live
    with labeler.db.write() as session:
        session.execute(update(Item).where(Item.id.in_(ids)).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    result = processor.process(job.id, ids)
    assert (result.claimed, result.done) == (5, 5)
    late = processor._work(load_job(labeler.db, job.id), stalled, "stalled-worker")
    assert labeler.db.retrying(lambda s: processor._record(s, job.id, "stalled-worker", late, processor.model_version_id())) == (0, 0, 0)
    assert processor.process(job.id, ids).skipped  # a third delivery: nothing left to claim
    with labeler.db.read() as session:
        assert set(session.scalars(select(Item.attempts).where(Item.id.in_(ids)))) == {2}
    assert_consistent(labeler.db, job.id)
    assert labeler.status(job.id).status == "completed"


class Flaky:
    """A real backend behind a switch that makes the next `failures` calls raise TransientEngineError."""

    def __init__(self, backend: Backend, failures: int):
        self.backend, self.failures, self.calls = backend, failures, 0
        self.model_id = backend.model_id

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        self.calls += 1
        if self.calls <= self.failures:
            raise TransientEngineError("predictor unreachable: connection refused")
        return self.backend.generate(requests)


class Slow:
    """A real backend that takes `seconds` longer per call (a big model on a busy machine)."""

    def __init__(self, backend: Backend, seconds: float):
        self.backend, self.seconds, self.model_id = backend, seconds, backend.model_id

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        time.sleep(self.seconds)
        return self.backend.generate(requests)


def test_a_slow_batch_keeps_its_lease(labeler_settings, tiny_backend, mixed_folder) -> None:
    """A batch running for longer than the visibility timeout is not taken from a live worker."""
    folder, _ = mixed_folder
    labeler = Labeler(labeler_settings(visibility_timeout_s=0.6))
    slow = BatchProcessor(labeler.db, labeler.settings, lambda: Slow(tiny_backend, 2.0))
    other = BatchProcessor(labeler.db, labeler.settings, lambda: tiny_backend)
    job = labeler.submit(f"{folder}/good-0.png", CAPTION)
    ids = list(jobs.pending_item_ids(labeler.db, job.id))
    results = []
    worker = threading.Thread(target=lambda: results.append(slow.process(job.id, ids)))
    worker.start()
    time.sleep(1.2)  # twice the visibility timeout into the batch
    assert jobs.requeue_expired(labeler.db, labeler.app, labeler.settings) == 0
    assert other.process(job.id, ids).skipped == "no item of the batch was claimable"
    worker.join()
    assert results[0].done == 1
    with labeler.db.read() as session:
        assert session.scalar(select(Item.attempts).where(Item.id == ids[0])) == 1


def test_transient_engine_errors_retry_with_backoff(labeler: Labeler, tiny_backend, mixed_folder) -> None:
    folder, _ = mixed_folder
    flaky = Flaky(tiny_backend, failures=2)
    processor = BatchProcessor(labeler.db, labeler.settings, lambda: flaky)
    job = labeler.submit(f"{folder}/good-[01].png", CAPTION)
    ids = list(jobs.pending_item_ids(labeler.db, job.id))
    for attempt in (1, 2):
        result = processor.process(job.id, ids)
        assert (result.released, result.done, result.failed) == (2, 0, 0)
        assert processor.process(job.id, ids).skipped, "released items wait out their backoff"
        assert jobs.requeue_expired(labeler.db, labeler.app, labeler.settings) == 0
        time.sleep(0.25 * 2 ** (attempt - 1))
        assert jobs.requeue_expired(labeler.db, labeler.app, labeler.settings) == 2
    assert processor.process(job.id, ids).done == 2
    with labeler.db.read() as session:
        rows = session.execute(select(Item.attempts, Item.error, Item.status).where(Item.id.in_(ids))).all()
    assert set(rows) == {(3, None, "done")}
    assert_consistent(labeler.db, job.id)


def test_transient_errors_past_max_retries_fail_the_items(labeler: Labeler, tiny_backend, mixed_folder) -> None:
    folder, _ = mixed_folder
    processor = BatchProcessor(labeler.db, labeler.settings, lambda: Flaky(tiny_backend, failures=99))
    job = labeler.submit(f"{folder}/good-0.png", CAPTION)
    ids = list(jobs.pending_item_ids(labeler.db, job.id))
    for _ in range(3):  # max_retries=2: three tries in all
        with labeler.db.write() as session:  # skip the backoff wait
            session.execute(update(Item).where(Item.id.in_(ids)).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        processor.process(job.id, ids)
    (failure,) = labeler.failed_items(job.id)
    assert failure.error == "engine unavailable after 3 tries: predictor unreachable: connection refused"
    assert labeler.status(job.id).status == "completed"


def test_an_item_that_keeps_killing_workers_fails_after_max_attempts(labeler: Labeler, processor, mixed_folder) -> None:
    folder, _ = mixed_folder
    job = labeler.submit(f"{folder}/good-0.png", CAPTION)
    ids = list(jobs.pending_item_ids(labeler.db, job.id))
    for attempt in range(4):  # max_attempts=4: four workers died on it
        labeler.db.retrying(lambda s: processor._claim(s, job.id, ids, f"dead-{attempt}"))
        with labeler.db.write() as session:
            session.execute(update(Item).where(Item.id.in_(ids)).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    assert processor.process(job.id, ids).failed == 1
    (failure,) = labeler.failed_items(job.id)
    assert failure.error == "gave up after 4 attempts: the worker processing it stopped (killed or crashed)"


def test_pause_resume(labeler: Labeler, processor, mixed_folder, tiny_backend, wait_for) -> None:
    folder, _ = mixed_folder
    job = labeler.submit(f"{folder}/good-*.png", CAPTION)
    assert labeler.pause(job.id).status == "paused"
    ids = list(jobs.pending_item_ids(labeler.db, job.id))
    assert processor.process(job.id, ids).skipped == f"job {job.id} is paused"
    assert set(item_states(labeler.db, job.id).values()) == {"pending"}
    with pytest.raises(JobError, match="cannot pause job .* it is paused"):
        labeler.pause(job.id)
    with InProcessWorker(labeler.settings, tiny_backend):
        assert labeler.resume(job.id).status in ("queued", "running", "completed")
        wait_for(lambda: labeler.status(job.id).finished, 60, "the resumed job to finish")
    assert labeler.status(job.id).done == 5
    assert_consistent(labeler.db, job.id)


def test_cancel_discards_a_batch_in_flight(labeler: Labeler, processor, mixed_folder) -> None:
    folder, _ = mixed_folder
    job = labeler.submit(f"{folder}/good-*.png", CAPTION)
    ids = list(jobs.pending_item_ids(labeler.db, job.id))
    processor.process(job.id, ids[:2])
    in_flight = labeler.db.retrying(lambda s: processor._claim(s, job.id, ids[2:4], "in-flight"))
    status = labeler.cancel(job.id)
    assert (status.status, status.done, status.cancelled) == ("cancelled", 2, 3)
    outcome = processor._work(load_job(labeler.db, job.id), in_flight, "in-flight")
    assert labeler.db.retrying(lambda s: processor._record(s, job.id, "in-flight", outcome, processor.model_version_id())) == (0, 0, 0)
    assert processor.process(job.id, ids[4:]).skipped == f"job {job.id} is cancelled"
    assert_consistent(labeler.db, job.id)
    with pytest.raises(JobError, match="it is cancelled"):
        labeler.cancel(job.id)
    with pytest.raises(JobError, match="it is cancelled"):
        labeler.retry_failed(job.id)


def test_retry_failed_after_fixing_the_files(labeler: Labeler, processor, mixed_folder, png) -> None:
    folder, bad = mixed_folder
    job = labeler.submit(str(folder), CAPTION)
    drain(labeler, processor, job.id)
    assert labeler.status(job.id).failed == 3
    for path in folder.rglob("*"):
        if path.name in bad:
            path.write_bytes(png(42))
    status, count = labeler.retry_failed(job.id)
    assert count == 3 and (status.status, status.failed) == ("queued", 0)
    drain(labeler, processor, job.id)
    status = labeler.status(job.id)
    assert (status.status, status.done, status.failed) == ("completed", 9, 0)
    assert_consistent(labeler.db, job.id)


def test_status_reports_throughput_and_eta_while_running(labeler: Labeler, processor, mixed_folder) -> None:
    folder, _ = mixed_folder
    job = labeler.submit(f"{folder}/good-*.png", CAPTION)
    ids = list(jobs.pending_item_ids(labeler.db, job.id))
    processor.process(job.id, ids[:2])
    status = labeler.status(job.id)
    assert status.status == "running" and status.pending == 3
    assert status.items_per_second > 0 and status.eta_seconds == pytest.approx(3 / status.items_per_second)
    assert [s.id for s in labeler.list_jobs()][0] == job.id


def test_submit_refuses_bad_jobs_before_writing(labeler: Labeler, tmp_path: Path) -> None:
    with pytest.raises(JobError, match="a json task needs a JSON schema"):
        labeler.submit(str(tmp_path), JobSpec(task="json"))
    with pytest.raises(JobError, match="invalid JSON schema"):
        labeler.submit(str(tmp_path), JobSpec(task="json", schema={"type": "objekt"}))
    with pytest.raises(ValidationError, match="Input should be 'caption', 'vqa' or 'json'"):
        JobSpec(task="segment")  # the request model refuses it before a job could be made
    with pytest.raises(SourceError, match="no images found"):
        labeler.submit(str(tmp_path), CAPTION)
    assert labeler.list_jobs() == []


def test_submit_enqueues_one_task_per_batch(labeler_settings, redis_broker, pg_database, tmp_path: Path, png) -> None:
    import redis

    broker, queue = redis_broker
    settings = labeler_settings(database_url=pg_database, broker_url=broker, queue=queue, batch_size=500)
    (tmp_path / "a.png").write_bytes(png(1))
    manifest = tmp_path / "many.jsonl"
    manifest.write_text("".join(f'{{"image": "a.png", "metadata": {{"n": {n}}}}}\n' for n in range(20_000)))
    labeler = Labeler(settings)
    seen: list[int] = []
    status = labeler.submit(str(manifest), CAPTION, progress=seen.append)
    assert (status.total, status.status, sum(seen)) == (20_000, "queued", 20_000)
    assert redis.Redis.from_url(broker).llen(queue) == 40


def test_json_keeps_its_key_order_on_postgres(labeler_settings, pg_database, tmp_path: Path, png) -> None:
    """A schema's property order is the prompt's (and a reviewed answer's is the retrain's target):
    PostgreSQL's `jsonb` would hand both back sorted by key length, then name."""
    order = ["shape", "color", "count", "position"]
    schema = {"type": "object", "properties": {key: {"type": "string"} for key in order}, "required": order}
    (tmp_path / "a.png").write_bytes(png(1))
    labeler = Labeler(labeler_settings(database_url=pg_database))
    job = labeler.submit(str(tmp_path / "a.png"), JobSpec(task="json", instruction="Describe it.", schema=schema))
    with labeler.db.read() as session:
        stored = session.get(Job, job.id).schema
    assert list(stored["properties"]) == order and stored["required"] == order


def test_the_queue_holds_a_window_and_the_sweeper_tops_it_up(labeler_settings, tiny_backend, tmp_path: Path, png, wait_for) -> None:
    """A job bigger than the queue's window: submit publishes the window only, the rest waits in the
    database (never sent), and the worker's sweeper sends it as the queue drains."""
    from labeler.queue import waiting_messages

    for i in range(24):
        (tmp_path / f"{i:02d}.png").write_bytes(png(i))
    settings = labeler_settings(batch_size=2, queue_window=4, retry_backoff_s=0.2)
    labeler = Labeler(settings)
    job = labeler.submit(str(tmp_path), CAPTION)
    assert waiting_messages(labeler.app, settings.labeler.queue) == 4
    with labeler.db.read() as session:
        unsent = session.scalar(select(func.count()).where(Item.job_id == job.id, Item.sent_at.is_(None)))
    assert unsent == 24 - 4 * 2
    with InProcessWorker(settings, tiny_backend):
        wait_for(lambda: labeler.status(job.id).finished, 120, "the job to finish through top-ups")
    assert (labeler.status(job.id).done, labeler.status(job.id).failed) == (24, 0)
    assert_consistent(labeler.db, job.id)


def test_a_large_submit_refreshes_postgres_statistics(labeler_settings, pg_database, tmp_path: Path, png, monkeypatch) -> None:
    """After a bulk load PostgreSQL's statistics are stale until autovacuum runs, and keyset pages
    through the job (exports) turn into whole-job scans: a large submit analyzes the items table."""
    from sqlalchemy import text

    monkeypatch.setattr(jobs, "ANALYZE_AFTER", 2)  # a million-item submit's behaviour, on three items
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(png(i))
    labeler = Labeler(labeler_settings(database_url=pg_database))
    labeler.submit(str(tmp_path), CAPTION)
    with labeler.db.read() as session:  # ANALYZE writes the planner's row count into the catalog
        estimated = session.scalar(text("SELECT reltuples FROM pg_class WHERE relname = 'items'"))
        counted = session.scalar(text("SELECT count(*) FROM items"))
    assert estimated == counted


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_submit_of_many_chunks_keeps_every_line_in_order_or_nothing(database, request, labeler_settings, png, tmp_path: Path, monkeypatch) -> None:
    """Chunks of 3 lines (one COPY stream on PostgreSQL, a transaction each on SQLite): every line an item in
    manifest order with its counters; a malformed line in a later chunk leaves no job and no item behind."""
    monkeypatch.setattr(jobs, "INSERT_CHUNK", 3)
    url = request.getfixturevalue("new_pg_database")() if database == "postgresql" else None
    labeler = Labeler(labeler_settings(database_url=url) if url else labeler_settings())
    (tmp_path / "a.png").write_bytes(png(1))
    lines = [{"image": "a.png", "metadata": {"n": i}} for i in range(10)] + [{"image": "../outside.png"}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    status = labeler.submit(str(manifest), CAPTION)
    assert (status.total, status.failed) == (11, 1)
    with labeler.db.read() as session:
        rows = session.execute(select(Item.meta, Item.status).where(Item.job_id == status.id).order_by(Item.id)).all()
    assert [meta["n"] for meta, _ in rows[:10]] == list(range(10)) and rows[10].status == "failed"

    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines[:7]) + "{not json\n")
    with pytest.raises(SourceError, match="line 8"):
        labeler.submit(str(manifest), CAPTION)
    with labeler.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1
        assert session.scalar(select(func.count()).select_from(Item)) == 11
