"""The scorers llava-torch does not ship, ported from their documented algorithms, against numbers worked by hand.

GQA's `eval.py` (accuracy over the balanced questions), MME's `calculation.py` (after LLaVA's
`convert_answer_to_mme.py`), MMBench's circular evaluation (VLMEvalKit's exact matching) and
SEED-Bench's `convert_seed_for_submission.py` are not in the llava-torch wheel; each test writes
the official files, answers with texts that exercise the algorithm's rules, and checks the
numbers those rules give.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from engine.prompts import MULTIPLE_CHOICE, SHORT_ANSWER
from training.benchmarks import BENCHMARKS
from training.benchmarks.answers import answer_line, append, read_answers
from training.benchmarks.files import BenchmarkError
from training.benchmarks.mmbench import can_infer


def _answers(bench: str, data: Path, texts: list[str]) -> list[dict]:
    questions = BENCHMARKS[bench].questions(data)
    return [answer_line(q, text, "model") for q, text in zip(questions, texts, strict=True)]


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_gqa_accuracy_over_the_balanced_questions(tmp_path: Path) -> None:
    truth = {  # id: (answer, balanced, structural type)
        "201": ("yes", True, "verify"), "202": ("left", True, "query"), "203": ("no", True, "logical"),
        "204": ("red", True, "query"), "205": ("dog", False, "query"),
    }  # fmt: skip
    questions = {qid: {"answer": a, "isBalanced": b, "types": {"structural": s}} for qid, (a, b, s) in truth.items()}
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "testdev_balanced_questions.json").write_text(json.dumps(questions))
    _jsonl(tmp_path / "llava_gqa_testdev_balanced.jsonl",
           [{"question_id": qid, "image": "n1.jpg", "text": f"q?\n{SHORT_ANSWER}"} for qid in truth])  # fmt: skip
    answers = _answers("gqa", tmp_path, ["Yes.", "Left", "yes", "red...", "cat"])
    scores = BENCHMARKS["gqa"].score(tmp_path, answers)
    # balanced: 201 yes==yes, 202 left==left, 203 yes!=no, 204 "red" (periods stripped) == red; 205 unbalanced
    assert scores == {"score": 75.0, "metric": "accuracy (%)", "n": 4, "accuracy": 75.0, "binary": 50.0, "open": 100.0}
    upload = json.loads(BENCHMARKS["gqa"].submission(tmp_path, answers, tmp_path).read_text())
    assert upload[0] == {"questionId": "201", "prediction": "yes"} and upload[3]["prediction"] == "red"


def _mme_folder(root: Path, subtask: str, rows: list[tuple[str, str, str]], nested: bool) -> list[dict]:
    """A subtask of MME's release folder (nested: images/ + questions_answers_YN/); its llava_mme.jsonl lines."""
    images, qa = (root / subtask / "images", root / subtask / "questions_answers_YN") if nested else (root / subtask,) * 2
    images.mkdir(parents=True, exist_ok=True)
    qa.mkdir(parents=True, exist_ok=True)
    lines, files = [], {}
    for image, question, answer in rows:
        files.setdefault(image, []).append(f"{question} Please answer yes or no.\t{answer}")
        qid = f"{subtask}/images/{image}.jpg" if nested else f"{subtask}/{image}.jpg"
        lines.append({"question_id": qid, "image": qid, "text": f"{question}\n{SHORT_ANSWER}", "category": subtask})
    for image, content in files.items():
        (qa / f"{image}.txt").write_text("\n".join(content) + "\n")
    return lines


def test_mme_scores_acc_plus_acc_plus_per_subtask(tmp_path: Path) -> None:
    root = tmp_path / "MME_Benchmark_release_version"
    lines = _mme_folder(root, "existence", [("1", "Is there a dog?", "Yes"), ("1", "Is there a cat?", "No"),
                                            ("2", "Is there a car?", "Yes"), ("2", "Is there a bus?", "No")], nested=False)
    lines += _mme_folder(root, "artwork", [("7", "Is it a painting?", "Yes"), ("7", "Is it a sculpture?", "No")], nested=True)
    lines += _mme_folder(root, "code_reasoning", [("3", "Is the output 7?", "Yes"), ("3", "Is the output 1?", "No")], nested=False)
    _jsonl(tmp_path / "llava_mme.jsonl", lines)
    texts = ["Yes", "no", "No, it is", "No",  # existence: 3 of 4 right, image 1 both right
             "Yes, it is a painting", "The answer is no",  # artwork: "yes" in the first four characters; "other"
             "nope", "no"]  # code: "no" in "nope"; the truth is yes / no  # fmt: skip
    answers = _answers("mme", tmp_path, texts)
    scores = BENCHMARKS["mme"].score(tmp_path, answers)
    existence, artwork = scores["perception"]["subtasks"]["existence"], scores["perception"]["subtasks"]["artwork"]
    assert existence == {"acc": 75.0, "acc_plus": 50.0, "score": 125.0}
    assert artwork == {"acc": 50.0, "acc_plus": 0.0, "score": 50.0}
    assert scores["perception"]["score"] == scores["score"] == 175.0
    assert scores["cognition"] == {"score": 50.0, "subtasks": {"code_reasoning": {"acc": 50.0, "acc_plus": 0.0, "score": 50.0}}}
    folder = BENCHMARKS["mme"].submission(tmp_path, answers, tmp_path / "out")
    assert (folder / "existence.txt").read_text().splitlines()[0] == "1.txt\tIs there a dog? Please answer yes or no.\tYes\tYes"
    with pytest.raises(BenchmarkError, match="existence has no ground truth for 1: 'Is there a cow\\?"):
        BENCHMARKS["mme"].score(tmp_path, [{**answers[0], "prompt": f"Is there a cow?\n{SHORT_ANSWER}"}])


def _b64_png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 0, 255)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def mmbench_tsv(path: Path, rows: list[dict]) -> None:
    """MMBench's dev TSV columns, the image as base64 (a row's own "image", else a blue square)."""
    square = _b64_png()
    table = [
        {"index": r["index"], "question": r["question"], "hint": r.get("hint"),
         **{letter: r["options"][k] if k < len(r["options"]) else None for k, letter in enumerate("ABCD")},
         "answer": r["answer"], "category": "c", "image": r.get("image", square), "source": "s", "l2-category": "l2",
         "comment": None, "split": "dev"}
        for r in rows
    ]  # fmt: skip
    pd.DataFrame(table).to_csv(path, sep="\t", index=False)


def test_mmbench_circular_accuracy_and_its_prompts(tmp_path: Path) -> None:
    rows = [
        {"index": 0, "question": "What colour?", "hint": "A hint.", "options": ["blue", "red", "green"], "answer": "A"},
        {"index": 1000000, "question": "What colour?", "hint": "A hint.", "options": ["red", "green", "blue"], "answer": "C"},
        {"index": 1, "question": "Which shape?", "options": ["circle", "square"], "answer": "B"},
        {"index": 1000001, "question": "Which shape?", "options": ["square", "circle"], "answer": "A"},
        {"index": 2, "question": "How many?", "options": ["1", "2", "3"], "answer": "B"},
    ]
    mmbench_tsv(tmp_path / "mmbench_dev_20230712.tsv", rows)
    questions = BENCHMARKS["mmbench"].questions(tmp_path)
    assert questions[0].text == f"A hint.\nWhat colour?\nA. blue\nB. red\nC. green\n{MULTIPLE_CHOICE}"
    assert questions[0].prompt == "A hint.\nWhat colour?\nA. blue\nB. red\nC. green" and questions[2].extra["options"] == ["circle", "square"]
    texts = ["A", "The answer is C.", "B. square", "circle", "2"]
    # question 0: both copies right; 1: copy 1 right, copy 1000001 says "circle" (= B there): wrong; 2: "2" is a
    # word, not a letter, and the text of option B: right.
    scores = BENCHMARKS["mmbench"].score(tmp_path, _answers("mmbench", tmp_path, texts))
    assert scores["circular_accuracy"] == pytest.approx(200 / 3) and scores["questions"] == 3
    assert scores["accuracy"] == 80.0 and scores["rows"] == 5
    upload = pd.read_table(BENCHMARKS["mmbench"].submission(tmp_path, _answers("mmbench", tmp_path, texts), tmp_path))
    assert list(upload["prediction"]) == texts and "image" not in upload.columns and "hint" not in upload.columns


@pytest.mark.parametrize(
    ("answer", "letter"),
    [("A", "A"), ("(B)", "B"), ("B. red", "B"), ("A or B", None), ("red", "B"), ("I cannot tell", None),
     ("Z", "Z"), ("blue or red", None), ("the answer: C", "C")],
)  # fmt: skip
def test_mmbench_reads_letters_as_vlmevalkit_does(answer: str, letter: str | None) -> None:
    assert can_infer(answer, {"A": "blue", "B": "red", "C": "green"}) == letter


def test_seed_bench_image_accuracy_by_exact_letters(tmp_path: Path) -> None:
    annotations = {
        "question_type": {"Scene Understanding": 1, "Instance Counting": 2, "Action Recognition": 10},
        "questions": [
            {"question_id": "101", "data_type": "image", "question_type_id": 1, "answer": "A", "data_id": "1.jpg"},
            {"question_id": "102", "data_type": "image", "question_type_id": 1, "answer": "B", "data_id": "2.jpg"},
            {"question_id": "103", "data_type": "image", "question_type_id": 2, "answer": "C", "data_id": "3.jpg"},
            {"question_id": "v1", "data_type": "video", "question_type_id": 10, "answer": "D", "data_id": "v.mp4"},
        ],
    }
    (tmp_path / "SEED-Bench.json").write_text(json.dumps(annotations))
    options = "\nA. a\nB. b\nC. c\nD. d\n" + MULTIPLE_CHOICE
    _jsonl(tmp_path / "llava-seed-bench.jsonl", [
        {"question_id": 101, "image": "SEED-Bench-image/1.jpg", "text": "q" + options},
        {"question_id": 102, "image": "SEED-Bench-image/2.jpg", "text": "q" + options},
        {"question_id": 103, "image": "SEED-Bench-image/3.jpg", "text": "q" + options},
        {"question_id": "v1", "image": "SEED-Bench-video-image/v.png", "text": "q" + options},
    ])  # fmt: skip
    answers = _answers("seed", tmp_path, ["A", "B.", "C", "D"])  # "B." is not exactly "B": wrong
    scores = BENCHMARKS["seed"].score(tmp_path, answers)
    assert scores["image_accuracy"] == pytest.approx(200 / 3) and scores["image_questions"] == 3
    assert scores["video_accuracy"] == 100.0 and scores["accuracy"] == 75.0
    assert scores["per_type"] == {"Scene Understanding": 50.0, "Instance Counting": 100.0, "Action Recognition": 100.0}
    upload = BENCHMARKS["seed"].submission(tmp_path, answers, tmp_path).read_text().splitlines()
    assert json.loads(upload[1]) == {"question_id": "102", "prediction": "B."}
    assert BENCHMARKS["seed"].questions(tmp_path)[0].image == tmp_path / "SEED-Bench-image" / "1.jpg"


def test_an_official_answer_file_is_read_as_is(tmp_path: Path) -> None:
    """LLaVA's own answer lines (with their answer_id, model_id, metadata) score the same as ours."""
    line = {"question_id": 101, "prompt": "q", "text": "A", "answer_id": "x", "model_id": "llava-v1.5-13b", "metadata": {}}
    append(tmp_path / "answers.jsonl", [line])
    assert read_answers(tmp_path / "answers.jsonl") == [line]
