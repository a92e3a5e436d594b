"""Auto-accept at a measured precision, on a synthetic job whose right answers are known.

The job's predictions are rows with chosen trust scores (mean token log-probs) and a known truth: every prediction scored above -1.5 is right, below it one in two is. A
random share is reviewed with the truth as the reviewer; auto-accept must then accept only
above a threshold whose reviewed labels bound the precision, accept nothing with too few
reviews, count its coverage right, and undo exactly what it did.
"""

from __future__ import annotations

import random
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select

from labeler import auto_accept
from labeler.models import Decision, Item, Job, ModelVersion, Prediction, Review
from labeler.retrain_data import TRAIN_DECISIONS
from labeler.service import Labeler
from tests.ui.conftest import console, console_template, login_clock, open_app  # noqa: F401  (the console's fixtures)

ITEMS = 1000
TARGET = 0.95
SURE = -1.5  # every prediction scored at or above this is right; below it, one in two


def synthetic_job(labeler: Labeler, seed: int = 0) -> tuple[int, dict[int, bool], dict[int, float]]:
    """A JSON job of ITEMS predictions: (job id, prediction id → right, prediction id → trust score)."""
    rng = random.Random(seed)
    with labeler.db.write() as session:
        version = ModelVersion(name=f"synthetic-{uuid.uuid4().hex[:8]}", uri="synthetic")
        job = Job(source="synthetic", task="json", schema={"type": "object"}, batch_size=8, total=ITEMS, done=ITEMS)
        session.add_all([version, job])
        session.flush()
        job.model_version_id = version.id
        items = [Item(job_id=job.id, uri=f"{i}.png", status="done") for i in range(ITEMS)]
        session.add_all(items)
        session.flush()
        truth: dict[int, bool] = {}
        scores: dict[int, float] = {}
        for item in items:
            score = rng.uniform(-2.0, 0.0)
            weakest = rng.uniform(-4.0, 0.0)  # uncorrelated with being right: it must not decide what is accepted
            fields = {"fields": {"/shape": weakest}, "weakest": "/shape", "weakest_logprob": weakest}
            prediction = Prediction(
                item_id=item.id, job_id=job.id, model_version_id=version.id, prompt_hash="p", text="{}", output_json={},
                confidence=score, field_confidence=fields, tokens=5, finish_reason="stop", latency_ms=1.0,
            )  # fmt: skip
            session.add(prediction)
            session.flush()
            truth[prediction.id] = score >= SURE or rng.random() < 0.5
            scores[prediction.id] = score
        return job.id, truth, scores


def review(labeler: Labeler, truth: dict[int, bool], share: float, seed: int = 1) -> set[int]:
    """The truth as the reviewer of a random `share` of the predictions; the reviewed ids."""
    chosen = random.Random(seed).sample(sorted(truth), round(len(truth) * share))
    for prediction_id in chosen:
        right = truth[prediction_id]
        labeler.record_review(prediction_id, "oracle", Decision.ACCEPT if right else Decision.EDIT, None if right else {"shape": "x"})
    return set(chosen)


@pytest.fixture(params=["sqlite", "postgresql"])
def labeler(request, labeler_settings) -> Labeler:
    url = request.getfixturevalue("new_pg_database")() if request.param == "postgresql" else None  # reviews of its own
    return Labeler(labeler_settings(database_url=url))


def _auto_rows(labeler: Labeler, job_id: int) -> list[tuple[int, float]]:
    with labeler.db.read() as session:
        query = (
            select(Review.prediction_id, Review.threshold)
            .join(Prediction, Review.prediction_id == Prediction.id)
            .where(Prediction.job_id == job_id, Review.decision == Decision.AUTO)
        )
        return [tuple(row) for row in session.execute(query)]


def test_the_bound_is_clopper_pearson() -> None:
    assert auto_accept.reviews_needed(0.99) == 528, "ln(0.05 / 10 thresholds) / ln(0.99)"
    assert auto_accept.lower_bound(299, 299) >= 0.99 > auto_accept.lower_bound(298, 298)
    assert auto_accept.lower_bound(0, 10) == 0.0
    from scipy.stats import binom

    bound = auto_accept.lower_bound(95, 100)  # the p at which 95 or more of 100 right has probability 5 %
    assert binom.sf(94, 100, bound) == pytest.approx(0.05, abs=1e-9) and bound == pytest.approx(0.8977, abs=1e-4)


def test_the_threshold_never_splits_ties_and_is_the_lowest_that_holds() -> None:
    scores = [0.0] * 300 + [-1.0] * 2 + [-2.0] * 50
    right = [True] * 300 + [True, False] + [False] * 50
    threshold, above, good, bound = auto_accept.best_threshold(scores, right, 0.97)
    each = 1 - 0.05 / auto_accept.GRID  # every tested threshold's bound, so that all hold together at 95 %
    assert (threshold, above, good) == (-1.0, 302, 301) and bound == auto_accept.lower_bound(301, 302, each) >= 0.97
    threshold, above, good, bound = auto_accept.best_threshold(scores, right, 0.98)
    assert (threshold, above, good) == (0.0, 300, 300), "302 with one wrong misses 0.98 at the corrected level"
    assert auto_accept.best_threshold(scores, right, 0.995) is None


def test_too_few_reviews_accepts_nothing(labeler: Labeler) -> None:
    job_id, truth, _ = synthetic_job(labeler)
    review(labeler, truth, 0.2)  # 200 reviews: below the 528 a 0.99 bound needs
    found, accepted = labeler.auto_accept(job_id, 0.99)
    assert found.threshold is None and accepted == 0 and "needs at least 528" in found.reason
    found, accepted = labeler.auto_accept(job_id, 0.9, min_reviews=500)
    assert found.threshold is None and accepted == 0 and "--min-reviews 500" in found.reason
    assert _auto_rows(labeler, job_id) == []


def test_accepts_above_a_measured_threshold_and_undo_restores(labeler: Labeler) -> None:
    job_id, truth, scores = synthetic_job(labeler)
    reviewed = review(labeler, truth, 0.6)
    unreviewed = {pid for pid in truth if pid not in reviewed}
    dry, accepted = labeler.auto_accept(job_id, TARGET, dry_run=True)
    assert accepted == 0 and _auto_rows(labeler, job_id) == []
    assert dry.threshold is not None and dry.lower_bound >= TARGET and dry.reviews == len(reviewed)
    assert dry.coverage == sum(scores[pid] >= dry.threshold for pid in unreviewed) and dry.unreviewed == len(unreviewed)
    assert dry.coverage_share > 0.5

    found, accepted = labeler.auto_accept(job_id, TARGET)
    rows = _auto_rows(labeler, job_id)
    assert accepted == found.coverage == len(rows) == dry.coverage
    assert {pid for pid, _ in rows} <= unreviewed and {threshold for _, threshold in rows} == {found.threshold}
    assert sum(truth[pid] for pid, _ in rows) / len(rows) >= TARGET, "the accepted labels really are right"
    assert labeler.review_counts(job_id)["auto"] == accepted
    assert Decision.AUTO in TRAIN_DECISIONS, "a retrain trains on auto-accepted labels"
    again, accepted_again = labeler.auto_accept(job_id, TARGET)
    assert accepted_again == 0 and again.coverage == 0, "accepted items are not accepted twice"

    overruled = rows[0][0]  # a person disagrees with one: their decision replaces it, threshold and all
    record = labeler.record_review(overruled, "oracle", Decision.REJECT)
    with labeler.db.read() as session:
        assert session.scalar(select(Review.threshold).where(Review.id == record.id)) is None

    assert labeler.undo_auto_accept(job_id) == accepted - 1
    assert _auto_rows(labeler, job_id) == []
    with labeler.db.read() as session:
        waiting = session.scalar(select(func.count()).select_from(Prediction).where(Prediction.job_id == job_id, Prediction.reviewed.is_(False)))
        humans = session.scalar(select(func.count()).select_from(Review).join(Prediction).where(Prediction.job_id == job_id))
    assert waiting == len(unreviewed) - 1 and humans == len(reviewed) + 1


def test_a_person_cannot_record_auto(labeler: Labeler) -> None:
    job_id, truth, _ = synthetic_job(labeler)
    from labeler.review import ReviewError

    with pytest.raises(ReviewError, match="unknown decision 'auto'"):
        labeler.record_review(next(iter(truth)), "mallory", "auto")


def test_cli_reports_and_refuses_in_one_line(labeler_settings, tmp_path: Path) -> None:
    settings = labeler_settings()
    labeler = Labeler(settings)
    job_id, truth, _ = synthetic_job(labeler)
    review(labeler, truth, 0.6)
    env = {"LLAVA_LABELER_DATABASE_URL": settings.database_url, "LLAVA_LABELER_DATA_DIR": str(settings.data_dir), "PATH": ""}
    cli = [str(Path(sys.executable).with_name("llava-labeler")), "auto-accept"]
    dry = subprocess.run([*cli, str(job_id), "--dry-run", "--precision", str(TARGET)], capture_output=True, text=True, env=env, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert "coverage:" in dry.stdout and "dry run: nothing recorded" in dry.stdout and "Clopper-Pearson, 95%" in dry.stdout
    refused = subprocess.run([*cli, str(job_id), "--precision", "0.99"], capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 2 and refused.stdout.startswith("nothing accepted: no threshold reaches precision 0.99")
    bad = subprocess.run([*cli, str(job_id), "--precision", "1.5"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip() == "error: --precision must be between 0 and 1 (exclusive), got 1.5"
    missing = subprocess.run([*cli, "999999", "--dry-run"], capture_output=True, text=True, env=env, timeout=120)
    assert missing.returncode == 1 and missing.stderr.strip() == "error: no job 999999"


def test_the_console_shows_and_undoes_a_jobs_auto_accepts(console, open_app) -> None:
    job_id, truth, _ = synthetic_job(console.labeler)
    review(console.labeler, truth, 0.6)
    _, accepted = console.labeler.auto_accept(job_id, TARGET)
    app = open_app(console, "review")
    app.selectbox(key="review.job").select(job_id).run()
    app.selectbox(key="review.state").select("auto").run()
    (shown,) = console.lease_owners()
    assert shown in {pid for pid, _ in _auto_rows(console.labeler, job_id)}, "the auto-accepted filter hands out auto-accepted items"
    assert f"{accepted:,} auto-accepted" in app.caption[0].value
    app.button(key="review.undo-auto").click().run()
    assert f"{accepted:,} auto-accepted labels are back in the queue." in app.success[0].value
    assert _auto_rows(console.labeler, job_id) == []
