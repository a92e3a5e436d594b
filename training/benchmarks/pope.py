"""POPE (COCO; adversarial, popular and random splits), scored as LLaVA's `llava/eval/eval_pope.py` scores it.

Layout: `pope/llava_pope_test.jsonl` (question_id, image, text, category), images in
`pope/val2014/`, labels in `pope/coco/coco_pope_<split>.json` (POPE's JSON lines, one per
question of the split, in the question file's order). The original pairs a split's answers
with its labels by position; so do we, by each question's position in its split.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from training.benchmarks.base import LOADER_KEYS, Benchmark, Question, Scores, loader_questions
from training.benchmarks.files import BenchmarkError, read_jsonl
from training.evaluate import pope_metrics

QUESTIONS = "llava_pope_test.jsonl"
WHAT = "POPE questions (JSON lines of question_id, image, text, category)"


class Pope(Benchmark):
    name = "pope"
    title = "POPE (COCO, 3 splits): accuracy, precision, recall, F1, yes-ratio"
    layout = f"{QUESTIONS}, val2014/, coco/coco_pope_<split>.json"
    metric = "F1, mean of the splits (%)"

    def questions(self, data: Path) -> list[Question]:
        return loader_questions(data / QUESTIONS, data / "val2014", WHAT)

    def score(self, data: Path, answers: list[dict[str, Any]]) -> Scores:
        rows = read_jsonl(data / QUESTIONS, WHAT, (*LOADER_KEYS, "category"))
        split_of: dict[Any, str] = {}
        position: dict[Any, int] = {}
        sizes: Counter[str] = Counter()
        for row in rows:
            split_of[row["question_id"]], position[row["question_id"]] = row["category"], sizes[row["category"]]
            sizes[row["category"]] += 1
        unknown = [a["question_id"] for a in answers if a["question_id"] not in split_of]
        if unknown:
            raise BenchmarkError(f"answer for question {unknown[0]!r} is not a question of {data / QUESTIONS}")
        splits: dict[str, dict[str, float]] = {}
        for split in sorted(sizes):
            mine = sorted((a for a in answers if split_of[a["question_id"]] == split), key=lambda a: position[a["question_id"]])
            if not mine:
                continue
            path = data / "coco" / f"coco_pope_{split}.json"
            labels = [row["label"] for row in read_jsonl(path, "POPE labels (JSON lines with a label)", ("label",))]
            if len(labels) != sizes[split]:
                raise BenchmarkError(f"{path} has {len(labels)} labels: expected one per {split} question ({sizes[split]})")
            metrics = pope_metrics([a["text"] for a in mine], [labels[position[a["question_id"]]] for a in mine])
            splits[split] = {"n": len(mine), **metrics}
        f1 = sum(s["f1"] for s in splits.values()) / len(splits)
        return {"score": f1 * 100, "metric": self.metric, "splits": splits}
