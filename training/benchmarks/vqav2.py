"""VQAv2 test-dev: the answers are private, so the product is the EvalAI upload file.

Layout: `vqav2/llava_vqav2_mscoco_test-dev2015.jsonl` (the questions asked), images in
`vqav2/test2015/`, and `vqav2/llava_vqav2_mscoco_test2015.jsonl` (every test2015 question:
the server wants them all). The upload is what LLaVA's `scripts/convert_vqav2_for_submission.py`
writes: one {question_id, answer} per test2015 question, the answer through EvalAI's answer
processor, "" for a question not asked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.benchmarks.base import LOADER_KEYS, Benchmark, Question, by_id, loader_questions
from training.benchmarks.files import read_jsonl
from training.evaluate import evalai_answer

QUESTIONS = "llava_vqav2_mscoco_test-dev2015.jsonl"
ALL_TEST = "llava_vqav2_mscoco_test2015.jsonl"
UPLOAD = "vqav2_test-dev2015_upload.json"
WHAT = "VQAv2 questions (JSON lines of question_id, image, text)"


class Vqav2(Benchmark):
    name = "vqav2"
    title = "VQAv2 test-dev: the EvalAI upload file (answers are private)"
    layout = f"{QUESTIONS}, {ALL_TEST}, test2015/"

    def questions(self, data: Path) -> list[Question]:
        return loader_questions(data / QUESTIONS, data / "test2015", WHAT)

    def submission(self, data: Path, answers: list[dict[str, Any]], out: Path) -> Path:
        said = {qid: a["text"] for qid, a in by_id(answers).items()}
        split = read_jsonl(data / ALL_TEST, "every VQAv2 test2015 question (JSON lines of question_id, image, text)", LOADER_KEYS)
        upload = [
            {"question_id": x["question_id"], "answer": evalai_answer(said[x["question_id"]]) if x["question_id"] in said else ""}
            for x in split
        ]
        path = out / UPLOAD
        path.write_text(json.dumps(upload))
        return path
