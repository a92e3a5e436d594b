"""Each image labelled once: an item whose image, prompt and model version already have a prediction copies it,
within a job and across jobs, on SQLite and PostgreSQL; `--no-cache` generates; exports and review see copies."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from labeler import jobs
from labeler.batches import BatchProcessor
from labeler.jobs import JobSpec
from labeler.models import Item, Job, Prediction
from labeler.review import PredictionFilter
from labeler.service import Labeler
from tests.labeler.test_cli import SCHEMA, cli  # noqa: F401  (`cli` is a fixture)
from tests.labeler.test_jobs import assert_consistent, drain
from tests.labeler.test_reask import SHAPES_BOUND, SHAPES_SCHEMA, Recording

CAPTION = JobSpec(task="caption", max_new_tokens=6)
SEEDS = [1, 2, 1, 3, 1, 2]  # six files, three distinct images: 1 three times, 2 twice


@pytest.fixture(params=["sqlite", "postgresql"])
def labeler(request, labeler_settings) -> Labeler:
    """A database of the test's own: a shared one would hold other tests' predictions of the same images."""
    if request.param == "sqlite":
        return Labeler(labeler_settings(batch_size=4))
    return Labeler(labeler_settings(database_url=request.getfixturevalue("new_pg_database")(), batch_size=4))


@pytest.fixture
def folder(tmp_path: Path, png) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for i, seed in enumerate(SEEDS):
        (images / f"{i}.png").write_bytes(png(seed))
    return images


def _run(labeler: Labeler, backend: Recording, folder: Path, spec: JobSpec, processor: BatchProcessor | None = None) -> int:
    """Submit and process the job in batches of 4 (a duplicate in the batch, another in the next); its id."""
    job = labeler.submit(str(folder), spec)
    drain(labeler, processor or BatchProcessor(labeler.db, labeler.settings, lambda: backend), job.id, batch=4)
    assert_consistent(labeler.db, job.id)
    return job.id


def _predictions(labeler: Labeler, job_id: int) -> dict[str, tuple[str, bool]]:
    """File name -> (prediction text, cached)."""
    with labeler.db.read() as session:
        rows = session.execute(
            select(Item.uri, Prediction.text, Prediction.cached)
            .join(Prediction, Prediction.item_id == Item.id)
            .where(Item.job_id == job_id)
        )
        return {Path(uri).name: (text, cached) for uri, text, cached in rows}


def test_each_image_is_generated_once_within_and_across_jobs(labeler: Labeler, tiny_backend, folder: Path) -> None:
    backend = Recording(tiny_backend)
    first = _run(labeler, backend, folder, CAPTION)
    assert backend.generated == 3, "three distinct images, three generations"
    status = labeler.status(first)
    assert (status.done, status.cache_hits, status.to_dict()["cache_hits"]) == (6, 3, 3)
    made = _predictions(labeler, first)
    assert [cached for _, cached in made.values()].count(True) == 3
    for name, seed in zip(made, SEEDS):  # copies say what their image's generation said
        assert made[name][0] == made[f"{SEEDS.index(seed)}.png"][0]

    second = _run(labeler, backend, folder, CAPTION)
    assert backend.generated == 3, "a second job on the same images generates nothing"
    assert labeler.status(second).cache_hits == 6
    assert {name: text for name, (text, _) in _predictions(labeler, second).items()} == {name: text for name, (text, _) in made.items()}

    forced = _run(labeler, backend, folder, CAPTION.model_copy(update={"use_cache": False}))
    assert backend.generated == 3 + 6, "--no-cache generates every item, duplicates included"
    assert labeler.status(forced).cache_hits == 0 and not any(cached for _, cached in _predictions(labeler, forced).values())


def test_another_prompt_or_model_version_is_not_a_hit(labeler: Labeler, tiny_backend, folder: Path, tmp_path: Path) -> None:
    backend = Recording(tiny_backend)
    _run(labeler, backend, folder, CAPTION)
    _run(labeler, backend, folder, CAPTION.model_copy(update={"instruction": "Describe the colors."}))
    assert backend.generated == 3 + 3, "another prompt: generated again (once per image)"

    other_model = tmp_path / "model-v2"
    other_model.symlink_to(labeler.settings.engine.model)
    settings = labeler.settings.model_copy(update={"engine": labeler.settings.engine.model_copy(update={"model": str(other_model)})})
    other = BatchProcessor(labeler.db, settings, lambda: backend)
    job = _run(labeler, backend, folder, CAPTION, processor=other)
    assert backend.generated == 6 + 3, "another model version: generated again"
    assert labeler.status(job).cache_hits == 3  # its own duplicates only


def test_exports_and_review_work_on_cached_predictions(labeler: Labeler, tiny_backend, folder: Path, tmp_path: Path) -> None:
    backend = Recording(tiny_backend)
    _run(labeler, backend, folder, CAPTION)
    job = _run(labeler, backend, folder, CAPTION)
    assert backend.generated == 3 and all(cached for _, cached in _predictions(labeler, job).values())

    task = labeler.next_for_review("alice", PredictionFilter(job_id=job, review_state="unreviewed"))
    labeler.record_review(task.prediction_id, "alice", "edit", "a red circle")
    out = tmp_path / "job.jsonl"
    assert labeler.export(job, "jsonl", out, include_unreviewed=True) == 6
    records = [json.loads(line) for line in out.read_text().splitlines()]
    texts = {name: text for name, (text, _) in _predictions(labeler, job).items()}
    assert sorted(record["prediction"]["text"] for record in records) == sorted(texts.values())
    assert labeler.export(job, "llava", tmp_path / "reviewed.json") == 1, "the reviewed copy is a training record"
    with labeler.db.read() as session:
        first_job_reviewed = session.scalar(select(Prediction.reviewed).where(Prediction.id != task.prediction_id, Prediction.reviewed))
    assert first_job_reviewed is None, "a review belongs to its item, not to the prediction it was copied from"


def test_no_cache_on_the_command_line_and_counters_in_status(cli, tmp_path: Path, png) -> None:  # noqa: F811
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        (images / f"{i}.png").write_bytes(png(7))
    code, out = cli("submit", str(images), "--schema", str(SCHEMA), "--no-cache")
    assert code == 0, out
    code, out = cli("status", "1", "--json")
    assert code == 0, out
    status = json.loads(out)
    assert (status["reasks"], status["cache_hits"]) == (0, 0)
    from entrypoints.settings import get_settings
    from labeler.db import open_database

    with open_database(get_settings().database_url).read() as session:
        job = session.get(Job, 1)
    assert job.generation["use_cache"] is False
    assert job.generation["max_new_tokens"] == 76, "no --max-new-tokens: the schema's bound"


def test_a_json_answer_asked_again_is_reused_at_the_budget_it_took(labeler: Labeler, tiny_backend, folder: Path) -> None:
    backend = Recording(tiny_backend)
    job = _run(labeler, backend, folder, JobSpec(task="json", schema=SHAPES_SCHEMA, max_new_tokens=3))
    assert backend.calls == [[3] * 3, [SHAPES_BOUND] * 3], "three images, each asked again once; the next batch's are copies"
    status = labeler.status(job)
    assert (status.done, status.reasks, status.cache_hits) == (6, 3, 3)


class Held(Recording):
    """The real backend, whose first call waits until the test lets it go: a batch caught generating."""

    def __init__(self, backend) -> None:
        super().__init__(backend)
        self.generating, self.go = threading.Event(), threading.Event()

    def generate(self, requests):
        if not self.generating.is_set():
            self.generating.set()
            assert self.go.wait(30)
        return super().generate(requests)


def _unsent_pending(labeler: Labeler, job_id: int) -> dict[int, int]:
    """The job's pending items that wait to be sent (id -> attempts)."""
    with labeler.db.read() as session:
        rows = session.execute(select(Item.id, Item.attempts).where(Item.job_id == job_id, Item.status == "pending", Item.sent_at.is_(None)))
        return dict(rows.all())


def test_an_image_another_batch_is_generating_is_deferred_then_copied(labeler: Labeler, tiny_backend, folder: Path) -> None:
    """Two batches in flight share images 1 and 2: the second generates only its own image 3 and sends the
    shared ones back to the queue, unsent and not counted as attempts; they come round and copy: three
    generations for three images, however the batches interleave."""
    backend = Held(tiny_backend)
    job = labeler.submit(str(folder), CAPTION)
    ids = list(jobs.pending_item_ids(labeler.db, job.id))
    processor = BatchProcessor(labeler.db, labeler.settings, lambda: backend)
    first = threading.Thread(target=processor.process, args=(job.id, ids[:3]))  # images 1, 2, 1
    first.start()
    assert backend.generating.wait(30)
    result = processor.process(job.id, ids[3:])  # images 3, 1, 2 while 1 and 2 are being generated
    assert (result.claimed, result.done) == (3, 1) and backend.calls == [[6]], "image 3 alone"
    assert _unsent_pending(labeler, job.id) == {ids[4]: 0, ids[5]: 0}
    backend.go.set()
    first.join()
    assert backend.generated == 3, "images 1 and 2, once each"
    for item_id in _unsent_pending(labeler, job.id):  # what the sweeper's top-up sends again
        processor.process(job.id, [item_id])
    assert_consistent(labeler.db, job.id)
    status = labeler.status(job.id)
    assert (status.done, status.cache_hits, backend.generated) == (6, 3, 3)


def test_a_reservation_is_held_until_released_or_expired(labeler: Labeler) -> None:
    """A key held by a live batch is nobody else's; released (recorded) or past its expiry (its worker
    died), the next batch takes it."""
    from datetime import timedelta

    from labeler import reservations
    from labeler.models import ModelVersion, utcnow

    with labeler.db.write() as session:
        session.add(ModelVersion(name="m", uri="/m"))
    key, now, hour = ("c" * 64, "p" * 32), utcnow(), timedelta(hours=1)

    def reserve(owner: str, at=now) -> set:
        with labeler.db.write() as session:
            return reservations.reserve(session, [key], 1, owner, at + hour, at)

    assert reserve("first") == {key}
    assert reserve("second") == set(), "held by a live batch"
    with labeler.db.write() as session:
        reservations.release(session, "first")
    assert reserve("second") == {key}, "released when its holder recorded"
    assert reserve("third", now + 2 * hour) == {key}, "its holder's lease ran out: taken over"


def test_a_sampling_job_neither_copies_nor_is_copied(labeler: Labeler, tiny_backend, folder: Path) -> None:
    backend = Recording(tiny_backend)
    sampled = _run(labeler, backend, folder, CAPTION.model_copy(update={"temperature": 0.8, "seed": 1}))
    assert backend.generated == 6 and labeler.status(sampled).cache_hits == 0, "each item a draw of its own"
    _run(labeler, backend, folder, CAPTION)
    assert backend.generated == 6 + 3, "a greedy job does not copy sampled answers"
