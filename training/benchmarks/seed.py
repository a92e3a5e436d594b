"""SEED-Bench (image), scored as LLaVA's `scripts/convert_seed_for_submission.py` scores it.

Layout: `seed_bench/llava-seed-bench.jsonl` (question_id, image, text: the options and the
paper's multiple-choice line included), images under `seed_bench/` (`SEED-Bench-image/`, and
`SEED-Bench-video-image/` for the video questions' middle frames), the answers in
`seed_bench/SEED-Bench.json`. The script is not in llava-torch; its scoring is ported: an
answer is right when its text is exactly the answer letter; accuracy per question type, and
for the image questions (the paper's number) and the video questions. The upload is its
JSON lines of {question_id, prediction}.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from training.benchmarks.base import Benchmark, Question, Scores, by_id, loader_questions, percent
from training.benchmarks.files import BenchmarkError, object_with, read_json

QUESTIONS = "llava-seed-bench.jsonl"
ANNOTATIONS = "SEED-Bench.json"
UPLOAD = "seed_bench_upload.jsonl"


def _qid(value: Any) -> Any:
    """The script's key: the question id as an int where it is one."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


class SeedBench(Benchmark):
    name = "seed"
    title = "SEED-Bench: image accuracy"
    layout = f"{QUESTIONS}, SEED-Bench-image/, {ANNOTATIONS}"
    metric = "image accuracy (%)"

    def questions(self, data: Path) -> list[Question]:
        return loader_questions(data / QUESTIONS, data, "SEED-Bench questions (JSON lines of question_id, image, text)")

    def _annotations(self, data: Path) -> dict[str, Any]:
        path = data / ANNOTATIONS
        return object_with(read_json(path, "SEED-Bench annotations"), path, ("questions", "question_type"), "SEED-Bench annotations")

    def score(self, data: Path, answers: list[dict[str, Any]]) -> Scores:
        said = {_qid(qid): answer for qid, answer in by_id(answers).items()}
        annotations = self._annotations(data)
        names = {number: name for name, number in annotations["question_type"].items()}
        right: dict[str, Counter[Any]] = {"image": Counter(), "video": Counter()}
        asked: dict[str, Counter[Any]] = {"image": Counter(), "video": Counter()}
        for question in annotations["questions"]:
            qid = _qid(question.get("question_id"))
            if qid not in said:
                continue
            kind = question.get("data_type")
            if kind not in asked or "answer" not in question:
                raise BenchmarkError(f"{data / ANNOTATIONS}: question {qid!r} lacks data_type image|video or answer")
            asked[kind][question["question_type_id"]] += 1
            right[kind][question["question_type_id"]] += said[qid]["text"] == question["answer"]
        per_type = {
            names.get(t, str(t)): percent(right["image"][t] + right["video"][t], asked["image"][t] + asked["video"][t])
            for t in sorted(asked["image"] | asked["video"])
        }
        image = percent(sum(right["image"].values()), sum(asked["image"].values()))
        return {
            "score": image, "metric": self.metric, "image_accuracy": image, "image_questions": sum(asked["image"].values()),
            "video_accuracy": percent(sum(right["video"].values()), sum(asked["video"].values())),
            "accuracy": percent(sum((right["image"] + right["video"]).values()), sum((asked["image"] + asked["video"]).values())),
            "per_type": per_type,
        }  # fmt: skip

    def submission(self, data: Path, answers: list[dict[str, Any]], out: Path) -> Path:
        said = {_qid(qid): answer for qid, answer in by_id(answers).items()}
        lines = [
            json.dumps({"question_id": q["question_id"], "prediction": said[_qid(q["question_id"])]["text"]})
            for q in self._annotations(data)["questions"]
            if _qid(q.get("question_id")) in said
        ]
        path = out / UPLOAD
        path.write_text("".join(line + "\n" for line in lines))
        return path
