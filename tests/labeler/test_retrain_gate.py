"""The paper-benchmark gate of `retrain`: real `benchmark run` processes on candidate and active, the rows they mark.

The retrain's own fixtures (test_retrain.py) label and review two jobs with the tiny model; the
gate runs POPE from files in its official layout. Two LoRA steps change the tiny model little, so
the gate's margin steers the decision: -1 asks the candidate to gain a point of F1, which it
does not, and the reason names the benchmark.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.prompts import SHORT_ANSWER
from labeler.service import Labeler
from labeler.settings import BenchmarkGate

from .test_retrain import FAST, review_round  # noqa: F401 (the fixture, shared)


def _pope(folder: Path, png) -> Path:
    """POPE's layout: two images, two questions per split (one yes, one no)."""
    (folder / "val2014").mkdir(parents=True)
    (folder / "coco").mkdir()
    for i in range(2):
        (folder / "val2014" / f"{i}.png").write_bytes(png(50 + i))
    questions = []
    for s, split in enumerate(("adversarial", "popular", "random")):
        labels = []
        for k, (thing, label) in enumerate((("red circle", "yes"), ("dog", "no"))):
            image = f"{k}.png"
            text = f"Is there a {thing} in the image?\n{SHORT_ANSWER}"
            questions.append({"question_id": s * 100 + k, "image": image, "text": text, "category": split})
            labels.append({"question_id": k + 1, "image": image, "text": f"Is there a {thing} in the image?", "label": label})
        (folder / "coco" / f"coco_pope_{split}.json").write_text("".join(json.dumps(row) + "\n" for row in labels))
    (folder / "llava_pope_test.jsonl").write_text("".join(json.dumps(row) + "\n" for row in questions))
    return folder


def test_a_candidate_that_drops_a_benchmark_is_rejected_naming_it(labeler_settings, review_round, png, tmp_path: Path) -> None:
    gate = BenchmarkGate(name="pope", data=_pope(tmp_path / "pope", png), margin=-1.0, limit=10)
    retrain = FAST.model_copy(update={"margin": -1.0, "benchmarks": [gate]})
    labeler = Labeler(labeler_settings().model_copy(update={"retrain": retrain}))
    labeler.register_model_version("v1", labeler.settings.engine.model, status="active")
    review_round(labeler, 0)
    lines: list[str] = []
    outcome = labeler.retrain(echo=lines.append)
    assert outcome.decision == "rejected"
    assert "at least the margin -1.0000; benchmark dropped: pope " in outcome.reason and "a drop above its margin -1.00" in outcome.reason
    assert any(line.startswith("retrain: pope (F1, mean of the splits (%)): candidate ") for line in lines)
    versions = {v.name: v for v in labeler.list_model_versions()}
    candidate, active = versions[outcome.candidate], versions["v1"]
    gated = candidate.metrics["retrain"]["benchmarks"]["pope"]
    assert gated["drop"] == gated["active"] - gated["candidate"] and gated["margin"] == -1.0
    assert candidate.metrics["benchmarks"] == {"pope": {"score": gated["candidate"], "metric": "F1, mean of the splits (%)"}}
    assert active.metrics["benchmarks"] == {"pope": {"score": gated["active"], "metric": "F1, mean of the splits (%)"}}
    assert candidate.status == "rejected" and active.status == "active"
    work = Path(labeler.settings.data_dir).resolve() / "retrain" / outcome.candidate / "benchmarks" / "pope"
    answered = (work / "candidate" / "answers.jsonl").read_text().splitlines()
    assert len(answered) == 6 and (work / "active" / "scores.json").is_file()
