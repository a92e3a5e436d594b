"""MME, scored as its `eval_tool/calculation.py` scores it, after LLaVA's `convert_answer_to_mme.py`.

Layout: `MME/llava_mme.jsonl`, the images and the ground truth in
`MME/MME_Benchmark_release_version/<subtask>/` (`images/` + `questions_answers_YN/*.txt`, or
both in the subtask's folder; each line "question<TAB>yes|no"). Neither script is in
llava-torch; both are ported. Per subtask: the answer is read as calculation.py reads it
(exactly "yes"/"no", else the first four characters holding "yes", else "no", else other),
acc = questions right, acc+ = images with both questions right, score = 100 (acc + acc+);
perception and cognition are the sums of their subtasks' scores. Images are grouped by
question_id (calculation.py takes the file's consecutive pairs, the same on a complete run).
The upload is the eval_tool's answer folder: one `<subtask>.txt` of "image, question, truth,
answer" lines per subtask.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from engine.prompts import SHORT_ANSWER
from training.benchmarks.base import Benchmark, Question, Scores, loader_questions
from training.benchmarks.files import BenchmarkError, require

QUESTIONS = "llava_mme.jsonl"
IMAGES = "MME_Benchmark_release_version"
YES_NO = " Please answer yes or no."
SUBTASKS = {
    "perception": ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR"),
    "cognition": ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"),
}
Row = tuple[str, str, str, str]  # image file's .txt name, question, truth, answer


def _truth(root: Path) -> dict[tuple[str, str, str], str]:
    """convert_answer_to_mme.py's `get_gt`: (subtask, .txt file, question) -> yes/no."""
    truth = {}
    for folder in sorted(p for p in require(root, "MME's release folder (one folder per subtask)").iterdir() if p.is_dir()):
        qa = folder / "questions_answers_YN" if (folder / "images").exists() else folder
        for file in sorted(qa.glob("*.txt")):
            for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
                parts = line.strip().split("\t")
                if len(parts) != 2:
                    raise BenchmarkError(f"{file} line {number} is not 'question<TAB>answer'")
                truth[(folder.name, file.name, parts[0])] = parts[1]
    return truth


def results(root: Path, answers: list[dict[str, Any]]) -> dict[str, list[Row]]:
    """convert_answer_to_mme.py: each answer with its subtask, file, question as the ground truth words it, and truth."""
    truth = _truth(root)
    rows: dict[str, list[Row]] = defaultdict(list)
    for answer in answers:
        subtask = str(answer["question_id"]).split("/")[0]
        file = str(answer["question_id"]).split("/")[-1].split(".")[0] + ".txt"
        prompt = answer["prompt"]
        if SHORT_ANSWER in prompt:
            prompt = prompt.replace(SHORT_ANSWER, "").strip()
        if YES_NO.strip() not in prompt:
            prompt += YES_NO
            if (subtask, file, prompt) not in truth:
                prompt = prompt.replace(YES_NO, " " + YES_NO)
        if (subtask, file, prompt) not in truth:
            raise BenchmarkError(f"{root / subtask} has no ground truth for {file[:-4]}: {prompt!r}")
        rows[subtask].append((file, prompt, truth[(subtask, file, prompt)], answer["text"]))
    return rows


def read_answer(text: str) -> str:
    """calculation.py's `parse_pred_ans` (after lower-casing)."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    return "yes" if "yes" in text[:4] else "no" if "no" in text[:4] else "other"


def subtask_scores(rows: list[Row]) -> dict[str, float]:
    """acc, acc+ (an image counts when all its questions are right) and their sum, all in percent."""
    by_image: dict[str, list[bool]] = defaultdict(list)
    for file, _, truth, answer in rows:
        by_image[file].append(read_answer(answer) == truth.lower())
    right = [ok for image in by_image.values() for ok in image]
    acc = sum(right) / len(right) * 100
    acc_plus = sum(all(image) for image in by_image.values()) / len(by_image) * 100
    return {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus}


class Mme(Benchmark):
    name = "mme"
    title = "MME: perception and cognition scores (acc + acc+ per subtask)"
    layout = f"{QUESTIONS}, {IMAGES}/<subtask>/"
    metric = "perception score (points)"

    def questions(self, data: Path) -> list[Question]:
        return loader_questions(data / QUESTIONS, data / IMAGES, "MME questions (JSON lines of question_id, image, text)")

    def score(self, data: Path, answers: list[dict[str, Any]]) -> Scores:
        rows = results(data / IMAGES, answers)
        scores: Scores = {}
        for kind, names in SUBTASKS.items():
            subtasks = {name: subtask_scores(rows[name]) for name in names if rows.get(name)}
            scores[kind] = {"score": sum(s["score"] for s in subtasks.values()), "subtasks": subtasks}
        return {"score": scores["perception"]["score"], "metric": self.metric, **scores}

    def submission(self, data: Path, answers: list[dict[str, Any]], out: Path) -> Path:
        folder = out / "mme_eval_tool_answers"
        folder.mkdir(parents=True, exist_ok=True)
        for subtask, rows in results(data / IMAGES, answers).items():
            (folder / f"{subtask}.txt").write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")
        return folder
