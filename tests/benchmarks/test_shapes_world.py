"""The demo model runs POPE and MMBench end to end, from files in their official layouts made from the shapes world.

`llava-labeler benchmark run` is the command a user types; a run killed mid-write resumes where
it stopped; a missing or malformed file is one line naming it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from training.benchmarks import BenchmarkError, get
from training.shapes_data import ASK
from training.world import render, sample_scene

from .test_ported_scorers import mmbench_tsv

REPO = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).with_name("llava-labeler")
DEMO = REPO / "training" / "demo_model"
SPLITS = ("adversarial", "popular", "random")


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([str(CLI), "benchmark", *args], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def shapes_pope(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """POPE's layout: 6 shapes images, 2 questions each per split (split k asks with its own random stream)."""
    data = tmp_path_factory.mktemp("pope")
    (data / "val2014").mkdir()
    scenes = [sample_scene(random.Random(f"pope-{i}")) for i in range(6)]
    for i, scene in enumerate(scenes):
        render(scene).save(data / "val2014" / f"COCO_val2014_{i:012d}.jpg")
    questions = []
    for s, split in enumerate(SPLITS):
        rng, labels = random.Random(split), []
        for i, scene in enumerate(scenes):
            for _ in range(2):
                asked = ASK["pope"](scene, rng)
                image = f"COCO_val2014_{i:012d}.jpg"
                questions.append({"question_id": s * 10000000 + len(labels) + 1, "image": image, "text": asked.user_text, "category": split})
                labels.append({"question_id": len(labels) + 1, "image": image, "text": asked.question, "label": asked.label})
        (data / "coco").mkdir(exist_ok=True)
        (data / "coco" / f"coco_pope_{split}.json").write_text("".join(json.dumps(row) + "\n" for row in labels))
    (data / "llava_pope_test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in questions))
    return data


def test_the_demo_model_runs_pope_with_the_command_and_a_killed_run_resumes(shapes_pope: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = _cli("run", "pope", "--model", str(DEMO), "--data", str(shapes_pope), "--out", str(out), "--limit", "20", "--batch-size", "8")
    assert first.returncode == 0, first.stderr
    assert "pope: 20 questions answered now, 20 of 20" in first.stdout
    answers = out / "answers.jsonl"
    lines = answers.read_text().splitlines()
    answers.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:25])  # killed while writing the 20th answer
    second = _cli("run", "pope", "--model", str(DEMO), "--data", str(shapes_pope), "--out", str(out), "--batch-size", "16")
    assert second.returncode == 0, second.stderr
    assert "pope: 17 questions answered now, 36 of 36" in second.stdout, "19 kept, the cut line and the rest asked"
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [r["question_id"] for r in rows[:19]] == [json.loads(line)["question_id"] for line in lines[:19]]
    assert len({(r["question_id"], r["prompt"]) for r in rows}) == 36
    assert rows[0]["prompt"].endswith("\nAnswer the question using a single word or phrase.") and rows[0]["model_id"] == "demo_model"
    scores = json.loads((out / "scores.json").read_text())["scores"]
    assert set(scores["splits"]) == set(SPLITS) and all(s["n"] == 12 for s in scores["splits"].values())
    assert scores["score"] >= 60, f"the demo model answers POPE on its own world (F1 {scores['score']:.1f})"
    again = _cli("score", "pope", "--data", str(shapes_pope), "--answers", str(answers))
    assert again.returncode == 0 and json.loads(again.stdout)["score"] == scores["score"]


def test_the_demo_model_runs_mmbench_circular(tmp_path: Path) -> None:
    from engine.backends.hf import HFBackend
    from training.benchmarks import BENCHMARKS, runner

    rows = []
    for i in range(8):
        scene = sample_scene(random.Random(f"mmbench-{i}"))
        asked = ASK["mc"](scene, random.Random(i))
        options = list(asked.choices)
        buffer = io.BytesIO()
        render(scene).save(buffer, "PNG")
        copies = 2 if i < 4 else 1  # half the questions with a circular copy: options rotated by one
        for c in range(copies):
            rotated = options[c:] + options[:c]
            letter = "ABCD"[rotated.index(options["ABCD".index(asked.answer)])]
            rows.append({"index": c * 1000000 + i, "question": asked.question, "options": rotated, "answer": letter,
                         "image": base64.b64encode(buffer.getvalue()).decode()})  # fmt: skip
    mmbench_tsv(tmp_path / "mmbench_dev_20230712.tsv", rows)
    bench = BENCHMARKS["mmbench"]
    outcome = runner.run(bench, HFBackend.load(DEMO), tmp_path, bench.questions(tmp_path), tmp_path / "out", model_id="demo",
                         batch_size=12, max_new_tokens=8)  # fmt: skip
    assert outcome.asked == outcome.answered == 12 and outcome.scores is not None
    assert outcome.scores["questions"] == 8 and outcome.scores["rows"] == 12
    assert 0 <= outcome.scores["circular_accuracy"] <= 100 and 0 <= outcome.scores["accuracy"] <= 100
    said = [json.loads(line) for line in (tmp_path / "out" / "answers.jsonl").read_text().splitlines()]
    assert all(len(a["options"]) == 4 and a["option_char"] == ["A", "B", "C", "D"] for a in said)
    assert outcome.submission is not None and outcome.submission.name == "mmbench_dev_20230712_upload.tsv"


def test_missing_and_malformed_files_are_one_line(shapes_pope: Path, tmp_path: Path) -> None:
    missing = _cli("run", "pope", "--model", str(DEMO), "--data", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert f"error: {tmp_path / 'nowhere' / 'llava_pope_test.jsonl'} not found: expected POPE questions" in missing.stderr
    (tmp_path / "bad.jsonl").write_text('{"question_id": 1, "text": "yes"}\n')
    bad = _cli("score", "pope", "--data", str(shapes_pope), "--answers", str(tmp_path / "bad.jsonl"))
    expected = "lacks prompt: expected a LLaVA answer file (JSON lines of question_id, prompt, text)"
    assert bad.returncode == 1 and bad.stderr == f"error: {tmp_path / 'bad.jsonl'} line 1 {expected}\n"
    escape = tmp_path / "escape"
    escape.mkdir()
    (escape / "llava_pope_test.jsonl").write_text(json.dumps({"question_id": 1, "image": "../../etc/hostname", "text": "Q?"}) + "\n")
    refused = _cli("run", "pope", "--model", str(DEMO), "--data", str(escape), "--out", str(tmp_path / "o"))
    assert refused.returncode == 1 and f"question 1 names the image '../../etc/hostname', outside {escape / 'val2014'}: refused" in refused.stderr
    assert not (tmp_path / "o").exists()
    with pytest.raises(BenchmarkError, match="unknown benchmark 'mmvet'; expected one of vqav2, gqa, vizwiz"):
        get("mmvet")
