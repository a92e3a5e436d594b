"""Accuracy of a job against the ground truth its source carried (a manifest's `reference`).

Deliberately simple, so the number printed by `run` is easy to trust:
- text answers match when equal after lower-casing, collapsing whitespace and dropping
  trailing punctuation ("A red circle." == "a red circle");
- JSON answers match when equal as JSON values (key order ignored); a reference given
  as JSON text is parsed first. For object references each field is also scored;
- an item with a reference that failed or was cancelled counts as wrong.
The per-question-type metrics of the paper (VQA accuracy, POPE F1) live in training's
evaluation, which scores the model directly; this scores the labeling job.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from labeler.db import Database
from labeler.exports import iter_rows


@dataclass
class Accuracy:
    scored: int = 0
    correct: int = 0
    unanswered: int = 0  # items with a reference but no prediction (failed, cancelled)
    field_correct: Counter = field(default_factory=Counter)

    @property
    def accuracy(self) -> float:
        return self.correct / self.scored if self.scored else 0.0

    def fields(self) -> dict[str, float]:
        return {name: hits / self.scored for name, hits in sorted(self.field_correct.items())}

    def summary(self) -> str:
        line = f"accuracy {self.accuracy:.1%} ({self.correct}/{self.scored} items with a reference"
        line += f", {self.unanswered} without an answer count as wrong)" if self.unanswered else ")"
        if self.field_correct:
            line += "; by field: " + ", ".join(f"{name} {value:.1%}" for name, value in self.fields().items())
        return line


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().rstrip(".!?").strip().lower()


def _as_json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def matches(answer: Any, reference: Any) -> bool:
    if isinstance(answer, str) and isinstance(reference, str):
        return normalise(answer) == normalise(reference)
    return _as_json(answer) == _as_json(reference)


def score_job(db: Database, job_id: int) -> Accuracy | None:
    """The job's accuracy, or None when no item carries a reference."""
    result = Accuracy()
    for row in iter_rows(db, job_id):
        reference = row.item.reference
        if reference is None:
            continue
        result.scored += 1
        answer = row.output()
        if answer is None:
            result.unanswered += 1
            continue
        result.correct += matches(answer, reference)
        truth, given = _as_json(reference), _as_json(answer)
        if isinstance(truth, dict):
            for name, value in truth.items():
                result.field_correct[name] += isinstance(given, dict) and given.get(name) == value
    return result if result.scored else None
