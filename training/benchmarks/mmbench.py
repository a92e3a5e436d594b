"""MMBench dev, asked as `llava.eval.model_vqa_mmbench --single-pred-prompt` asks; circular accuracy and the upload.

Layout: `mmbench/mmbench_dev_20230712.tsv` (index, question, hint, A-D, answer, category, image
as base64, ...), read as the original reads it (pandas). The user turn is the hint (when there
is one) and the question, the options `A. ...`, then the paper's multiple-choice line: the
engine's own multiple-choice format. Scoring is MMBench's circular evaluation, ported from
VLMEvalKit (not in llava-torch) without its GPT judge: the letter is read from the answer
(`can_infer`: exactly one option letter among its words, else exactly one option's text in
it), and a question counts only when every circular copy of it (indices equal modulo
1,000,000, as the dev TSV holds them) is answered right. The upload is the table
`scripts/convert_mmbench_for_submission.py` makes, as TSV (the server takes it as .xlsx:
save it from any spreadsheet).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from engine.prompts import OPTION_LETTERS, multiple_choice
from training.benchmarks.base import Benchmark, Question, Scores, by_id, percent
from training.benchmarks.files import BenchmarkError, require

TSV = "mmbench_dev_20230712.tsv"
COLUMNS = ("index", "question", "hint", "A", "B", "answer", "image")
CIRCULAR = 1_000_000
LETTERS = OPTION_LETTERS[:4]  # model_vqa_mmbench's all_options
DROPPED = ["hint", "category", "source", "image", "comment", "l2-category"]  # not in the upload
UPLOAD = "mmbench_dev_20230712_upload.tsv"


def is_none(value: Any) -> bool:
    """model_vqa_mmbench's `is_none`: None, NaN, 'nan' or 'none'."""
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or (isinstance(value, str) and value.lower() in ("nan", "none"))
    )


def _table(data: Path):
    import pandas as pd

    path = require(data / TSV, "the MMBench dev TSV")
    try:
        table = pd.read_table(path)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise BenchmarkError(f"{path} is not a readable TSV: {exc}") from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise BenchmarkError(f"{path} lacks the column(s) {', '.join(missing)}: expected MMBench's TSV")
    return table


def _options(row: Any) -> list[str]:
    options = []
    for letter in LETTERS:
        if letter not in row or is_none(row[letter]):
            break
        options.append(str(row[letter]))
    return options


def can_infer(answer: str, options: dict[str, str]) -> str | None:
    """VLMEvalKit's `can_infer` (exact matching): the one option letter among the answer's words
    ('Z' for a refusal), else the one option whose text the answer contains; None when neither."""
    words = answer
    for char in ".()[],:;!*#{}":
        words = words.replace(char, " ")
    splits = [w.strip() for w in words.split()]
    named = [letter for letter in options if letter in splits]
    if len(named) == 1:
        return named[0]
    if not named and sum(1 for c in ("Z", "") if c in splits) == 1:
        return "Z"
    contained = [letter for letter, text in options.items() if str(text).lower() in answer.lower()]
    return contained[0] if len(contained) == 1 else None


class MmBench(Benchmark):
    name = "mmbench"
    title = "MMBench dev: circular accuracy, and the upload table"
    layout = f"{TSV} (images inside, base64)"
    metric = "circular accuracy (%)"
    max_new_tokens = 1024  # model_vqa_mmbench's budget

    def questions(self, data: Path) -> list[Question]:
        asked = []
        for _, row in _table(data).iterrows():
            options = _options(row)
            question = str(row["question"]) if is_none(row["hint"]) else f"{row['hint']}\n{row['question']}"
            try:
                image = base64.b64decode(str(row["image"]), validate=True)
            except binascii.Error:
                raise BenchmarkError(f"{data / TSV}: the image of question {row['index']} is not base64") from None
            prompt = "\n".join([question, *(f"{LETTERS[i]}. {option}" for i, option in enumerate(options))])
            extra = {"round_id": 0, "options": options, "option_char": list(LETTERS[: len(options)])}
            asked.append(Question(int(row["index"]), image, multiple_choice(question, options), prompt, extra))
        return asked

    def score(self, data: Path, answers: list[dict[str, Any]]) -> Scores:
        said = by_id(answers)
        table = _table(data)
        groups: dict[int, list[bool]] = defaultdict(list)
        for _, row in table.iterrows():
            index = int(row["index"])
            if index in said:
                options = dict(zip(LETTERS, _options(row)))
                groups[index % CIRCULAR].append(can_infer(said[index]["text"], options) == str(row["answer"]))
        unknown = set(said) - {int(i) for i in table["index"]}
        if unknown:
            raise BenchmarkError(f"answer for question {min(unknown)!r} is not a row of {data / TSV}")
        rows = [ok for group in groups.values() for ok in group]
        circular = percent(sum(all(group) for group in groups.values()), len(groups))
        return {
            "score": circular, "metric": self.metric, "circular_accuracy": circular, "questions": len(groups),
            "accuracy": percent(sum(rows), len(rows)), "rows": len(rows),
        }  # fmt: skip

    def submission(self, data: Path, answers: list[dict[str, Any]], out: Path) -> Path:
        table = _table(data)
        upload = table.drop(columns=[c for c in DROPPED if c in table.columns])
        said = {qid: a["text"] for qid, a in by_id(answers).items()}
        upload.insert(min(6, len(upload.columns)), "prediction", [said.get(int(i)) for i in table["index"]])
        path = out / UPLOAD
        upload.to_csv(path, sep="\t", index=False)
        return path
