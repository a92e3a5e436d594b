"""Scores equal to the original scorers shipped in llava-torch (POPE, ScienceQA-IMG, TextVQA, EvalAI's answers).

Each test writes small files in the benchmark's official format, writes answers whose texts
exercise the scorer's quirks, runs the original script's main on them and the project's scorer,
and requires equal numbers (the same floats, not roundings).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from engine.prompts import SHORT_ANSWER
from training.benchmarks import BENCHMARKS
from training.benchmarks.answers import answer_line, append, read_answers
from training.evaluate import evalai_answer, textvqa_accuracy


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _answer(bench: str, data: Path, texts: list[str], out: Path) -> Path:
    """The answer file a run would write: the benchmark's questions, in order, with these texts."""
    questions = BENCHMARKS[bench].questions(data)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "answers.jsonl"
    append(path, [answer_line(q, text, "model") for q, text in zip(questions, texts, strict=True)])
    return path


POPE_TEXTS = {
    "adversarial": ["Yes", "No.", "no, there is not", "Yes, there is. No cat.", "There is not a dog", "I think so"],
    "popular": ["yes", "Yes", "No", "Yes.", "not really", "no"],
    "random": ["Yes, a dog", "Sure", "NO", "No, none.", "yes", "Yes"],
}
POPE_LABELS = ["yes", "no", "yes", "no", "yes", "no"]


def test_pope_equals_eval_pope(tmp_path: Path, original_eval) -> None:
    data = tmp_path / "pope"
    questions, texts = [], []
    for offset, (split, said) in zip((0, 20000000, 30000000), POPE_TEXTS.items()):
        labels = []
        for k, (label, text) in enumerate(zip(POPE_LABELS, said), 1):
            asked = f"Is there a thing{k} in the image?"
            questions.append({"question_id": offset + k, "image": f"COCO_{k}.jpg", "text": f"{asked}\n{SHORT_ANSWER}", "category": split})
            labels.append({"question_id": k, "image": f"COCO_{k}.jpg", "text": asked, "label": label})
            texts.append(text)
        _jsonl(data / "coco" / f"coco_pope_{split}.json", labels)
    _jsonl(data / "llava_pope_test.jsonl", questions)
    answers = _answer("pope", data, texts, tmp_path)

    printed = original_eval.run("eval_pope.py", "--annotation-dir", str(data / "coco"),
                                "--question-file", str(data / "llava_pope_test.jsonl"), "--result-file", str(answers))  # fmt: skip
    original = {}
    for block in printed.split("Category: ")[1:]:
        split = block.split(",")[0]
        values = dict(re.findall(r"^(Accuracy|Precision|Recall|F1 score|Yes ratio): (\S+)$", block, re.MULTILINE))
        original[split] = {k: float(v) for k, v in values.items()}
    scores = BENCHMARKS["pope"].score(data, read_answers(answers))
    assert set(original) == set(scores["splits"]) == set(POPE_TEXTS)
    for split, mine in scores["splits"].items():
        assert mine["n"] == 6
        assert (mine["accuracy"], mine["precision"], mine["recall"], mine["f1"], mine["yes_ratio"]) == (
            original[split]["Accuracy"], original[split]["Precision"], original[split]["Recall"],
            original[split]["F1 score"], original[split]["Yes ratio"],
        )  # fmt: skip
    assert scores["score"] == pytest.approx(sum(o["F1 score"] for o in original.values()) / 3 * 100)


SQA_TEXTS = ["A", "B.", "C. a cat", "The answer is B.", "The answer is A. The answer is B.", "b", "E", "", "A"]


def test_scienceqa_equals_eval_science_qa(tmp_path: Path, original_eval) -> None:
    data = tmp_path / "scienceqa"
    problems, records = {}, []
    for k in range(12):
        pid = str(100 + k)
        image = "image.png" if k < len(SQA_TEXTS) else None  # the last three are text-only: never asked
        problems[pid] = {"choices": ["x", "y", "z"][: 2 + k % 2], "answer": k % 2, "image": image, "split": "test"}
        value = f"Question: q{k}?\nContext: c\nOptions: (A) x (B) y" + ("\n<image>" if image else "")
        record = {"id": pid, "conversations": [{"from": "human", "value": value}, {"from": "gpt", "value": "A"}]}
        records.append({**record, "image": f"{pid}/image.png"} if image else record)
    (data / "problems.json").parent.mkdir(parents=True)
    (data / "problems.json").write_text(json.dumps(problems))
    (data / "pid_splits.json").write_text(json.dumps({"test": list(problems), "train": []}))
    (data / "llava_test_CQM-A.json").write_text(json.dumps(records))
    answers = _answer("scienceqa", data, SQA_TEXTS, tmp_path)

    original_eval.run("eval_science_qa.py", "--base-dir", str(data), "--result-file", str(answers),
                      "--output-file", str(tmp_path / "output.json"), "--output-result", str(tmp_path / "result.json"))  # fmt: skip
    result = json.loads((tmp_path / "result.json").read_text())
    output = json.loads((tmp_path / "output.json").read_text())
    image_right = sum(x["is_multimodal"] for x in output["correct"])
    image_total = image_right + sum(x["is_multimodal"] for x in output["incorrect"])
    scores = BENCHMARKS["scienceqa"].score(data, read_answers(answers))
    assert scores["accuracy"] == result["acc"] and scores["questions"] == result["count"] == 12
    assert scores["image_accuracy"] == image_right / image_total * 100 and scores["image_questions"] == image_total == 9
    assert scores["score"] == scores["image_accuracy"] and 0 < image_right < image_total


TEXTVQA = [  # (question, OCR tokens or None, ten human answers, the model's answer)
    ("what brand is this?", "coca, cola", ["coca cola"] * 6 + ["coca-cola"] * 3 + ["coke"], "Coca-Cola"),
    ("what does the sign say?", None, ["stop"] * 9 + ["stop sign"], "the STOP sign."),
    ("how many?", "2", ["two"] * 2 + ["2"] * 8, "2"),
    ("what number is shown?", "3,000", ["3000"] * 5 + ["3,000"] * 5, "3,000"),
    ("whose shoes?", "nike's", ["nike's"] * 4 + ["nike"] * 6, "Nike's"),
    ("what is the time?", None, ["10:30"] * 10, "It is 10:30."),
]


def test_textvqa_equals_eval_textvqa(tmp_path: Path, original_eval, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "textvqa"
    questions, annotations = [], []
    for k, (question, ocr, humans, _) in enumerate(TEXTVQA):
        text = f"{question}\nReference OCR token: {ocr}\n{SHORT_ANSWER}" if ocr else f"{question}\n{SHORT_ANSWER}"
        questions.append({"question_id": f"img{k}", "image": f"img{k}.jpg", "text": text})
        annotations.append({"image_id": f"img{k}", "question": question.capitalize(), "answers": humans})
    _jsonl(data / "llava_textvqa_val_v051_ocr.jsonl", questions)
    (data / "TextVQA_0.5.1_val.json").write_text(json.dumps({"data": annotations}))
    answers = _answer("textvqa", data, [row[3] for row in TEXTVQA], tmp_path)

    evaluator = original_eval.m4c.TextVQAAccuracyEvaluator
    seen: list[float] = []
    original_pred_list = evaluator.eval_pred_list
    monkeypatch.setattr(evaluator, "eval_pred_list", lambda self, preds: seen.append(original_pred_list(self, preds)) or seen[-1])
    printed = original_eval.run("eval_textvqa.py", "--annotation-file", str(data / "TextVQA_0.5.1_val.json"),
                                "--result-file", str(answers))  # fmt: skip
    assert "Samples: 6" in printed and len(seen) == 1
    scores = BENCHMARKS["textvqa"].score(data, read_answers(answers))
    assert scores["accuracy"] == pytest.approx(seen[0] * 100, abs=1e-12) and scores["n"] == 6
    assert 0 < seen[0] < 1
    per_item = [evaluator().eval_pred_list([{"pred_answer": row[3], "gt_answers": row[2]}]) for row in TEXTVQA]
    assert [textvqa_accuracy(row[3], row[2]) for row in TEXTVQA] == per_item


ANSWERS = [
    "Yes", "the STOP sign.", "Two dogs", "3,000", "it's Nike's", "dont know", "10:30.", "a.b.c", "Hello, World!",
    "nine", "(left)", "on-off", "x\ny\tz", "." * 40 + "end", "1.5", "isnt", "the", "  spaced  out  ",
]  # fmt: skip


def test_the_evalai_answers_are_the_originals(original_eval) -> None:
    processor = original_eval.m4c.EvalAIAnswerProcessor()
    assert [evalai_answer(text) for text in ANSWERS] == [processor(text) for text in ANSWERS]


def test_the_vqav2_and_vizwiz_uploads_are_the_originals(tmp_path: Path, original_eval) -> None:
    processor = original_eval.m4c.EvalAIAnswerProcessor()
    test = [{"question_id": 10 + k, "image": f"COCO_test2015_{k}.jpg", "text": f"Q{k}?\n{SHORT_ANSWER}"} for k in range(6)]
    vqav2 = tmp_path / "vqav2"
    _jsonl(vqav2 / "llava_vqav2_mscoco_test2015.jsonl", test)
    _jsonl(vqav2 / "llava_vqav2_mscoco_test-dev2015.jsonl", test[:4])  # test-dev: a part of test2015
    answers = _answer("vqav2", vqav2, ANSWERS[:4], tmp_path / "v")
    upload = json.loads(BENCHMARKS["vqav2"].submission(vqav2, read_answers(answers), tmp_path / "v").read_text())
    assert upload == [{"question_id": q["question_id"], "answer": processor(a) if a else ""}
                      for q, a in zip(test, [*ANSWERS[:4], "", ""])]  # fmt: skip

    vizwiz = tmp_path / "vizwiz"
    unanswerable = "When the provided information is insufficient, respond with 'Unanswerable'."
    questions = [{"question_id": k, "image": f"VizWiz_test_{k}.jpg", "text": f"Q{k}?\n{unanswerable}\n{SHORT_ANSWER}"} for k in range(5)]
    _jsonl(vizwiz / "llava_test.jsonl", questions)
    answers = _answer("vizwiz", vizwiz, ANSWERS[4:9], tmp_path / "w")
    upload = json.loads(BENCHMARKS["vizwiz"].submission(vizwiz, read_answers(answers), tmp_path / "w").read_text())
    assert upload == [{"image": q["image"], "answer": processor(a)} for q, a in zip(questions, ANSWERS[4:9])]
    assert BENCHMARKS["vqav2"].score(vqav2, []) is None and BENCHMARKS["vizwiz"].score(vizwiz, []) is None
