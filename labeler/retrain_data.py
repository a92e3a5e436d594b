"""The files a retrain trains and evaluates on, built from reviewed labels (and optional replay data).

Labeler and training meet only through files, so this module writes what training's
commands read: `train.json` (LLaVA conversation records), `eval.json` (training's
evaluation items) and an `images/` directory both are relative to. The training
records are the labeler's own `llava` export (`labeler.exports`: the user turn rendered
by `engine.prompts`, the reviewer's correction winning over the model's output, JSON
tasks with their response-format prompt), so a retrain trains on exactly what
`export --format llava` shows. Images are copied into the work directory (read as the
workers read them, so s3:// and https:// items work), because training only opens
images under its `--images` directory.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from engine.prompts import OPTION_LETTERS, UNANSWERABLE
from labeler.settings import LabelerConfig, RetrainSettings
from labeler import exports
from labeler.db import Database
from labeler.models import Decision, Job, Prediction, Review
from labeler.reading import read_image_bytes

TRAIN_DECISIONS = (Decision.ACCEPT, Decision.EDIT, Decision.AUTO)  # auto: accepted above a measured precision


class RetrainDataError(ValueError):
    """The reviewed labels or the replay data cannot be made into training files; the message says why."""


@dataclass(frozen=True)
class RetrainData:
    """What was written, and how much of each kind (recorded on the candidate's ModelVersion row)."""

    train: Path
    eval: Path
    images: Path
    counts: dict[str, int]


def reviewed_since(db: Database, since: datetime | None) -> dict[int, set[int]]:
    """Item ids per job whose prediction was accepted or edited after `since` (all, when None)."""
    query = (
        select(Prediction.job_id, Prediction.item_id)
        .join(Review, Review.prediction_id == Prediction.id)
        .where(Review.decision.in_(TRAIN_DECISIONS))
    )
    if since is not None:
        query = query.where(Review.created_at > since)
    found: dict[int, set[int]] = defaultdict(set)
    with db.read() as session:
        for job_id, item_id in session.execute(query):
            found[job_id].add(item_id)
    return dict(found)


def build(db: Database, settings: LabelerConfig, reviewed: dict[int, set[int]], workdir: Path) -> RetrainData:
    """Write train.json, eval.json and images/ under `workdir` from the reviewed items and the replay file."""
    options = settings.retrain
    images = workdir / "images"
    records: list[tuple[dict[str, Any], Job, exports.ItemRecord]] = []
    for job_id, item_ids in sorted(reviewed.items()):
        records += _reviewed_records(db, job_id, item_ids)
    if len(records) < 2:
        raise RetrainDataError(f"{len(records)} reviewed records could be exported; a retrain needs at least 2")
    held = _held_out(len(records), options)
    train, evaluation = [], []
    for index, (record, job, item) in enumerate(records):
        record["image"] = _copy_image(item.uri, settings, images, f"reviewed/job{job.id}-item{item.id}")
        if index in held:
            evaluation.append(_eval_item(record, job, item))
        else:
            train.append(record)
    replay = _replay(options, images)
    mixed = train + replay
    random.Random(options.seed).shuffle(mixed)
    _write(workdir / "train.json", mixed)
    _write(workdir / "eval.json", evaluation)
    counts = {"reviewed": len(records), "train_reviewed": len(train), "held_out": len(evaluation), "replay": len(replay)}
    return RetrainData(workdir / "train.json", workdir / "eval.json", images, counts)


def _reviewed_records(db: Database, job_id: int, item_ids: set[int]) -> list[tuple[dict[str, Any], Job, exports.ItemRecord]]:
    """The job's llava export records for `item_ids`, with each record's job and item."""
    with db.read() as session:
        job = session.get(Job, job_id)
    return [(record, job, row.item) for record, row in exports.llava_records(db, job, item_ids=item_ids)]  # type: ignore[arg-type]


def _held_out(n: int, options: RetrainSettings) -> set[int]:
    """Indexes of the evaluation slice: a seeded sample, at least one record, never all of them."""
    size = min(n - 1, max(1, math.ceil(n * options.holdout_fraction)))
    return set(random.Random(options.seed).sample(range(n), size))


def _copy_image(uri: str, settings: LabelerConfig, images: Path, stem: str) -> str:
    """Copy one item's image under `images` (read as the workers read it); the path relative to `images`."""
    suffix = Path(uri.split("?")[0]).suffix.lower()[:8]
    relative = f"{stem}{suffix}"
    target = images / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(read_image_bytes(uri, settings))
    return relative


def _eval_item(record: dict[str, Any], job: Job, item: exports.ItemRecord) -> dict[str, Any]:
    """The held-out record as one of training's evaluation items, asked exactly as the job asked it.

    One evaluation type per job and task, so items scored together share one schema or option list.
    """
    label = record["conversations"][1]["value"]
    question = item.question or job.instruction
    base = {"id": record["id"], "image": record["image"], "task": job.task, "question": question}
    if job.task == "json":
        return {**base, "type": f"job{job.id}-json", "schema": job.schema, "truth": json.loads(label)}
    if job.task == "caption":
        return {**base, "type": f"job{job.id}-caption", "reference": label}
    choices = job.generation.get("choices")
    if choices:
        return {**base, "type": f"job{job.id}-choice", "choices": list(choices), "answer": _letter(label, choices)}
    if job.generation.get("unanswerable"):
        # build_instruction puts this line between the question and the short-answer prompt; so does this.
        base["question"] = f"{question}\n{UNANSWERABLE}"
    return {**base, "type": f"job{job.id}-vqa", "answers": [label] * 10}  # ten agreeing "annotators": VQA accuracy 1 on a match


def _letter(label: str, choices: list[str]) -> str:
    """A multiple-choice label as its letter (reviewers may have typed the option's text)."""
    letters = OPTION_LETTERS[: len(choices)]
    text = label.strip().rstrip(".")
    if text in letters:
        return text
    for letter, choice in zip(letters, choices):
        if text.lower() == choice.lower():
            return letter
    return text


def _replay(options: RetrainSettings, images: Path) -> list[dict[str, Any]]:
    """A seeded sample of earlier training records, their images copied under `images/replay/`."""
    if not options.replay_count or options.replay_file is None:
        return []
    records = _read_records(options.replay_file)
    sample = random.Random(options.seed).sample(records, min(options.replay_count, len(records)))
    for record in sample:
        if record.get("image"):
            if options.replay_images is None:
                raise RetrainDataError(f"{options.replay_file} has images: set retrain.replay_images to their directory")
            record["image"] = _copy_replay_image(record["image"], options.replay_images, images / "replay")
    return sample


def _copy_replay_image(relative: str, source_dir: Path, target_dir: Path) -> str:
    source = (source_dir / relative).resolve()
    if not source.is_relative_to(source_dir.resolve()):
        raise RetrainDataError(f"replay image {relative} points outside {source_dir}")
    if not source.is_file():
        raise RetrainDataError(f"replay image {relative} not found under {source_dir}")
    target = target_dir / source.relative_to(source_dir.resolve())
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return str(target.relative_to(target_dir.parent))


def _read_records(path: Path) -> list[dict[str, Any]]:
    """LLaVA records from a JSON list or JSONL file."""
    try:
        text = path.read_text()
        lines = [line for line in text.splitlines() if line.strip()]
        records = json.loads(text) if text.lstrip().startswith("[") else [json.loads(line) for line in lines]
    except FileNotFoundError:
        raise RetrainDataError(f"replay file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise RetrainDataError(f"replay file {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise RetrainDataError(f"replay file {path} must hold LLaVA records (a JSON list of objects, or JSONL)")
    return records


def _write(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n")
