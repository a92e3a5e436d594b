"""What every paper benchmark is: its questions as LLaVA-1.5's script asks them, its official score, its upload file.

A benchmark module subclasses `Benchmark`: `questions` reads the question file (and images) of
its `playground/data/eval/<name>/` layout, `score` computes what the official scorer computes
from an answer file (None where the answers are private: VQAv2, VizWiz), and `submission`
writes the file the benchmark's server takes. Scores are in the official scorer's units; the
`score` entry of the result is the number LLaVA-1.5's paper reports (percent, or MME points),
the one a retrain is gated on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from engine.backend import GenerationOptions
from engine.prompts import MULTIPLE_CHOICE, OPTION_LETTERS, SHORT_ANSWER, UNANSWERABLE, build_instruction
from training.benchmarks.files import BenchmarkError, read_jsonl

Scores = dict[str, Any]
LOADER_KEYS = ("question_id", "image", "text")  # a question line of llava.eval.model_vqa_loader


@dataclass(frozen=True)
class Question:
    """One question as LLaVA-1.5's evaluation script asks it."""

    id: Any  # the question_id as the question file holds it (int or str)
    image: Path | bytes
    text: str  # the user's turn after "<image>\n": exactly what the model is asked
    prompt: str  # what the script records as the answer's "prompt"
    extra: dict[str, Any] = field(default_factory=dict)  # more fields of the answer line (MMBench: its options)

    @property
    def key(self) -> str:
        """What identifies an answer in the answer file (MME asks two questions per question_id)."""
        return answer_key(self.id, self.prompt)


def answer_key(question_id: Any, prompt: str) -> str:
    return f"{question_id!r}\x00{prompt}"


class Benchmark:
    """One of LLaVA-1.5's benchmarks; subclasses fill in the class attributes and `questions`."""

    name: ClassVar[str]
    title: ClassVar[str]
    layout: ClassVar[str]  # the files it reads, for `benchmark list` and errors
    metric: ClassVar[str | None] = None  # what `score` means; None: the answers are private (upload only)
    max_new_tokens: ClassVar[int] = 128  # the script's generation budget (model_vqa_loader's default)

    def questions(self, data: Path) -> list[Question]:
        raise NotImplementedError

    def score(self, data: Path, answers: list[dict[str, Any]]) -> Scores | None:
        """The official scorer's numbers for these answers (None: no public answers)."""
        return None

    def submission(self, data: Path, answers: list[dict[str, Any]], out: Path) -> Path | None:
        """Write the file the benchmark's server takes into `out`; its path (None: the benchmark has none)."""
        return None


def image_in(folder: Path, name: str, question_id: Any) -> Path:
    """The image a question names, which must lie inside `folder`: a question file cannot point elsewhere (`..`,
    absolute paths). Judged on the path as written, so an image folder that is a symlink (COCO's often is) works."""
    path = folder / name
    root = os.path.normpath(folder)
    if os.path.commonpath([root, os.path.normpath(path)]) != root:
        raise BenchmarkError(f"question {question_id!r} names the image {name!r}, outside {folder}: refused")
    return path


def loader_questions(path: Path, images: Path, what: str) -> list[Question]:
    """A question file of `llava.eval.model_vqa_loader` (JSON lines of question_id, image, text): the text is the
    whole user turn, its response-format prompt included, and the answer records it as its prompt."""
    rows = read_jsonl(path, what, LOADER_KEYS)
    return [
        Question(row["question_id"], image_in(images, row["image"], row["question_id"]), row["text"], row["text"])
        for row in rows
    ]


def _readings(text: str) -> list[dict[str, Any]]:
    """The engine requests that may render `text`, most specific first; the last always does (verbatim)."""
    readings: list[dict[str, Any]] = []
    if text.endswith("\n" + SHORT_ANSWER):
        question = text[: -len(SHORT_ANSWER) - 1]
        if question.endswith("\n" + UNANSWERABLE):
            readings.append({"task": "vqa", "instruction": question[: -len(UNANSWERABLE) - 1], "unanswerable": True})
        readings.append({"task": "vqa", "instruction": question})
    if text.endswith("\n" + MULTIPLE_CHOICE):
        lines = text.split("\n")[:-1]
        first = next((i for i, line in enumerate(lines) if line.startswith("A. ")), 0)
        if first > 0:  # a question, then the options
            choices = [line[3:] for line in lines[first:]]
            if all(line.startswith(f"{OPTION_LETTERS[k]}. ") for k, line in enumerate(lines[first:])):
                readings.append({"task": "vqa", "instruction": "\n".join(lines[:first]), "choices": tuple(choices)})
    readings.append({"task": "caption", "instruction": text})  # LLaVA's natural-QA format: the text as is
    return readings


def options_for(text: str, max_new_tokens: int) -> GenerationOptions:
    """The engine's request options whose user turn is exactly `text` (engine.prompts renders every prompt).

    A short-answer, unanswerable or lettered multiple-choice text becomes the engine's `vqa` task with
    the paper's response-format prompt; any other text (ScienceQA's "Options: (A) ..." layout) is
    asked as written.
    """
    for reading in _readings(text):
        options = GenerationOptions(**reading, max_new_tokens=max_new_tokens)
        try:
            rendered = build_instruction(
                options.task, options.instruction, choices=options.choices, unanswerable=options.unanswerable
            )
        except ValueError:  # not the engine's format after all (one option): the next reading
            continue
        if rendered == text:
            return options
    raise BenchmarkError(f"cannot ask {text!r}")  # unreachable: the verbatim reading always renders


def by_id(answers: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    """The answers by question_id (the last one wins, as in the official scripts' dicts)."""
    return {answer["question_id"]: answer for answer in answers}


def percent(part: float, whole: int) -> float:
    return part / whole * 100 if whole else 0.0

