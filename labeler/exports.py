"""Exports of a job: JSONL, COCO captions, LLaVA conversation JSON, Label Studio tasks.

All four stream: items are read in id-ordered pages (keyset pagination, `PAGE` at a
time) with their predictions and reviews, and records are written as they come, so a
job of a million items never sits in memory. JSON-array formats are written element
by element.

The label of an item: the reviewer's corrected output after an `edit`, the
prediction after an `accept` or with no review yet, nothing after a `reject`.
- `jsonl`: every item with its status, error, prediction, review and label;
- `coco`: COCO captions (`images`, `annotations`) for items with a label;
- `llava`: LLaVA-1.5 training records, the user turn rendered by `engine.prompts`
  exactly as inference asks it; reviewed (accepted or edited) items only unless
  `include_unreviewed`;
- `label-studio`: one task per predicted item, the prediction as a pre-annotation
  (TextArea `answer` on Image `image`; see LABEL_STUDIO_CONFIG).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy import select

from engine.prompts import IMAGE_TOKEN, build_instruction
from labeler.db import Database
from labeler.models import Decision, Item, ItemState, Job, ModelVersion, Prediction, Review

PAGE = 1000
FORMATS = ("jsonl", "coco", "llava", "label-studio")
SUFFIX = {"jsonl": ".jsonl", "coco": ".coco.json", "llava": ".llava.json", "label-studio": ".label-studio.json"}
LABEL_STUDIO_CONFIG = (
    '<View><Image name="image" value="$image"/><Header value="$question"/>'
    '<TextArea name="answer" toName="image" editable="true"/></View>'
)


class ExportError(ValueError):
    pass


@dataclass(frozen=True)
class Row:
    """One item with its latest prediction and that prediction's review."""

    item: Item
    prediction: Prediction | None
    model_version: str | None
    review: Review | None

    def output(self) -> Any:
        """The prediction's answer: parsed JSON for schema tasks, else the text."""
        if self.prediction is None:
            return None
        return self.prediction.output_json if self.prediction.output_json is not None else self.prediction.text

    def label(self) -> Any:
        if self.review is not None:
            if self.review.decision == Decision.REJECT:
                return None
            if self.review.decision == Decision.EDIT:
                return self.review.output
        return self.output()


def label_text(value: Any) -> str:
    """A label as the model writes it: text as is, JSON in the constrained decoder's spacing."""
    return value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "), ensure_ascii=False)


def iter_rows(db: Database, job_id: int, *, done_only: bool = False) -> Iterator[Row]:
    """Every item of the job in id order, one page of `PAGE` items in memory at a time."""
    last = 0
    while True:
        with db.read() as session:
            query = select(Item).where(Item.job_id == job_id, Item.id > last)
            if done_only:
                query = query.where(Item.status == ItemState.DONE)
            items = list(session.scalars(query.order_by(Item.id).limit(PAGE)))
            if not items:
                return
            found = session.execute(
                select(Prediction, ModelVersion.name, Review)
                .join(ModelVersion, Prediction.model_version_id == ModelVersion.id)
                .outerjoin(Review, Review.prediction_id == Prediction.id)
                .where(Prediction.item_id.in_([item.id for item in items]))
                .order_by(Prediction.id)
            ).all()
        latest = {prediction.item_id: (prediction, name, review) for prediction, name, review in found}
        for item in items:
            yield Row(item, *latest.get(item.id, (None, None, None)))
        last = items[-1].id


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
        handle.write(("\n" if count == 0 else ",\n") + json.dumps(record, ensure_ascii=False))
        count += 1
    handle.write("\n]" if count else "]")
    return count


def _coco(db: Database, job: Job, handle: IO[str]) -> int:
    def labelled() -> Iterator[Row]:
        return (row for row in iter_rows(db, job.id, done_only=True) if row.label() is not None)

    handle.write(json.dumps({"info": {"description": f"llava-labeler job {job.id} ({job.task})"}, "licenses": []})[:-1])
    handle.write(', "images": ')
    _write_array(handle, ({"id": row.item.id, "file_name": row.item.uri} for row in labelled()))
    handle.write(', "annotations": ')
    annotations = (
        {"id": n, "image_id": row.item.id, "caption": label_text(row.label())} for n, row in enumerate(labelled(), start=1)
    )
    count = _write_array(handle, annotations)
    handle.write("}\n")
    return count


def llava_records(
    db: Database, job: Job, *, include_unreviewed: bool = False, item_ids: Collection[int] | None = None
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
            "image": row.item.uri,
            "conversations": [
                {"from": "human", "value": f"{IMAGE_TOKEN}\n{question}"},
                {"from": "gpt", "value": label_text(label)},
            ],
        }
        yield record, row


def _llava(db: Database, job: Job, handle: IO[str], include_unreviewed: bool) -> int:
    count = _write_array(handle, (record for record, _ in llava_records(db, job, include_unreviewed=include_unreviewed)))
    handle.write("\n")
    return count


def _label_studio(db: Database, job: Job, handle: IO[str]) -> int:
    def tasks() -> Iterator[dict[str, Any]]:
        for row in iter_rows(db, job.id, done_only=True):
            if row.prediction is None:
                continue
            result = {
                "id": f"p{row.prediction.id}",
                "from_name": "answer",
                "to_name": "image",
                "type": "textarea",
                "value": {"text": [label_text(row.output())]},
            }
            prediction = {"model_version": row.model_version, "score": row.prediction.confidence, "result": [result]}
            data = {"image": row.item.uri, "question": row.item.question or job.instruction or ""}
            yield {"id": row.item.id, "data": data, "predictions": [prediction]}

    count = _write_array(handle, tasks())
    handle.write("\n")
    return count


def export(db: Database, job_id: int, fmt: str, out: str | Path, *, include_unreviewed: bool = False) -> int:
    """Write job `job_id` in format `fmt` to `out`; returns the number of records written."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    with db.read() as session:
        job = session.get(Job, job_id)
    if job is None:
        raise ExportError(f"no job {job_id}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    writers: dict[str, Callable[[IO[str]], int]] = {
        "jsonl": lambda handle: _jsonl(db, job_id, handle),
        "coco": lambda handle: _coco(db, job, handle),
        "llava": lambda handle: _llava(db, job, handle, include_unreviewed),
        "label-studio": lambda handle: _label_studio(db, job, handle),
    }
    with partial.open("w", encoding="utf-8") as handle:
        count = writers[fmt](handle)
    partial.replace(out)  # a reader never sees half a file
    return count


def _jsonl(db: Database, job_id: int, handle: IO[str]) -> int:
    count = 0
    for row in iter_rows(db, job_id):
        handle.write(json.dumps(_jsonl_record(row), ensure_ascii=False) + "\n")
        count += 1
    return count
