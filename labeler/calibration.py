"""Calibration from reviews: what a confidence score means, measured on the people's own decisions.

A raw log-probability is not a probability of being right. Every reviewed prediction is
a labelled example (accepted = right; edited or rejected = wrong; `auto` decisions are
not evidence and are left out), so an isotonic regression (scikit-learn) of right-or-wrong
on the trust score gives, per job or per task and model version, a monotone map from score
to the probability that the label is right. Its quality is the expected calibration
error (ECE) over `BINS` equal-width probability bins, computed on out-of-fold predictions
(`FOLDS`-fold cross-validation), because isotonic regression scored on its own training
reviews would look perfect.

The trust score of a prediction is its mean token log-prob (`Prediction.confidence`). Its
weakest field's log-prob was the other candidate (a JSON label is wrong as soon as one field
is); on the shapes world with the demo model it separated right from wrong labels worse
(ROC AUC 0.70 against 0.82, `python -m bench.trust_bench` prints both), so it orders the
review queue on request but does not decide what is accepted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import select

from labeler.db import Database
from labeler.models import Decision, Job, Prediction, Review

if TYPE_CHECKING:
    from sklearn.isotonic import IsotonicRegression

BINS = 10
FOLDS = 5
MIN_REVIEWS = 20  # fewer human reviews than this and a fit says more about chance than about the model
RIGHT = (Decision.ACCEPT,)
WRONG = (Decision.EDIT, Decision.REJECT)

TRUST_SCORE = Prediction.confidence


class CalibrationError(ValueError):
    """No calibration can be fitted (too few reviews); the message says how many there are and how many it needs."""


@dataclass(frozen=True)
class Scope:
    """Whose reviews a calibration is fitted on: one job, or every job of a task on one model version."""

    job_id: int | None = None
    task: str | None = None
    model_version_id: int | None = None

    def __str__(self) -> str:
        if self.job_id is not None:
            return f"job {self.job_id}"
        return f"task {self.task}, model version {self.model_version_id}"


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of the reliability plot: predicted probability of being right vs how often it was."""

    low: float
    high: float
    count: int
    predicted: float
    observed: float


@dataclass(frozen=True)
class Calibration:
    """A fitted score → P(right) map and how well it is calibrated."""

    scope: Scope
    reviews: int
    right: int
    ece: float  # out-of-fold, isotonic
    raw_ece: float  # exp(score) read as the probability, for comparison
    bins: tuple[ReliabilityBin, ...]
    model: IsotonicRegression  # scikit-learn is imported when a fit is made: the review queue imports this module

    def probability(self, scores: Sequence[float]) -> list[float]:
        """P(right) for each trust score."""
        return [float(p) for p in self.model.predict(np.asarray(scores, dtype=float))]


def reviewed_scores(db: Database, scope: Scope) -> tuple[list[float], list[bool]]:
    """Trust score and right-or-wrong of every human-reviewed prediction in `scope`."""
    query = (
        select(TRUST_SCORE, Review.decision)
        .join(Review, Review.prediction_id == Prediction.id)
        .where(Review.decision.in_(RIGHT + WRONG), TRUST_SCORE.is_not(None))
    )
    if scope.job_id is not None:
        query = query.where(Prediction.job_id == scope.job_id)
    else:
        query = query.join(Job, Prediction.job_id == Job.id).where(
            Job.task == scope.task, Prediction.model_version_id == scope.model_version_id
        )
    with db.read() as session:
        rows = session.execute(query).all()
    return [float(score) for score, _ in rows], [decision in RIGHT for _, decision in rows]


def _isotonic() -> IsotonicRegression:
    from sklearn.isotonic import IsotonicRegression

    return IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")


def reliability(probabilities: Sequence[float], right: Sequence[bool], bins: int = BINS) -> tuple[ReliabilityBin, ...]:
    """The non-empty equal-width bins of predicted probability with their observed rate of right labels."""
    p, y = np.asarray(probabilities, dtype=float), np.asarray(right, dtype=float)
    index = np.minimum((p * bins).astype(int), bins - 1)
    return tuple(
        ReliabilityBin(b / bins, (b + 1) / bins, int(mask.sum()), float(p[mask].mean()), float(y[mask].mean()))
        for b in range(bins)
        if (mask := index == b).any()
    )


def expected_calibration_error(probabilities: Sequence[float], right: Sequence[bool], bins: int = BINS) -> float:
    """Σ over bins of (share of items in the bin) × |mean predicted − observed|."""
    table = reliability(probabilities, right, bins)
    total = sum(b.count for b in table)
    return sum(b.count / total * abs(b.predicted - b.observed) for b in table)


def fit(scores: Sequence[float], right: Sequence[bool], scope: Scope) -> Calibration:
    """Isotonic calibration of `scores` against `right`, with its out-of-fold ECE and reliability bins."""
    if len(scores) < MIN_REVIEWS:
        raise CalibrationError(f"{scope}: {len(scores)} human reviews; calibration needs at least {MIN_REVIEWS}")
    from sklearn.model_selection import KFold, cross_val_predict

    x, y = np.asarray(scores, dtype=float), np.asarray(right, dtype=float)
    folds = KFold(n_splits=FOLDS, shuffle=True, random_state=0)
    out_of_fold = cross_val_predict(_isotonic(), x, y, cv=folds)
    raw = [math.exp(min(score, 0.0)) for score in scores]
    return Calibration(
        scope=scope,
        reviews=len(scores),
        right=int(y.sum()),
        ece=expected_calibration_error(out_of_fold, right),
        raw_ece=expected_calibration_error(raw, right),
        bins=reliability(out_of_fold, right),
        model=_isotonic().fit(x, y),
    )


def calibrate(db: Database, scope: Scope) -> Calibration:
    """The calibration of `scope` from its reviews (CalibrationError when there are too few)."""
    return fit(*reviewed_scores(db, scope), scope)


def calibration_for_job(db: Database, job_id: int) -> Calibration | None:
    """The job's own calibration, else its task and model version's (other jobs' reviews count), else None."""
    try:
        return calibrate(db, Scope(job_id=job_id))
    except CalibrationError:
        pass
    with db.read() as session:
        row = session.execute(
            select(Job.task, Prediction.model_version_id).join(Prediction, Prediction.job_id == Job.id).where(Job.id == job_id).limit(1)
        ).first()
    if row is None:
        return None
    try:
        return calibrate(db, Scope(task=row.task, model_version_id=row.model_version_id))
    except CalibrationError:
        return None
