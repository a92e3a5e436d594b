"""ScienceQA-IMG, asked as `llava.eval.model_vqa_science --single-pred-prompt` asks and scored as
`llava/eval/eval_science_qa.py` scores.

Layout: `scienceqa/llava_test_CQM-A.json` (LLaVA conversations), images in
`scienceqa/images/test/`, `scienceqa/problems.json` and `scienceqa/pid_splits.json`. Only the
questions with an image are asked (the engine answers about images; the paper's number is
IMG-Accuracy, which counts only them). The user turn is the question without `<image>`, then
the paper's multiple-choice line; the recorded prompt starts with `<image>\\n` as the
original's does, which is how its scorer tells image questions apart.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from engine.prompts import IMAGE_TOKEN, MULTIPLE_CHOICE
from training.benchmarks.base import Benchmark, Question, Scores, by_id, image_in, percent
from training.benchmarks.files import BenchmarkError, read_json

QUESTIONS = "llava_test_CQM-A.json"
OPTIONS = ("A", "B", "C", "D", "E")  # eval_science_qa.py's --options
STATED = re.compile(r"The answer is ([A-Z]).")


def parsed_letter(text: str) -> str:
    """eval_science_qa.py: a bare letter, "X. ...", or one "The answer is X."; else FAILED."""
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    stated = STATED.findall(text)
    return stated[0] if len(stated) == 1 else "FAILED"


class ScienceQa(Benchmark):
    name = "scienceqa"
    title = "ScienceQA-IMG (test): accuracy"
    layout = f"{QUESTIONS}, images/test/, problems.json, pid_splits.json"
    metric = "IMG accuracy (%)"
    max_new_tokens = 1024  # model_vqa_science's budget

    def questions(self, data: Path) -> list[Question]:
        path = data / QUESTIONS
        records = read_json(path, "ScienceQA questions in LLaVA's conversation format")
        if not isinstance(records, list):
            raise BenchmarkError(f"{path} is not a list of LLaVA conversation records")
        asked = []
        for record in records:
            try:
                question = record["conversations"][0]["value"].replace(IMAGE_TOKEN, "").strip()
                image, qid = record.get("image"), record["id"]
            except (KeyError, IndexError, TypeError, AttributeError):
                raise BenchmarkError(f"{path}: a record lacks id or conversations[0].value") from None
            if image:
                text = f"{question}\n{MULTIPLE_CHOICE}"
                asked.append(Question(qid, image_in(data / "images" / "test", image, qid), text, f"{IMAGE_TOKEN}\n{text}"))
        return asked

    def score(self, data: Path, answers: list[dict[str, Any]]) -> Scores:
        problems = read_json(data / "problems.json", "ScienceQA problems (id -> choices, answer)")
        splits = read_json(data / "pid_splits.json", "ScienceQA splits (split -> problem ids)")
        if not isinstance(splits, dict) or "test" not in splits or not isinstance(problems, dict):
            raise BenchmarkError(f"{data / 'pid_splits.json'} must map 'test' to problem ids of {data / 'problems.json'}")
        said = by_id(answers)
        correct = total = image_correct = image_total = 0
        for pid in splits["test"]:
            problem = problems.get(pid)
            if not isinstance(problem, dict) or "choices" not in problem or "answer" not in problem:
                raise BenchmarkError(f"{data / 'problems.json'} has no problem {pid!r} with choices and answer")
            answer = said.get(pid, {"text": "FAILED", "prompt": "Unknown"})
            letter = parsed_letter(answer["text"])
            right = letter in OPTIONS[: len(problem["choices"])] and OPTIONS.index(letter) == problem["answer"]
            total += 1
            correct += right
            if IMAGE_TOKEN in answer["prompt"]:
                image_total += 1
                image_correct += right
        image_accuracy = percent(image_correct, image_total)
        return {
            "score": image_accuracy, "metric": self.metric, "image_accuracy": image_accuracy, "image_questions": image_total,
            "accuracy": percent(correct, total), "questions": total,
        }  # fmt: skip
