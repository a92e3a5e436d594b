"""Auto-accept at a measured precision: accept the unreviewed labels above a threshold the reviews justify.

The threshold is the lowest trust score (`labeler.calibration.TRUST_SCORE`) among a grid
of GRID candidates at which the job's human-reviewed predictions at or above it are right
with a one-sided Clopper–Pearson lower confidence bound ≥ the target precision, the bounds
holding together at the stated confidence (see `best_threshold`). Clopper–Pearson rather than Wilson because
it is exact: its coverage is never below the stated level, while Wilson's dips below it
for proportions near 1 — exactly where a 0.99 target sits — and a team reads this number
as a promise. The price is honesty about sample size: with every reviewed item right,
the bound reaches p only from n = ln(α/GRID)/ln(p) reviews above the threshold (528 for
0.99 at 95 %, 104 for 0.95), and the report says so instead of accepting anything.

Accepted items get a review with the decision `auto`, the reviewer `AUTO_REVIEWER` and the
threshold; `undo` deletes exactly those reviews. Items a person is looking at (a live
review lease) are left alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from labeler.calibration import TRUST_SCORE, Scope, reviewed_scores
from labeler.db import Database, dialect_insert
from labeler.models import Decision, Job, Prediction, Review, utcnow

AUTO_REVIEWER = "auto-accept"
MIN_REVIEWS = 100
CONFIDENCE_LEVEL = 0.95
GRID = 10  # candidate thresholds, tested together (Bonferroni)
CHUNK = 10_000  # ids per statement: under every database's bound-parameter limit


class AutoAcceptError(ValueError):
    """Arguments that make no sense (a precision outside (0, 1), a negative review count)."""


@dataclass(frozen=True)
class Plan:
    """What auto-accept found for one job; `threshold` is None when nothing may be accepted (`reason` says why)."""

    job_id: int
    precision: float
    confidence_level: float
    reviews: int
    threshold: float | None
    reviewed_above: int
    right_above: int
    lower_bound: float | None
    coverage: int  # unreviewed predictions at or above the threshold
    unreviewed: int
    reason: str | None

    @property
    def coverage_share(self) -> float:
        return self.coverage / self.unreviewed if self.unreviewed else 0.0


def lower_bound(right: int, n: int, level: float = CONFIDENCE_LEVEL) -> float:
    """One-sided Clopper–Pearson lower bound on a proportion: `right` of `n` at confidence `level`."""
    from scipy.stats import beta  # imported on use: the CLI and the console import this module

    return 0.0 if right == 0 else float(beta.ppf(1.0 - level, right, n - right + 1))


def reviews_needed(precision: float, level: float = CONFIDENCE_LEVEL) -> int:
    """The fewest reviews above a threshold, all right, whose bound (as `best_threshold` tests it) reaches `precision`."""
    return math.ceil(math.log((1.0 - level) / GRID) / math.log(precision))


def best_threshold(
    scores: list[float], right: list[bool], precision: float, level: float = CONFIDENCE_LEVEL
) -> tuple[float, int, int, float] | None:
    """(threshold, reviewed at or above it, right among them, their lower bound) for the lowest passing threshold, or None.

    Only GRID thresholds are tested: those with about 10 %, 20 %, …, 100 % of the reviews
    above them (a threshold never splits tied scores), each at confidence 1 − (1 − level)/GRID,
    so that all of them hold together at `level` (Bonferroni) and picking the lowest that
    passes keeps the promise. Scanning every threshold at `level` and keeping the lowest that
    passes picks a lucky one: on the shapes world's demo-model labels it accepted labels
    that were right less often than the target in 12 of 100 draws (30 % reviewed, target 0.9).
    """
    ranked = sorted(zip(scores, right), key=lambda pair: -pair[0])
    ends: list[tuple[float, int, int]] = []  # (score, reviews at or above it, right among them) where a tie run ends
    good = 0
    for n, (score, ok) in enumerate(ranked, start=1):
        good += ok
        if n == len(ranked) or ranked[n][0] != score:
            ends.append((score, n, good))
    if not ends:
        return None
    grid = {min(ends, key=lambda end: abs(end[1] - len(ranked) * step / GRID)) for step in range(1, GRID + 1)}
    each = 1.0 - (1.0 - level) / GRID
    best = None
    for score, n, good in sorted(grid, key=lambda end: end[1]):
        bound = lower_bound(good, n, each)
        if bound >= precision:
            best = (score, n, good, bound)
    return best


def _unreviewed(job_id: int, threshold: float | None = None):
    now = utcnow()
    conditions = [
        Prediction.job_id == job_id,
        Prediction.reviewed.is_(False),
        or_(Prediction.review_lease_owner.is_(None), Prediction.review_lease_expires_at < now),
    ]
    if threshold is not None:
        conditions.append(TRUST_SCORE >= threshold)
    return conditions


def plan(
    db: Database, job_id: int, precision: float, *, min_reviews: int = MIN_REVIEWS, level: float = CONFIDENCE_LEVEL
) -> Plan:
    """The threshold, bound and coverage for `job_id` at `precision`; changes nothing."""
    if not 0.0 < precision < 1.0:
        raise AutoAcceptError(f"--precision must be between 0 and 1 (exclusive), got {precision}")
    if not 0.0 < level < 1.0:
        raise AutoAcceptError(f"the confidence level must be between 0 and 1 (exclusive), got {level}")
    if min_reviews < 1:
        raise AutoAcceptError(f"--min-reviews must be at least 1, got {min_reviews}")
    scores, right = reviewed_scores(db, Scope(job_id=job_id))
    with db.read() as session:
        if session.get(Job, job_id) is None:
            raise AutoAcceptError(f"no job {job_id}")
        unreviewed = session.scalar(select(func.count()).select_from(Prediction).where(*_unreviewed(job_id))) or 0
    base = dict(job_id=job_id, precision=precision, confidence_level=level, reviews=len(scores), unreviewed=unreviewed)
    needed = reviews_needed(precision, level)
    if len(scores) < max(min_reviews, needed):
        reason = (f"job {job_id} has {len(scores)} human reviews; auto-accept needs at least {max(min_reviews, needed)} "
                  f"(--min-reviews {min_reviews}; a {precision} bound at {level:.0%} needs {needed} right reviews above a threshold)")
        return Plan(**base, threshold=None, reviewed_above=0, right_above=0, lower_bound=None, coverage=0, reason=reason)
    best = best_threshold(scores, right, precision, level)
    if best is None:
        reason = (f"no threshold reaches precision {precision} at {level:.0%} confidence on job {job_id}'s "
                  f"{len(scores)} reviews ({sum(right)} right): review more, or lower --precision")
        return Plan(**base, threshold=None, reviewed_above=0, right_above=0, lower_bound=None, coverage=0, reason=reason)
    threshold, above, good, bound = best
    with db.read() as session:
        coverage = session.scalar(select(func.count()).select_from(Prediction).where(*_unreviewed(job_id, threshold))) or 0
    return Plan(**base, threshold=threshold, reviewed_above=above, right_above=good, lower_bound=bound, coverage=coverage, reason=None)


def _set_reviewed(session: Session, ids: list[int], reviewed: bool) -> None:
    for start in range(0, len(ids), CHUNK):
        chunk = ids[start : start + CHUNK]
        session.execute(
            update(Prediction).where(Prediction.id.in_(chunk)).values(reviewed=reviewed).execution_options(synchronize_session=False)
        )


def apply(db: Database, found: Plan) -> int:
    """Record an `auto` review for every unreviewed prediction at or above the plan's threshold; how many."""
    if found.threshold is None:
        return 0
    with db.write() as session:
        ids = list(session.scalars(select(Prediction.id).where(*_unreviewed(found.job_id, found.threshold))))
        if not ids:
            return 0
        now = utcnow()
        values = [
            {"prediction_id": pid, "decision": Decision.AUTO, "output": None, "reviewer": AUTO_REVIEWER,
             "created_at": now, "threshold": found.threshold}
            for pid in ids
        ]  # fmt: skip
        session.execute(dialect_insert(session)(Review.__table__).on_conflict_do_nothing(index_elements=["prediction_id"]), values)
        _set_reviewed(session, ids, True)
    return len(ids)


def undo(db: Database, job_id: int) -> int:
    """Delete the job's `auto` reviews and put their predictions back in the queue; how many."""
    with db.write() as session:
        ids = list(
            session.scalars(
                select(Review.prediction_id)
                .join(Prediction, Review.prediction_id == Prediction.id)
                .where(Prediction.job_id == job_id, Review.decision == Decision.AUTO)
            )
        )
        if not ids:
            return 0
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            session.execute(delete(Review).where(Review.prediction_id.in_(chunk)).execution_options(synchronize_session=False))
        _set_reviewed(session, ids, False)
    return len(ids)
