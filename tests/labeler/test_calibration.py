"""Calibration from reviews: isotonic P(right) from confidence, its binned error, and the queue orders it feeds.

The fit is checked where the answer is known (labels drawn right with a chosen probability
of the score, so the raw score is miscalibrated and the fit must not be); the storage and
the queue orders on a real JSON job processed by the tiny model and on the synthetic job
of test_auto_accept, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from sqlalchemy import select

from labeler import calibration, jobs
from labeler.batches import BatchProcessor
from labeler.calibration import CalibrationError, Scope
from labeler.jobs import JobSpec
from labeler.models import Job, Prediction
from labeler.review import PredictionFilter
from labeler.service import Labeler
from tests.labeler.test_auto_accept import labeler, review, synthetic_job  # noqa: F401  (`labeler` is a fixture)
from tests.ui.conftest import console, console_template, login_clock, open_app  # noqa: F401  (the console's fixtures)

SHAPES_SCHEMA = json.loads((Path(__file__).parents[1] / "data" / "schemas" / "shapes.json").read_text())


def _drawn(n: int, seed: int = 0) -> tuple[list[float], list[bool]]:
    """Scores in [-3, 0] and labels right with probability exp(score / 4): exp(score) read raw is far too low."""
    rng = random.Random(seed)
    scores = [rng.uniform(-3.0, 0.0) for _ in range(n)]
    return scores, [rng.random() < math.exp(score / 4) for score in scores]


def test_isotonic_fit_is_calibrated_where_the_raw_score_is_not() -> None:
    scores, right = _drawn(3000)
    fitted = calibration.fit(scores, right, Scope(job_id=1))
    assert fitted.reviews == 3000 and fitted.right == sum(right)
    assert fitted.raw_ece > 0.25 and fitted.ece < 0.04
    grid = [-3.0 + 0.1 * i for i in range(31)]
    probabilities = fitted.probability(grid)
    assert all(a <= b for a, b in zip(probabilities, probabilities[1:])) and 0.0 <= probabilities[0] <= probabilities[-1] <= 1.0
    assert fitted.probability([-1.0])[0] == pytest.approx(math.exp(-0.25), abs=0.06)
    assert sum(b.count for b in fitted.bins) == 3000 and all(b.low <= b.predicted <= b.high for b in fitted.bins)


def test_expected_calibration_error_is_the_weighted_gap_per_bin() -> None:
    # bin 0.8-0.9: predicted 0.85 twice, one right -> gap 0.35; bin 0.2-0.3: predicted 0.25 twice, none right -> gap 0.25
    assert calibration.expected_calibration_error([0.85, 0.85, 0.25, 0.25], [True, False, False, False]) == pytest.approx(0.3)
    assert [(b.low, b.count, b.observed) for b in calibration.reliability([0.85, 0.85, 0.25, 0.25], [True, False, False, False])] == [
        (0.2, 2, 0.0), (0.8, 2, 0.5),
    ]  # fmt: skip


def test_too_few_reviews_is_an_error_that_says_how_many() -> None:
    with pytest.raises(CalibrationError, match=r"job 7: 19 human reviews; calibration needs at least 20"):
        calibration.fit([-0.1] * 19, [True] * 19, Scope(job_id=7))


def test_a_json_job_stores_field_confidence_and_the_queue_orders_by_the_weakest_field(labeler_settings, tiny_backend, tmp_path: Path, png) -> None:
    labeler = Labeler(labeler_settings())
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(png(i))
    job = labeler.submit(str(tmp_path), JobSpec(task="json", json_schema=SHAPES_SCHEMA, max_new_tokens=128))
    assert BatchProcessor(labeler.db, labeler.settings, lambda: tiny_backend).process(job.id, list(jobs.pending_item_ids(labeler.db, job.id))).done == 3
    with labeler.db.read() as session:
        stored = dict(session.execute(select(Prediction.id, Prediction.field_confidence).where(Prediction.job_id == job.id)).all())
    assert all(set(fields["fields"]) == {f"/{key}" for key in SHAPES_SCHEMA["properties"]} for fields in stored.values())
    weakest_first = min(stored, key=lambda pid: stored[pid]["weakest_logprob"])
    task = labeler.next_for_review("alice", PredictionFilter(job_id=job.id, review_state="unreviewed"), order="weakest_field")
    assert task.prediction_id == weakest_first and task.field_confidence == stored[weakest_first]


def test_calibration_per_job_and_per_task_and_version_and_the_calibrated_queue(labeler: Labeler) -> None:  # noqa: F811
    job_id, truth, scores = synthetic_job(labeler)
    with pytest.raises(CalibrationError, match=f"job {job_id}: 0 human reviews"):
        labeler.calibration(Scope(job_id=job_id))
    reviewed = review(labeler, truth, 0.3)
    fitted = labeler.calibration(Scope(job_id=job_id))
    assert fitted.reviews == len(reviewed) and fitted.right == sum(truth[pid] for pid in reviewed)
    assert fitted.probability([-0.5])[0] == pytest.approx(1.0, abs=0.02) and fitted.probability([-1.9])[0] < 0.75
    with labeler.db.read() as session:
        version = session.scalar(select(Job.model_version_id).where(Job.id == job_id))
    pooled = labeler.calibration(Scope(task="json", model_version_id=version))
    assert pooled.reviews == fitted.reviews, "the version's only job: the same reviews"

    first = labeler.next_for_review("alice", PredictionFilter(job_id=job_id, review_state="unreviewed"), order="calibrated")
    lowest = min(fitted.probability([scores[pid] for pid in truth if pid not in reviewed]))
    assert fitted.probability([scores[first.prediction_id]])[0] == pytest.approx(lowest)


def test_the_console_marks_the_least_sure_field_and_plots_calibration(console, open_app) -> None:  # noqa: F811
    app = open_app(console, "review")
    app.selectbox(key="review.job").select(console.json_job).run()
    app.radio(key="review.order").set_value("weakest_field").run()
    (shown,) = console.lease_owners()  # the item the page holds
    with console.labeler.db.read() as session:
        fields = dict(session.execute(select(Prediction.id, Prediction.field_confidence).where(Prediction.job_id == console.json_job)).all())
    assert fields[shown]["weakest_logprob"] == min(f["weakest_logprob"] for f in fields.values()), "weakest field first"
    weakest = fields[shown]["weakest"]
    assert any(f"{weakest} " in c.value and "(least sure)" in c.value for c in app.caption), [c.value for c in app.caption]
    marked = [s.label for s in app.selectbox if "least sure" in s.label] + [n.label for n in app.number_input if "least sure" in n.label]
    assert marked == [f"{weakest.lstrip('/')} · least sure"]

    job_id, truth, _ = synthetic_job(console.labeler)
    review(console.labeler, truth, 0.3)
    app = open_app(console, "models")
    app.selectbox(key="models.calibration").select(Scope(job_id=job_id)).run()
    fitted = console.labeler.calibration(Scope(job_id=job_id))
    assert any(f"Expected calibration error **{fitted.ece:.3f}** (10 bins" in m.value for m in app.markdown)
    assert any(b"observed" in chart.proto.datasets[0].data.data for chart in app.get("vega_lite_chart"))


def test_the_calibration_command_prints_the_error_and_bins(labeler_settings) -> None:
    import subprocess
    import sys

    settings = labeler_settings()
    service = Labeler(settings)
    job_id, truth, _ = synthetic_job(service)
    env = {"LLAVA_LABELER_DATABASE_URL": settings.database_url, "LLAVA_LABELER_DATA_DIR": str(settings.data_dir), "PATH": ""}
    command = [str(Path(sys.executable).with_name("llava-labeler")), "calibration", str(job_id)]
    early = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert early.returncode == 1 and early.stderr.strip() == f"error: job {job_id}: 0 human reviews; calibration needs at least 20"
    review(service, truth, 0.3)
    fitted = service.calibration(Scope(job_id=job_id))
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"expected calibration error (10 bins, 5-fold out-of-fold): {fitted.ece:.3f}" in done.stdout
    assert len([line for line in done.stdout.splitlines() if line.startswith("  0.")]) == len(fitted.bins)
