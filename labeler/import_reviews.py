"""Reviews made in another tool, recorded as reviews: a Label Studio JSON export read back.

Each task's latest annotation that was not cancelled becomes a review of the prediction the
task was exported with (its ids travel in the task's `data`, since Label Studio renumbers
tasks): `accept` when the answer read back equals the prediction, `edit` with that answer
otherwise (checked against the job's schema by `review.record_review`, the console's own
path, so these reviews feed the retrain exactly like the console's). The reviewer is the
annotation's author (`completed_by`: the email when the export carries it, else
`label-studio:<user id>`).

Importing is idempotent: a decision already on record is not recorded again, and a decision
someone else made after the annotation was last updated stands. Problems with one task (an
item of another job, an answer that does not fit the schema) are reported, not fatal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from labeler import label_studio
from labeler.db import Database
from labeler.exports import prediction_answer
from labeler.label_studio import LabelStudioError
from labeler.models import Decision, Job, Prediction, Review
from labeler.review import ReviewError, record_review

REVIEW_FORMATS = ("label-studio",)
MAX_PROBLEMS = 50


class ReviewImportError(ValueError):
    """A file that cannot be imported at all (not a Label Studio export, no such job); one line says why."""


@dataclass
class ImportSummary:
    """What an import did, task by task, and one line for each task it could not use."""

    accepted: int = 0
    edited: int = 0
    unchanged: int = 0
    skipped: int = 0
    unknown: int = 0
    invalid: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.accepted} accepted, {self.edited} edited, {self.unchanged} unchanged, {self.skipped} skipped "
            f"(no annotation or cancelled), {self.unknown} unknown, {self.invalid} invalid"
        )

    def problem(self, kind: str, message: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(message)


def import_reviews(db: Database, job_id: int, path: str | Path, fmt: str = "label-studio") -> ImportSummary:
    """Record the annotations in a review tool's export file as reviews of job `job_id`."""
    if fmt not in REVIEW_FORMATS:
        raise ReviewImportError(f"unknown review format {fmt!r}; expected one of {', '.join(REVIEW_FORMATS)}")
    with db.read() as session:
        job = session.get(Job, job_id)
    if job is None:
        raise ReviewImportError(f"no job {job_id}")
    found = label_studio.fields(job.task, job.schema)
    summary = ImportSummary()
    for number, task in enumerate(read_export(path), start=1):
        _import_task(db, job_id, found, task, number, summary)
    return summary


def read_export(path: str | Path) -> list[dict[str, Any]]:
    """The tasks of a Label Studio JSON export (an array of tasks with `data` and `annotations`)."""
    path = Path(path)
    not_export = f"{path} is not a Label Studio JSON export"
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReviewImportError(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReviewImportError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ReviewImportError(f"{not_export}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(tasks, list):
        raise ReviewImportError(f"{not_export}: expected an array of tasks, found a JSON {type(tasks).__name__}")
    for number, task in enumerate(tasks, start=1):
        if not (isinstance(task, dict) and isinstance(task.get("data"), dict) and isinstance(task.get("annotations"), list)):
            raise ReviewImportError(f"{not_export}: task {number} has no 'data' object and 'annotations' list (export as JSON, not JSON-MIN)")
    return tasks


def _import_task(db: Database, job_id: int, found: list[label_studio.Field], task: dict[str, Any], number: int, summary: ImportSummary) -> None:
    where = f"task {task.get('id', number)}"
    ids = {key: task["data"].get(key, (task.get("meta") or {}).get(key)) for key in ("job_id", "item_id", "prediction_id")}
    if not all(isinstance(value, int) for value in ids.values()):
        summary.problem("unknown", f"{where}: no llava-labeler job, item and prediction ids in its data (not exported by llava-labeler?)")
        return
    if ids["job_id"] != job_id:
        summary.problem("unknown", f"{where}: item {ids['item_id']} belongs to job {ids['job_id']}, not job {job_id}")
        return
    with db.read() as session:
        prediction = session.scalars(
            select(Prediction).where(
                Prediction.id == ids["prediction_id"], Prediction.item_id == ids["item_id"], Prediction.job_id == job_id
            )
        ).first()
        review = session.scalars(select(Review).where(Review.prediction_id == ids["prediction_id"])).first()
    if prediction is None:
        summary.problem("unknown", f"{where}: job {job_id} has no item {ids['item_id']} with prediction {ids['prediction_id']}")
        return
    annotation = _latest(task["annotations"])
    if annotation is None:
        summary.skipped += 1
        return
    try:
        output = label_studio.answer(found, annotation.get("result") or [])
    except LabelStudioError as exc:
        summary.problem("invalid", f"{where}: {exc}")
        return
    decision = Decision.ACCEPT if output == prediction_answer(prediction) else Decision.EDIT
    value = output if decision == Decision.EDIT else None
    reviewer = _author(annotation.get("completed_by"))
    if review is not None and (
        (review.decision, review.output, review.reviewer) == (decision, value, reviewer)
        or (review.reviewer != reviewer and review.created_at > _when(annotation))
    ):
        summary.unchanged += 1  # on record already, or decided by someone else since
        return
    try:
        record_review(db, prediction.id, reviewer, decision, value)
    except ReviewError as exc:
        summary.problem("invalid", f"{where}: {exc}")
        return
    if decision == Decision.ACCEPT:
        summary.accepted += 1
    else:
        summary.edited += 1


def _latest(annotations: list[Any]) -> dict[str, Any] | None:
    """The task's most recently updated annotation that was not cancelled (skipped), if any."""
    usable = [a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")]
    return max(usable, key=lambda a: (_when(a), str(a.get("id", ""))), default=None)


def _when(annotation: dict[str, Any]) -> datetime:
    """When the annotation was last changed (`updated_at`, else `created_at`); the far future when it does not say."""
    for key in ("updated_at", "created_at"):
        stamp = annotation.get(key)
        if isinstance(stamp, str):
            try:
                moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            except ValueError:
                continue
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return datetime.max.replace(tzinfo=UTC)


def _author(completed_by: Any) -> str:
    """A reviewer name from `completed_by`: an email when present, else the Label Studio user id."""
    if isinstance(completed_by, dict):
        if isinstance(completed_by.get("email"), str) and completed_by["email"]:
            return completed_by["email"]
        completed_by = completed_by.get("id")
    return f"label-studio:{completed_by}" if completed_by is not None else "label-studio"
