"""The labeler's service layer: every operation the CLI and the review console perform.

`Labeler` is the one way in for callers outside the package: it owns the database and
the queue connection for one settings object and returns plain dataclasses
(`JobStatus`, `ReviewTask`, `ReviewRecord`, `ModelVersionInfo`, ...), never ORM rows or
sessions, so the console needs no SQL and no Celery.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from celery import Celery
from sqlalchemy import select
from sqlalchemy.orm import Session

from labeler.settings import LabelerConfig
from labeler import auto_accept, calibration, console_queries, exports, import_reviews, jobs, registry, retrain, review
from labeler.accuracy import Accuracy, score_job
from labeler.confidence import mean_logprob, probability
from labeler.console_queries import BrowsePage, BrowseQuery, BrowseRow, FailureReason, ReviewRates
from labeler.db import Database, open_database
from labeler.exports import FORMATS, SUFFIX, ExportError, companion, label_text
from labeler.jobs import FailedItem, JobError, JobSpec, JobStatus
from labeler.models import RUNNABLE_JOB_STATES, Decision, ItemState, JobState, ModelState, ModelVersion
from labeler.queue import make_celery
from labeler.reading import ReadError, read_image_bytes
from labeler.registry import RegistryError
from labeler.retrain import RetrainOutcome
from labeler.review import REVIEW_STATES, PredictionFilter, ReviewError, ReviewRecord, ReviewTask
from labeler.sources import IMAGE_EXTENSIONS, SourceError

__all__ = [
    "RUNNABLE_JOB_STATES",
    "Decision",
    "ItemState",
    "JobState",
    "ModelState",
    "mean_logprob",
    "probability",
    "FORMATS",
    "REVIEW_STATES",
    "SUFFIX",
    "BrowsePage",
    "BrowseQuery",
    "BrowseRow",
    "ExportError",
    "FailedItem",
    "FailureReason",
    "JobError",
    "JobSpec",
    "JobStatus",
    "Labeler",
    "ModelVersionInfo",
    "PredictionFilter",
    "ReadError",
    "RegistryError",
    "RetrainOutcome",
    "ReviewError",
    "ReviewRecord",
    "ReviewRates",
    "ReviewTask",
    "SourceError",
    "companion",
    "label_text",
]


@dataclass(frozen=True)
class ModelVersionInfo:
    id: int
    name: str
    uri: str
    parent: str | None
    status: str
    metrics: dict[str, Any] | None
    created_at: datetime


class Labeler:
    """Jobs, reviews and model versions for one settings object."""

    def __init__(self, settings: LabelerConfig, *, app: Celery | None = None):
        self.settings = settings
        self.db: Database = open_database(self.settings.database_url)
        self._app = app

    @cached_property
    def app(self) -> Celery:
        return self._app or make_celery(self.settings)

    # jobs
    def submit(
        self,
        source: str,
        spec: JobSpec,
        *,
        name: str | None = None,
        batch_size: int | None = None,
        extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
        progress: Callable[[int], None] | None = None,
    ) -> JobStatus:
        return jobs.submit(
            self.db, self.app, self.settings, source, spec, name=name, batch_size=batch_size, extensions=extensions, progress=progress
        )

    def status(self, job_id: int) -> JobStatus:
        """The job's progress, and whether it is stalled (no live worker on this queue, or no progress)."""
        return jobs.get_status(self.db, job_id, self.settings.labeler)

    def list_jobs(self, *, limit: int = 50, offset: int = 0) -> list[JobStatus]:
        return jobs.list_jobs(self.db, limit=limit, offset=offset, settings=self.settings.labeler)

    def pause(self, job_id: int) -> JobStatus:
        return jobs.pause(self.db, job_id)

    def resume(self, job_id: int) -> JobStatus:
        return jobs.resume(self.db, self.app, self.settings, job_id)

    def cancel(self, job_id: int) -> JobStatus:
        return jobs.cancel(self.db, job_id)

    def retry_failed(self, job_id: int) -> tuple[JobStatus, int]:
        return jobs.retry_failed(self.db, self.app, self.settings, job_id)

    def failed_items(self, job_id: int, *, limit: int = 20) -> list[FailedItem]:
        return jobs.failed_items(self.db, job_id, limit=limit)

    def accuracy(self, job_id: int) -> Accuracy | None:
        return score_job(self.db, job_id)

    def export(
        self,
        job_id: int,
        fmt: str,
        out: str | Path,
        *,
        include_unreviewed: bool = False,
        relative_to: str | Path | None = None,
        image_url_prefix: str | None = None,
    ) -> int:
        return exports.export(
            self.db, job_id, fmt, out, include_unreviewed=include_unreviewed, relative_to=relative_to, image_url_prefix=image_url_prefix
        )

    def import_reviews(self, job_id: int, path: str | Path, fmt: str = "label-studio") -> import_reviews.ImportSummary:
        """Record the annotations of a review tool's export (Label Studio JSON) as reviews of the job."""
        return import_reviews.import_reviews(self.db, job_id, path, fmt)

    # review
    def next_for_review(
        self,
        reviewer: str,
        wanted: PredictionFilter = review.UNREVIEWED,
        *,
        order: review.Order = "confidence",
        exclude: Collection[int] = (),
    ) -> ReviewTask | None:
        return review.next_for_review(
            self.db, reviewer, self.settings.labeler.review_lease_s, wanted, order=order, exclude=exclude
        )

    def record_review(self, prediction_id: int, reviewer: str, decision: str, output: Any = None) -> ReviewRecord:
        return review.record_review(self.db, prediction_id, reviewer, decision, output)

    def release_review(self, prediction_id: int, reviewer: str) -> None:
        review.release(self.db, prediction_id, reviewer)

    def review_counts(self, job_id: int | None = None) -> dict[str, int]:
        return review.review_counts(self.db, job_id)

    # trust: calibration from reviews, auto-accept at a measured precision
    def calibration(self, scope: calibration.Scope) -> calibration.Calibration:
        """Score → P(right) fitted on the scope's reviews (`calibration.CalibrationError` when too few)."""
        return calibration.calibrate(self.db, scope)

    def auto_accept(self, job_id: int, precision: float, *, dry_run: bool = False, **limits: Any) -> tuple[auto_accept.Plan, int]:
        """The plan at `precision` and how many predictions it accepted (none on a dry run)."""
        found = auto_accept.plan(self.db, job_id, precision, **limits)
        return found, 0 if dry_run else auto_accept.apply(self.db, found)

    def undo_auto_accept(self, job_id: int) -> int:
        return auto_accept.undo(self.db, job_id)

    # the console's pages
    def image_bytes(self, uri: str) -> bytes:
        """An item's image, read the way the workers read it (URL guard, byte limit); `ReadError` says why not."""
        return read_image_bytes(uri, self.settings)

    def browse(self, wanted: BrowseQuery) -> BrowsePage:
        return console_queries.browse(self.db, wanted)

    def failure_reasons(self, job_id: int, *, limit: int = 20) -> list[FailureReason]:
        return console_queries.failure_reasons(self.db, job_id, limit=limit)

    def review_rates(self) -> list[ReviewRates]:
        return console_queries.review_rates(self.db)

    # model versions
    def list_model_versions(self) -> list[ModelVersionInfo]:
        with self.db.read() as session:
            return [_info(session, version) for version in session.scalars(select(ModelVersion).order_by(ModelVersion.id))]

    def register_model_version(
        self, name: str, uri: str, *, parent: str | None = None, metrics: dict[str, Any] | None = None, status: str = ModelState.CANDIDATE
    ) -> ModelVersionInfo:
        with self.db.write() as session:
            return _info(session, registry.register(session, name, uri, parent=parent, metrics=metrics, status=status))

    def promote_model_version(self, name: str) -> ModelVersionInfo:
        with self.db.write() as session:
            return _info(session, registry.promote(session, name))

    def active_model_version(self) -> ModelVersionInfo | None:
        with self.db.read() as session:
            version = registry.active(session)
            return _info(session, version) if version is not None else None

    def model_for_new_jobs(self) -> str:
        """The checkpoint (or predictor URL) new jobs should run: the active version once one is promoted."""
        with self.db.read() as session:
            return registry.model_for_new_jobs(session, self.settings.engine.model, self.settings.engine.url)

    def settings_for_new_jobs(self) -> LabelerConfig:
        """These settings with the engine on `model_for_new_jobs()`: what a worker or `run` should start with,
        so that an embedded deployment serves (and attributes predictions to) the promoted version."""
        with self.db.read() as session:
            return registry.settings_for_new_jobs(session, self.settings)

    # retraining
    def retrain(self, *, full: bool = False, dry_run: bool = False, echo: Callable[[str], None] = print) -> RetrainOutcome:
        """Finetune on new reviews, evaluate, promote or reject (`labeler.retrain`); `locks.LockHeld` if one runs."""
        return retrain.retrain(self.db, self.settings, full=full, dry_run=dry_run, echo=echo)


def _info(session: Session, version: ModelVersion) -> ModelVersionInfo:
    parent = session.get(ModelVersion, version.parent_id) if version.parent_id else None
    return ModelVersionInfo(
        id=version.id,
        name=version.name,
        uri=version.uri,
        parent=parent.name if parent else None,
        status=version.status,
        metrics=version.metrics,
        created_at=version.created_at,
    )
