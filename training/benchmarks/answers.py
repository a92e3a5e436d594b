"""LLaVA's answer files: one JSON line per answer, appended as answers come, so a killed run resumes.

The line is what `llava.eval.model_vqa_loader` writes (`question_id`, `prompt`, `text`,
`answer_id`, `model_id`, `metadata`, plus the fields a script adds: MMBench's options), so the
official converters and scorers read our files and ours read theirs.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from training.benchmarks.base import Question, answer_key
from training.benchmarks.files import BenchmarkError, read_jsonl

ANSWER_KEYS = ("question_id", "prompt", "text")
WHAT = "a LLaVA answer file (JSON lines of question_id, prompt, text)"


def read_answers(path: Path) -> list[dict[str, Any]]:
    """Every answer line of a finished (or official) answer file."""
    return read_jsonl(path, WHAT, ANSWER_KEYS)


def answered_keys(path: Path) -> set[str]:
    """The questions already answered in `path`; a last line cut short by a kill is dropped from the file."""
    if not path.exists():
        return set()
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    keys: set[str] = set()
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the line a killed run was writing
                path.write_text("".join(lines[:-1]), encoding="utf-8")
                break
            raise BenchmarkError(f"{path} line {number} is not JSON: expected {WHAT}") from None
        if not isinstance(row, dict) or any(key not in row for key in ANSWER_KEYS):
            raise BenchmarkError(f"{path} line {number} lacks question_id, prompt or text: expected {WHAT}")
        keys.add(answer_key(row["question_id"], row["prompt"]))
    return keys


def answer_line(question: Question, text: str, model_id: str, error: str | None = None) -> dict[str, Any]:
    """The answer line LLaVA's scripts write (an engine error, which they never meet, goes in `metadata`)."""
    return {
        "question_id": question.id,
        "prompt": question.prompt,
        "text": text,
        "answer_id": uuid.uuid4().hex[:22],
        "model_id": model_id,
        **question.extra,
        "metadata": {"error": error} if error else {},
    }


def append(path: Path, lines: list[dict[str, Any]]) -> None:
    """Append answer lines and flush them to disk: what is written survives a kill."""
    with path.open("a", encoding="utf-8") as handle:
        for line in lines:
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
