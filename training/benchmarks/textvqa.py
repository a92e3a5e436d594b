"""TextVQA val, scored as LLaVA's `llava/eval/eval_textvqa.py` scores it (m4c_evaluator's TextVQA accuracy).

Layout: `textvqa/llava_textvqa_val_v051_ocr.jsonl` (the questions with their reference OCR
tokens), images in `textvqa/train_images/`, answers in `textvqa/TextVQA_0.5.1_val.json`. An
answer is matched to its annotation by (question_id = the image id, the question read back
from the prompt), as the original does.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from training.benchmarks.base import Benchmark, Question, Scores, loader_questions, percent
from training.benchmarks.files import BenchmarkError, object_with, read_json
from training.evaluate import textvqa_accuracy

QUESTIONS = "llava_textvqa_val_v051_ocr.jsonl"
ANNOTATIONS = "TextVQA_0.5.1_val.json"


def question_of(prompt: str) -> str:
    """eval_textvqa.py's `prompt_processor`: the question inside an answer's prompt, lower case."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        if match is None:
            raise BenchmarkError(f"cannot find the question in the prompt {prompt!r}")
        return match.group(1).lower()
    if "Reference OCR token: " in prompt and len(lines) == 3:
        return (lines[1] if prompt.startswith("Reference OCR token:") else lines[0]).lower()
    if len(lines) == 2:
        return lines[0].lower()
    raise BenchmarkError(f"the prompt {prompt!r} is not one of the TextVQA prompt layouts eval_textvqa.py reads")


class TextVqa(Benchmark):
    name = "textvqa"
    title = "TextVQA val: accuracy (EvalAI answer normalisation)"
    layout = f"{QUESTIONS}, train_images/, {ANNOTATIONS}"
    metric = "accuracy (%)"

    def questions(self, data: Path) -> list[Question]:
        return loader_questions(data / QUESTIONS, data / "train_images", "TextVQA questions (JSON lines of question_id, image, text)")

    def score(self, data: Path, answers: list[dict[str, Any]]) -> Scores:
        path = data / ANNOTATIONS
        annotations = object_with(read_json(path, "TextVQA annotations"), path, ("data",), "TextVQA annotations")["data"]
        truth = {(a["image_id"], a["question"].lower()): a["answers"] for a in annotations}
        scores = []
        for answer in answers:
            key = (answer["question_id"], question_of(answer["prompt"]))
            if key not in truth:
                raise BenchmarkError(f"{path} has no question {key[1]!r} about image {key[0]!r}")
            scores.append(textvqa_accuracy(answer["text"], truth[key]))
        accuracy = percent(sum(scores), len(scores))
        return {"score": accuracy, "metric": self.metric, "n": len(scores), "accuracy": accuracy}
