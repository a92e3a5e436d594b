"""Trust benchmark: how much of a JSON job auto-accept takes at precision 0.99, and whether it is really right.

Measured in one run (`make bench`, or `python -m bench.trust_bench`) on the shapes world
with the demo model (settings engine.model; a random tiny model if it is missing, whose
figures mean nothing): a 2,000-image JSON job (fresh scenes, ground truth known) runs on
the embedded default; the ground truth reviews a random 10 % of it (accept when the label
equals the truth, else edit); then the table gives the job's calibration error and, for
auto-accept at precision 0.99 (and 0.95, 0.90; Clopper–Pearson at 95 %), the coverage (share
of the unreviewed labels accepted) and the precision the accepted labels really have
against the ground truth. Reviewing goes on in steps (20 %, 30 %) so the table shows how
the reviews move the bound; each acceptance is undone before the next. It also gives how
well each candidate score separates right from wrong labels (ROC AUC).
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from bench.labeler_bench import _model, _settings
from labeler.auto_accept import CONFIDENCE_LEVEL
from labeler.calibration import BINS, FOLDS, Scope
from labeler.jobs import JobSpec
from labeler.models import Decision, Item, Prediction, Review
from labeler.service import Labeler
from labeler.worker import InProcessWorker, load_engine
from training.world import render, sample_scene, shapes_schema

IMAGES = 2000
REVIEW_SHARES = (0.10, 0.20, 0.30)
PRECISIONS = (0.99, 0.95, 0.90)
NEW_TOKENS = 64
SEED = 27


def shapes_manifest(folder: Path, n: int, seed: int = SEED) -> Path:
    """`n` fresh shapes images and a manifest whose `reference` is each image's ground truth."""
    rng = random.Random(seed)
    (folder / "images").mkdir(parents=True)
    lines = []
    for i in range(n):
        scene = sample_scene(rng)
        render(scene).save(folder / "images" / f"{i:05d}.png")
        lines.append(json.dumps({"image": f"images/{i:05d}.png", "reference": scene.truth()}))
    manifest = folder / "job.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def review_with_truth(labeler: Labeler, job_id: int, count: int, seed: int = SEED) -> dict[int, bool]:
    """The ground truth reviews `count` random predictions (same order for every count); prediction id → right."""
    with labeler.db.read() as session:
        rows = session.execute(
            select(Prediction.id, Prediction.output_json, Item.reference).join(Item, Prediction.item_id == Item.id)
            .where(Prediction.job_id == job_id).order_by(Prediction.id)
        ).all()  # fmt: skip
        done = set(session.scalars(select(Review.prediction_id).join(Prediction).where(Prediction.job_id == job_id)))
    truth = {pid: output == reference for pid, output, reference in rows}
    references = {pid: reference for pid, _, reference in rows}
    for pid in random.Random(seed).sample(sorted(truth), len(truth))[:count]:
        if pid not in done:
            right = truth[pid]
            labeler.record_review(pid, "ground-truth", Decision.ACCEPT if right else Decision.EDIT, None if right else references[pid])
    return truth


def score_separation(labeler: Labeler, job_id: int, truth: dict[int, bool]) -> tuple[float, float]:
    """ROC AUC of the mean token log-prob and of the weakest field's log-prob as predictors of a right label."""
    from sklearn.metrics import roc_auc_score

    with labeler.db.read() as session:
        rows = session.execute(select(Prediction.id, Prediction.confidence, Prediction.field_confidence).where(Prediction.job_id == job_id)).all()
    right = [truth[pid] for pid, _, _ in rows]
    return roc_auc_score(right, [mean for _, mean, _ in rows]), roc_auc_score(right, [fields["weakest_logprob"] for _, _, fields in rows])


def top_precision(labeler: Labeler, job_id: int, truth: dict[int, bool], share: float) -> float:
    """The share of right labels among the job's `share` most confident: what a perfect threshold would give."""
    with labeler.db.read() as session:
        ranked = list(session.scalars(select(Prediction.id).where(Prediction.job_id == job_id).order_by(Prediction.confidence.desc())))
    top = ranked[: round(len(ranked) * share)]
    return sum(truth[pid] for pid in top) / len(top)


def auto_accepted(labeler: Labeler, job_id: int) -> list[int]:
    with labeler.db.read() as session:
        query = select(Review.prediction_id).join(Prediction).where(Prediction.job_id == job_id, Review.decision == Decision.AUTO)
        return list(session.scalars(query))


def main() -> dict:
    console = Console()
    rows: list[tuple[str, str, str]] = []
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, model_name = _model(work, console)
        settings = _settings(work, model)
        labeler = Labeler(settings)
        manifest = shapes_manifest(work / "shapes", IMAGES)
        console.print(f"trust bench on the {model_name}: a {IMAGES:,}-image JSON job…")
        started = time.perf_counter()
        with InProcessWorker(settings, load_engine(settings)):
            job = labeler.submit(str(manifest), JobSpec(task="json", json_schema=shapes_schema(), max_new_tokens=NEW_TOKENS))
            while not (status := labeler.status(job.id)).finished:
                time.sleep(0.2)
        figures["job_s"] = time.perf_counter() - started
        labelled = status.done
        truth = review_with_truth(labeler, job.id, 0)
        separation = score_separation(labeler, job.id, truth)
        ceiling = top_precision(labeler, job.id, truth, 0.6)
        figures["top_60_precision"] = ceiling
        rows += [
            ("ROC AUC, right vs wrong labels: mean token log-prob (the trust score) / weakest field",
             f"{separation[0]:.3f} / {separation[1]:.3f}", "all labels, against the ground truth"),
            ("precision of the 60 % most confident labels (all labels, ground truth)", f"{ceiling:.4f}",
             "the most any threshold could give at 60 % coverage"),
        ]  # fmt: skip
        for share in REVIEW_SHARES:
            review_with_truth(labeler, job.id, round(labelled * share))
            fitted = labeler.calibration(Scope(job_id=job.id))
            key = f"{share:.0%}"
            figures[f"ece_{key}"] = fitted.ece
            rows += [
                (f"reviewed {key}: {fitted.reviews} labels, {fitted.right / fitted.reviews:.1%} right", "", ""),
                (f"  calibration error, isotonic ({BINS} bins, {FOLDS}-fold out-of-fold)", f"{fitted.ece:.3f}",
                 f"raw exp(score): {fitted.raw_ece:.3f}"),
            ]  # fmt: skip
            for precision in PRECISIONS:
                found, accepted = labeler.auto_accept(job.id, precision)
                chosen = auto_accepted(labeler, job.id)
                labeler.undo_auto_accept(job.id)
                real = sum(truth[pid] for pid in chosen) / len(chosen) if chosen else None
                figures[f"coverage_{key}_{precision}"] = found.coverage_share
                if found.reason is not None:
                    rows.append((f"  auto-accept at {precision}", "refused", found.reason))
                    continue
                figures[f"real_precision_{key}_{precision}"] = real or 0.0
                rows.append((f"  auto-accept at {precision}: coverage / real precision of the accepted",
                             f"{found.coverage_share:.1%} / {real:.4f}", f"{accepted:,} labels above {found.threshold:.3f}"))  # fmt: skip
        figures["labelled"], figures["failed"] = labelled, status.failed
    table = Table(title=f"trust: {model_name}, {IMAGES:,}-image JSON job ({labelled:,} labelled, {status.failed} failed; "
                        f"Clopper-Pearson at {CONFIDENCE_LEVEL:.0%}; job {figures['job_s']:.0f} s)")  # fmt: skip
    for column, justify in (("measure", "left"), ("value", "right"), ("vs target", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    return figures


if __name__ == "__main__":
    main()
