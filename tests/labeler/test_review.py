"""The review side of the service layer: leased queue by confidence, idempotent reviews, model versions."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from labeler import jobs
from labeler.batches import BatchProcessor
from labeler.jobs import JobSpec
from labeler.models import Prediction, Review
from labeler.registry import RegistryError
from labeler.review import PredictionFilter, ReviewError
from labeler.service import Labeler

SHAPES_SCHEMA = json.loads((Path(__file__).parents[1] / "data" / "schemas" / "shapes.json").read_text())


@pytest.fixture(params=["sqlite", "postgresql"])
def reviewed_job(request, labeler_settings, tiny_backend, tmp_path: Path, png) -> tuple[Labeler, int]:
    """A finished caption job of 8 items, on SQLite or PostgreSQL."""
    url = request.getfixturevalue("pg_database") if request.param == "postgresql" else None
    labeler = Labeler(labeler_settings(database_url=url, review_lease_s=0.5))
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(8):
        (folder / f"{i}.png").write_bytes(png(i))
    job = labeler.submit(str(folder), JobSpec(task="caption", max_new_tokens=5))
    processor = BatchProcessor(labeler.db, labeler.settings, lambda: tiny_backend)
    processor.process(job.id, list(jobs.pending_item_ids(labeler.db, job.id)))
    assert labeler.status(job.id).done == 8
    return labeler, job.id


def test_queue_is_ordered_by_confidence_and_leased(reviewed_job) -> None:
    labeler, job_id = reviewed_job
    with labeler.db.read() as session:
        by_confidence = list(session.scalars(select(Prediction.id).where(Prediction.job_id == job_id).order_by(Prediction.confidence, Prediction.id)))
    alice = labeler.next_for_review("alice", PredictionFilter(job_id=job_id, review_state="unreviewed"))
    assert alice.prediction_id == by_confidence[0] and alice.task == "caption" and Path(alice.uri).exists()
    assert labeler.next_for_review("alice", PredictionFilter(job_id=job_id, review_state="unreviewed")).prediction_id == alice.prediction_id, "a reviewer keeps their item"
    bob = labeler.next_for_review("bob", PredictionFilter(job_id=job_id, review_state="unreviewed"))
    assert bob.prediction_id == by_confidence[1]
    labeler.release_review(bob.prediction_id, "bob")
    assert labeler.next_for_review("carol", PredictionFilter(job_id=job_id, review_state="unreviewed")).prediction_id == by_confidence[1]
    time.sleep(0.6)  # leases of 0.5 s run out
    assert labeler.next_for_review("dave", PredictionFilter(job_id=job_id, review_state="unreviewed")).prediction_id == by_confidence[0]


def test_two_reviewers_at_once_never_get_the_same_item(reviewed_job) -> None:
    labeler, job_id = reviewed_job
    labeler.settings.labeler.review_lease_s = 60
    got: dict[str, int | None] = {}
    start = threading.Barrier(8)

    def take(name: str) -> None:
        start.wait()
        task = labeler.next_for_review(name, PredictionFilter(job_id=job_id, review_state="unreviewed"))
        got[name] = task.prediction_id if task else None

    threads = [threading.Thread(target=take, args=(f"reviewer-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    taken = [pid for pid in got.values() if pid is not None]
    assert len(taken) == 8 and len(set(taken)) == 8
    assert labeler.next_for_review("late", PredictionFilter(job_id=job_id, review_state="unreviewed")) is None


def test_recording_a_review_twice_keeps_one_row(reviewed_job) -> None:
    labeler, job_id = reviewed_job
    task = labeler.next_for_review("alice", PredictionFilter(job_id=job_id, review_state="unreviewed"))
    first = labeler.record_review(task.prediction_id, "alice", "edit", "a red circle")
    again = labeler.record_review(task.prediction_id, "alice", "edit", "a red circle")
    assert first.id == again.id and again.output == "a red circle"
    changed = labeler.record_review(task.prediction_id, "alice", "accept")
    assert changed.id == first.id and (changed.decision, changed.output) == ("accept", None)
    with labeler.db.read() as session:
        assert session.scalar(select(func.count()).select_from(Review).where(Review.prediction_id == task.prediction_id)) == 1
    assert labeler.next_for_review("alice", PredictionFilter(job_id=job_id, review_state="unreviewed")).prediction_id != task.prediction_id, "reviewed items leave the queue"
    counts = labeler.review_counts(job_id)
    assert counts == {"accept": 1, "edit": 0, "reject": 0, "auto": 0, "unreviewed": 7}


def test_review_errors(reviewed_job) -> None:
    labeler, job_id = reviewed_job
    labeler.settings.labeler.review_lease_s = 60
    task = labeler.next_for_review("alice", PredictionFilter(job_id=job_id, review_state="unreviewed"))
    with pytest.raises(ReviewError, match="being reviewed by alice"):
        labeler.record_review(task.prediction_id, "bob", "accept")
    with pytest.raises(ReviewError, match="unknown decision 'maybe'"):
        labeler.record_review(task.prediction_id, "alice", "maybe")
    with pytest.raises(ReviewError, match="an edit needs the corrected output"):
        labeler.record_review(task.prediction_id, "alice", "edit")
    with pytest.raises(ReviewError, match="must be a string"):
        labeler.record_review(task.prediction_id, "alice", "edit", {"shape": "circle"})
    with pytest.raises(ReviewError, match="no prediction 999999"):
        labeler.record_review(999999, "alice", "accept")


def test_an_edited_json_answer_must_fit_the_schema(labeler_settings, tiny_backend, tmp_path: Path, png) -> None:
    labeler = Labeler(labeler_settings())
    (tmp_path / "a.png").write_bytes(png(1))
    job = labeler.submit(str(tmp_path / "a.png"), JobSpec(task="json", schema=SHAPES_SCHEMA, max_new_tokens=96))
    processor = BatchProcessor(labeler.db, labeler.settings, lambda: tiny_backend)
    assert processor.process(job.id, list(jobs.pending_item_ids(labeler.db, job.id))).done == 1
    task = labeler.next_for_review("alice")
    assert task.schema == SHAPES_SCHEMA and set(task.output_json) == set(SHAPES_SCHEMA["properties"])
    with pytest.raises(ReviewError, match="does not fit the job's schema at count: 9 is greater than the maximum of 4"):
        labeler.record_review(task.prediction_id, "alice", "edit", {"shape": "circle", "color": "red", "count": 9, "position": "left"})
    good = {"shape": "circle", "color": "red", "count": 1, "position": "left"}
    assert labeler.record_review(task.prediction_id, "alice", "edit", good).output == good


def test_model_versions(labeler_settings) -> None:
    labeler = Labeler(labeler_settings())
    labeler.register_model_version("shapes-v1", "/models/v1", metrics={"exact_match": 0.9}, status="active")
    labeler.register_model_version("shapes-v2", "/models/v2", parent="shapes-v1")
    with pytest.raises(RegistryError, match="already exists"):
        labeler.register_model_version("shapes-v2", "/models/other")
    with pytest.raises(RegistryError, match="no model version named 'nope'"):
        labeler.promote_model_version("nope")
    promoted = labeler.promote_model_version("shapes-v2")
    assert (promoted.status, promoted.parent) == ("active", "shapes-v1")
    versions = {v.name: v for v in labeler.list_model_versions()}
    assert versions["shapes-v1"].status == "retired" and versions["shapes-v1"].metrics == {"exact_match": 0.9}
    assert versions["shapes-v2"].status == "active"
