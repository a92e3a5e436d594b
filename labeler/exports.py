"""Exports of a job: JSONL, COCO captions, LLaVA conversation JSON, Label Studio tasks.

All four stream: items are read in id-ordered pages (keyset pagination, `PAGE` at a
time) with their predictions and reviews, as plain rows (no ORM objects: a million of
them cost more than the rest of the export), and records are written as they come, so a
job of a million items never sits in memory. JSON-array formats are written element
by element.

The label of an item: the reviewer's corrected output after an `edit`, the
prediction after an `accept` or with no review yet, nothing after a `reject`.
- `jsonl`: every item with its status, error, prediction, review and label;
- `coco`: COCO captions (`images`, `annotations`) for items with a label;
- `llava`: LLaVA-1.5 training records, the user turn rendered by `engine.prompts`
  exactly as inference asks it; reviewed (accepted or edited) items only unless
  `include_unreviewed`;
- `label-studio`: one task per predicted item, the prediction as a pre-annotation, and
  the labeling config beside it (`job-N.label-studio.xml`; `labeler.label_studio`).

Image paths travel: `relative_to` writes local paths relative to a directory (COCO,
LLaVA, Label Studio; a path outside it is an error), and Label Studio tasks can name
their image as `image_url_prefix` + that relative path (`/data/local-files/?d=` for
Label Studio's local-file serving, or an http(s), s3 or gs base). URLs stay as they are.
A COCO export also writes the model's captions as a COCO results file
(`job-N.coco-results.json`, `[{"image_id", "caption"}]`, what `COCO.loadRes` reads).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, NamedTuple
from urllib.parse import quote

from sqlalchemy import Column, Select, select

from engine.prompts import IMAGE_TOKEN, build_instruction
from labeler import label_studio
from labeler.db import Database
from labeler.models import Base, Decision, Item, ItemState, Job, ModelVersion, Prediction, Review

PAGE = 1000
_encode = json.JSONEncoder(ensure_ascii=False).encode  # `json.dumps(..., ensure_ascii=False)` without a new encoder per record
FORMATS = ("jsonl", "coco", "llava", "label-studio")
SUFFIX = {"jsonl": ".jsonl", "coco": ".coco.json", "llava": ".llava.json", "label-studio": ".label-studio.json"}
COMPANION = {"coco": ".coco-results.json", "label-studio": ".label-studio.xml"}  # written beside the export
URL_PREFIXES = ("/", "http://", "https://", "s3://", "gs://")


class ExportError(ValueError):
    pass


@dataclass(frozen=True)
class ImagePaths:
    """How an export names images: relative to a directory, and (Label Studio) behind a URL prefix."""

    relative_to: Path | None = None
    url_prefix: str | None = None

    def path(self, uri: str) -> str:
        """A local path relative to `relative_to` (an error when outside it); URLs and, without a directory, paths as stored."""
        if self.relative_to is None or "://" in uri:
            return uri
        path = Path(uri)
        if not path.is_relative_to(self.relative_to):
            raise ExportError(f"image {uri} is outside {self.relative_to}, the directory image paths are made relative to")
        return path.relative_to(self.relative_to).as_posix()

    def url(self, uri: str) -> str:
        """What a Label Studio task loads: `url_prefix` + the relative path for local files."""
        if self.url_prefix is None or "://" in uri:
            return self.path(uri)
        return self.url_prefix + quote(self.path(uri), safe="/")


def image_paths(fmt: str, relative_to: str | Path | None, url_prefix: str | None) -> ImagePaths:
    """Checked image-path options: which formats take them, a real directory, a prefix Label Studio can load."""
    if relative_to is not None:
        if fmt == "jsonl":
            raise ExportError("relative image paths apply to the coco, llava and label-studio exports (jsonl keeps each item's URI)")
        relative_to = Path(relative_to).expanduser().resolve()
        if not relative_to.is_dir():
            raise ExportError(f"{relative_to} is not a directory (image paths are made relative to it)")
    if url_prefix is not None:
        if fmt != "label-studio":
            raise ExportError("an image URL prefix applies to the label-studio export only")
        if not url_prefix.startswith(URL_PREFIXES):
            raise ExportError(f"image URL prefix {url_prefix!r} must start with one of {', '.join(URL_PREFIXES)}")
        if relative_to is None:
            raise ExportError("an image URL prefix needs the image root, the directory the served paths are relative to")
    return ImagePaths(relative_to, url_prefix)


def companion(fmt: str, out: str | Path) -> Path | None:
    """The file written beside an export (COCO results, Label Studio config), if the format has one."""
    if fmt not in COMPANION:
        return None
    out = Path(out)
    return out.with_name(out.name.removesuffix(".json").removesuffix(SUFFIX[fmt].removesuffix(".json")) + COMPANION[fmt])


class ItemRecord(NamedTuple):
    """The item columns the exports read (an `Item`'s attribute names, no ORM instance)."""

    id: int
    uri: str
    status: str
    error: str | None
    question: str | None
    meta: dict[str, Any] | None
    reference: Any
    content_hash: str | None


class PredictionRecord(NamedTuple):
    """The prediction columns the exports read (a `Prediction`'s attribute names)."""

    id: int
    text: str
    output_json: Any
    confidence: float | None
    tokens: int
    prompt_tokens: int | None
    finish_reason: str
    prompt_hash: str
    created_at: datetime


class ReviewRecord(NamedTuple):
    """The review columns the exports read (a `Review`'s attribute names)."""

    id: int
    decision: str
    output: Any
    reviewer: str
    created_at: datetime


def _columns(model: type[Base], record: type[NamedTuple]) -> list[Column[Any]]:
    """The table columns behind the record's attribute names: selected as such, rows skip the ORM's loading."""
    return [model.__mapper__.columns[name] for name in record._fields]


_ITEM, _PREDICTION, _REVIEW = _columns(Item, ItemRecord), _columns(Prediction, PredictionRecord), _columns(Review, ReviewRecord)
_NAME_AT = 1 + len(_PREDICTION)  # a prediction row: item id, the prediction, its model's name, its review
_REVIEW_AT = _NAME_AT + 1


@dataclass(frozen=True, slots=True)
class Row:
    """One item with its latest prediction and that prediction's review."""

    item: ItemRecord
    prediction: PredictionRecord | None
    model_version: str | None
    review: ReviewRecord | None

    def output(self) -> Any:
        return None if self.prediction is None else prediction_answer(self.prediction)

    def label(self) -> Any:
        if self.review is not None:
            if self.review.decision == Decision.REJECT:
                return None
            if self.review.decision == Decision.EDIT:
                return self.review.output
        return self.output()


def prediction_answer(prediction: Prediction | PredictionRecord) -> Any:
    """A prediction's answer as exports show it: parsed JSON for schema tasks, else the text."""
    return prediction.output_json if prediction.output_json is not None else prediction.text


def label_text(value: Any) -> str:
    """A label as the model writes it: text as is, JSON in the constrained decoder's spacing."""
    return value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "), ensure_ascii=False)


def _items(job_id: int, after: int, done_only: bool) -> Select:
    """The next page of the job's items after id `after` (keyset on (job_id, id), the index's order)."""
    item = Item.__table__.c
    query = select(*_ITEM).where(item.job_id == job_id, item.id > after)
    if done_only:
        query = query.where(item.status == ItemState.DONE)
    return query.order_by(item.id).limit(PAGE)


def _predictions(first: int, last: int) -> Select:
    """The predictions of items `first`..`last`, each with its model's name and review, oldest first.

    A range of item ids is read through the predictions' (item_id, ...) index; joined to the page of
    items instead, PostgreSQL may hash-join a scan of every prediction, per page. Items of other jobs
    in the range come too, and are left out by the caller."""
    prediction, version, review = Prediction.__table__.c, ModelVersion.__table__.c, Review.__table__.c
    return (
        select(prediction.item_id, *_PREDICTION, version.name, *_REVIEW)
        .join_from(Prediction.__table__, ModelVersion.__table__, version.id == prediction.model_version_id)
        .outerjoin(Review.__table__, review.prediction_id == prediction.id)
        .where(prediction.item_id.between(first, last))
        .order_by(prediction.id)
    )


def _row(item: Sequence[Any], found: Sequence[Any] | None) -> Row:
    if found is None:
        return Row(ItemRecord._make(item), None, None, None)
    review = None if found[_REVIEW_AT] is None else ReviewRecord._make(found[_REVIEW_AT:])
    return Row(ItemRecord._make(item), PredictionRecord._make(found[1:_NAME_AT]), found[_NAME_AT], review)


def iter_rows(db: Database, job_id: int, *, done_only: bool = False) -> Iterator[Row]:
    """Every item of the job in id order, one page of `PAGE` items in memory at a time.

    Plain rows, not ORM objects: a million-item export cannot pay for an identity map. An item
    with several predictions comes once, with its latest (highest id) prediction."""
    last = 0
    while True:
        with db.read() as session:
            items = session.execute(_items(job_id, last, done_only)).all()
            if not items:
                return
            found = session.execute(_predictions(items[0][0], items[-1][0])).all()
        latest = {values[0]: values for values in found}  # a later prediction of an item replaces an earlier one
        for item in items:
            yield _row(item, latest.get(item[0]))
        last = items[-1][0]


def _jsonl_record(row: Row) -> dict[str, Any]:
    item, prediction, review = row.item, row.prediction, row.review
    return {
        "id": item.id,
        "uri": item.uri,
        "status": item.status,
        "error": item.error,
        "question": item.question,
        "metadata": item.meta,
        "reference": item.reference,
        "content_hash": item.content_hash,
        "prediction": None
        if prediction is None
        else {
            "text": prediction.text,
            "json": prediction.output_json,
            "confidence": prediction.confidence,
            "tokens": prediction.tokens,
            "finish_reason": prediction.finish_reason,
            "model_version": row.model_version,
            "prompt_hash": prediction.prompt_hash,
        },
        "review": None
        if review is None
        else {"decision": review.decision, "output": review.output, "reviewer": review.reviewer, "at": review.created_at.isoformat()},
        "label": row.label(),
    }


def _write_array(handle: IO[str], records: Iterator[dict[str, Any]]) -> int:
    count = 0
    handle.write("[")
    for record in records:
        handle.write(("\n" if count == 0 else ",\n") + _encode(record))
        count += 1
    handle.write("\n]" if count else "]")
    return count


def _coco(db: Database, job: Job, handle: IO[str], images: ImagePaths, results: IO[str]) -> int:
    def labelled() -> Iterator[Row]:
        return (row for row in iter_rows(db, job.id, done_only=True) if row.label() is not None)

    handle.write(json.dumps({"info": {"description": f"llava-labeler job {job.id} ({job.task})"}, "licenses": []})[:-1])
    handle.write(', "images": ')
    _write_array(handle, ({"id": row.item.id, "file_name": images.path(row.item.uri)} for row in labelled()))
    handle.write(', "annotations": ')
    annotations = (
        {"id": n, "image_id": row.item.id, "caption": label_text(row.label())} for n, row in enumerate(labelled(), start=1)
    )
    count = _write_array(handle, annotations)
    handle.write("}\n")
    _write_array(results, ({"image_id": row.item.id, "caption": label_text(row.output())} for row in labelled()))
    results.write("\n")
    return count


def llava_records(
    db: Database,
    job: Job,
    *,
    include_unreviewed: bool = False,
    item_ids: Collection[int] | None = None,
    images: ImagePaths = ImagePaths(),
) -> Iterator[tuple[dict[str, Any], Row]]:
    """The job's labels as LLaVA-1.5 training records (reviewed ones only unless `include_unreviewed`;
    only `item_ids` when given), each with its row: the `llava` export and the retrain's data."""
    choices = job.generation.get("choices")
    unanswerable = bool(job.generation.get("unanswerable", False))
    for row in iter_rows(db, job.id, done_only=True):
        if item_ids is not None and row.item.id not in item_ids:
            continue
        label = row.label()
        if label is None or (row.review is None and not include_unreviewed):
            continue
        question = build_instruction(
            job.task,  # type: ignore[arg-type]
            row.item.question or job.instruction,
            schema=job.schema,
            choices=choices,
            unanswerable=unanswerable,
        )
        record = {
            "id": f"job{job.id}-item{row.item.id}",
            "image": images.path(row.item.uri),
            "conversations": [
                {"from": "human", "value": f"{IMAGE_TOKEN}\n{question}"},
                {"from": "gpt", "value": label_text(label)},
            ],
        }
        yield record, row


def _llava(db: Database, job: Job, handle: IO[str], include_unreviewed: bool, images: ImagePaths) -> int:
    records = llava_records(db, job, include_unreviewed=include_unreviewed, images=images)
    count = _write_array(handle, (record for record, _ in records))
    handle.write("\n")
    return count


def _label_studio(db: Database, job: Job, handle: IO[str], images: ImagePaths, config: IO[str]) -> int:
    try:
        found = label_studio.fields(job.task, job.schema)
    except label_studio.LabelStudioError as exc:
        raise ExportError(str(exc)) from None
    config.write(label_studio.config(job.task, job.schema))

    def tasks() -> Iterator[dict[str, Any]]:
        for row in iter_rows(db, job.id, done_only=True):
            if row.prediction is None:
                continue
            yield label_studio.task(
                job_id=job.id,
                item_id=row.item.id,
                prediction_id=row.prediction.id,
                image=images.url(row.item.uri),
                question=row.item.question or job.instruction or "",
                found=found,
                output=row.output(),
                model_version=row.model_version,
                score=row.prediction.confidence,
            )

    count = _write_array(handle, tasks())
    handle.write("\n")
    return count


def export(
    db: Database,
    job_id: int,
    fmt: str,
    out: str | Path,
    *,
    include_unreviewed: bool = False,
    relative_to: str | Path | None = None,
    image_url_prefix: str | None = None,
) -> int:
    """Write job `job_id` in format `fmt` to `out` (and its `companion` beside it); returns the number of records."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    images = image_paths(fmt, relative_to, image_url_prefix)
    with db.read() as session:
        job = session.get(Job, job_id)
    if job is None:
        raise ExportError(f"no job {job_id}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    beside = companion(fmt, out)
    writers: dict[str, Callable[[IO[str], IO[str]], int]] = {
        "jsonl": lambda handle, _: _jsonl(db, job_id, handle),
        "coco": lambda handle, results: _coco(db, job, handle, images, results),
        "llava": lambda handle, _: _llava(db, job, handle, include_unreviewed, images),
        "label-studio": lambda handle, config: _label_studio(db, job, handle, images, config),
    }
    targets = [out] if beside is None else [out, beside]
    partials = [target.with_name(target.name + ".partial") for target in targets]
    try:
        with ExitStack() as stack:
            handles = [stack.enter_context(partial.open("w", encoding="utf-8")) for partial in partials]
            count = writers[fmt](handles[0], handles[-1])
    except BaseException:
        for partial in partials:
            partial.unlink(missing_ok=True)
        raise
    for partial, target in zip(partials, targets):
        partial.replace(target)  # a reader never sees half a file
    return count


def _jsonl(db: Database, job_id: int, handle: IO[str]) -> int:
    count = 0
    for row in iter_rows(db, job_id):
        handle.write(_encode(_jsonl_record(row)) + "\n")
        count += 1
    return count
