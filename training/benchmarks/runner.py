"""Run a benchmark through the engine (batched, resumable) and score it as its official scorer does.

`run` asks every question not yet in the answer file through the same `GenerationRequest` a
labeling job uses (greedy, as LLaVA-1.5 evaluates), appends the answers batch by batch, then
writes the official upload file and, where the answers are public, the scores. A run killed at
any point continues where it stopped: the questions already answered are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.backend import Backend, GenerationRequest
from training.benchmarks import answers as answer_file
from training.benchmarks.base import Benchmark, Question, Scores, options_for
from training.benchmarks.files import BenchmarkError

ANSWERS = "answers.jsonl"
SCORES = "scores.json"


@dataclass(frozen=True)
class Outcome:
    """What a run or a scoring produced."""

    answers: Path
    asked: int  # questions answered by this run
    answered: int  # answers in the file
    questions: int  # questions the run covers
    scores: Scores | None
    submission: Path | None


def _check_images(questions: list[Question], bench: Benchmark) -> None:
    for question in questions:
        if isinstance(question.image, Path) and not question.image.is_file():
            raise BenchmarkError(
                f"{question.image} not found: question {question.id!r} needs it ({bench.name} expects {bench.layout})"
            )


def run(
    bench: Benchmark,
    backend: Backend,
    data: Path,
    questions: list[Question],
    out: Path,
    *,
    model_id: str,
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Outcome:
    """Answer `questions` (the benchmark's, or the first of them) into `out`/answers.jsonl, then score the file."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / ANSWERS
    done = answer_file.answered_keys(path)
    todo = [q for q in questions if q.key not in done]
    _check_images(todo, bench)
    budget = max_new_tokens or bench.max_new_tokens
    if progress and len(todo) < len(questions):
        progress(len(questions) - len(todo))
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        requests = [GenerationRequest.of(options_for(q.text, budget), q.image) for q in chunk]
        results = backend.generate(requests)
        lines = [answer_file.answer_line(q, r.text.strip(), model_id, r.error) for q, r in zip(chunk, results)]
        answer_file.append(path, lines)
        if progress:
            progress(len(chunk))
    outcome = score(bench, data, path, out)
    return Outcome(path, len(todo), outcome.answered, len(questions), outcome.scores, outcome.submission)


def score(bench: Benchmark, data: Path, path: Path, out: Path | None = None) -> Outcome:
    """Score an answer file (ours or the original scripts'); with `out`, also write scores.json and the upload file."""
    rows = answer_file.read_answers(path)
    scores = bench.score(data, rows)
    submission = None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        submission = bench.submission(data, rows, out)
        record: dict[str, Any] = {"benchmark": bench.name, "answers": str(path), "answered": len(rows), "scores": scores}
        (out / SCORES).write_text(json.dumps(record, indent=1) + "\n")
    return Outcome(path, 0, len(rows), len(rows), scores, submission)
