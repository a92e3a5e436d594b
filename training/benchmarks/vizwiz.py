"""VizWiz test: the answers are private, so the product is the EvalAI upload file.

Layout: `vizwiz/llava_test.jsonl` (each question with the paper's unanswerable prompt:
"When the provided information is insufficient, respond with 'Unanswerable'."), images in
`vizwiz/test/`. The upload is what LLaVA's `scripts/convert_vizwiz_for_submission.py` writes:
one {image, answer} per question, the answer through EvalAI's answer processor (a run cut
short by --limit uploads the questions it answered).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.benchmarks.base import LOADER_KEYS, Benchmark, Question, by_id, loader_questions
from training.benchmarks.files import read_jsonl
from training.evaluate import evalai_answer

QUESTIONS = "llava_test.jsonl"
UPLOAD = "vizwiz_test_upload.json"
WHAT = "VizWiz questions (JSON lines of question_id, image, text)"


class Vizwiz(Benchmark):
    name = "vizwiz"
    title = "VizWiz test: the EvalAI upload file (answers are private)"
    layout = f"{QUESTIONS}, test/"

    def questions(self, data: Path) -> list[Question]:
        return loader_questions(data / QUESTIONS, data / "test", WHAT)

    def submission(self, data: Path, answers: list[dict[str, Any]], out: Path) -> Path:
        said = by_id(answers)
        split = read_jsonl(data / QUESTIONS, WHAT, LOADER_KEYS)
        upload = [
            {"image": x["image"], "answer": evalai_answer(said[x["question_id"]]["text"])} for x in split if x["question_id"] in said
        ]
        path = out / UPLOAD
        path.write_text(json.dumps(upload))
        return path
