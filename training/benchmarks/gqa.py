"""GQA testdev-balanced, scored as the GQA evaluation's `eval.py --tier testdev_balanced` scores accuracy.

Layout: `gqa/llava_gqa_testdev_balanced.jsonl`, images in `gqa/data/images/`, the official
questions (with answers) in `gqa/data/testdev_balanced_questions.json`. The answers become
`testdev_balanced_predictions.json` as LLaVA's `scripts/convert_gqa_for_eval.py` makes it
(the text without trailing periods, lower case). `eval.py` is not part of llava-torch; its
accuracy is ported: over the balanced questions, prediction == answer, in percent, and split
into binary and open questions (structural type `query` is open).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.benchmarks.base import Benchmark, Question, Scores, loader_questions, percent
from training.benchmarks.files import BenchmarkError, read_json

QUESTIONS = "llava_gqa_testdev_balanced.jsonl"
TRUTH = "data/testdev_balanced_questions.json"
PREDICTIONS = "testdev_balanced_predictions.json"


def predictions(answers: list[dict[str, Any]]) -> list[dict[str, str]]:
    """convert_gqa_for_eval.py: questionId and the lower-cased answer without trailing periods."""
    return [{"questionId": a["question_id"], "prediction": a["text"].rstrip(".").lower()} for a in answers]


class Gqa(Benchmark):
    name = "gqa"
    title = "GQA testdev-balanced: accuracy"
    layout = f"{QUESTIONS}, data/images/, {TRUTH}"
    metric = "accuracy (%)"

    def questions(self, data: Path) -> list[Question]:
        return loader_questions(data / QUESTIONS, data / "data" / "images", "GQA questions (JSON lines of question_id, image, text)")

    def score(self, data: Path, answers: list[dict[str, Any]]) -> Scores:
        truth = read_json(data / TRUTH, "GQA's testdev_balanced_questions.json (question id -> answer, isBalanced, types)")
        if not isinstance(truth, dict):
            raise BenchmarkError(f"{data / TRUTH} is not an object of question id -> question")
        right = {"accuracy": [], "binary": [], "open": []}
        for row in predictions(answers):
            question = truth.get(str(row["questionId"]))
            if not isinstance(question, dict) or "answer" not in question:
                raise BenchmarkError(f"{data / TRUTH} has no question {row['questionId']!r} with an answer")
            if not question.get("isBalanced", False):
                continue
            correct = float(row["prediction"] == question["answer"])
            kind = "open" if question.get("types", {}).get("structural") == "query" else "binary"
            right["accuracy"].append(correct)
            right[kind].append(correct)
        scores = {name: percent(sum(values), len(values)) for name, values in right.items()}
        return {"score": scores["accuracy"], "metric": self.metric, "n": len(right["accuracy"]), **scores}

    def submission(self, data: Path, answers: list[dict[str, Any]], out: Path) -> Path:
        path = out / PREDICTIONS
        path.write_text(json.dumps(predictions(answers)))
        return path
