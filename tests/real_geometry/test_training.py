"""Training at the real geometry: stage 1, stage 2 with LoRA, `eval`, and the retrain's records, on shapes images at 336 px.

A random model's loss is about ln(32064) ≈ 10.4 per token: the loss is over the real vocabulary.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from engine.prompts import IMAGE_TOKEN, build_instruction
from labeler.exports import label_text

from .conftest import run_cli

RANDOM_LOSS = math.log(32064)
FEW_STEPS = ("--max-steps", "2", "--batch-size", "2", "--per-device-batch-size", "2", "--save-steps", "0", "--logging-steps", "1")


def _trained(out: Path, records: int) -> dict:
    """The run's train_metrics.json, checked: every record usable, the steps taken, a loss at the random model's level."""
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["data"]["total"] == metrics["data"]["usable"] == records, metrics["data"]
    assert metrics["global_steps"] >= 1 and abs(metrics["final_loss"] - RANDOM_LOSS) < 1.0
    return metrics


@pytest.fixture(scope="module")
def stage1(real_model_dir: Path, shapes_336: Path, tmp_path_factory) -> Path:
    """Stage 1 from a `--config` file (TrainConfig fields): two steps training the projector."""
    out = tmp_path_factory.mktemp("stage1") / "model"
    config = out.parent / "stage1.json"
    config.write_text(json.dumps({
        "stage": "pretrain", "model": str(real_model_dir), "data": str(shapes_336 / "pretrain.json"),
        "images": str(shapes_336 / "images"), "out": str(out),
        "max_steps": 2, "batch_size": 2, "per_device_batch_size": 2, "save_steps": 0, "logging_steps": 1,
    }))  # fmt: skip
    done = run_cli("train", "--config", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_stage1_trains_only_the_projector(stage1):
    metrics = _trained(stage1, records=4)
    assert metrics["stage"] == "pretrain"
    # The projector of this 64-wide model: 64x64 + 64 twice (CLIP 64 -> LLM 64 -> 64).
    assert metrics["trainable_parameters"] == 2 * (64 * 64 + 64)


def test_stage2_with_lora_then_eval(stage1, shapes_336, tmp_path):
    out = tmp_path / "stage2"
    done = run_cli("train", "--stage", "finetune", "--model", str(stage1), "--data", str(shapes_336 / "finetune.json"),
                   "--images", str(shapes_336 / "images"), "--out", str(out), "--lora", "--lora-r", "8",
                   "--lora-alpha", "16", *FEW_STEPS)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    metrics = _trained(out, records=4)
    assert metrics["lora"] is True
    scores = tmp_path / "scores.json"
    done = run_cli("eval", "--model", str(out), "--data", str(shapes_336 / "eval.json"),
                   "--images", str(shapes_336 / "images"), "--out", str(scores), "--batch-size", "8")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    evaluated = json.loads(scores.read_text())
    items = json.loads((shapes_336 / "eval.json").read_text())
    assert len(evaluated["outputs"]) == len(items) == 16 and all(o["error"] is None for o in evaluated["outputs"])
    assert sum(score["n"] for score in evaluated["scores"].values()) == 16
    assert evaluated["scores"]["json"]["validity"] == 1.0  # constrained over the 32k vocabulary, even untrained


def test_records_built_as_the_retrain_builds_them_train_at_this_geometry(real_model_dir, shapes_336, tmp_path):
    """labeler/retrain_data.py trains on the `llava` export: `<image>\\n` + the task's prompt, the label as the model writes it."""
    schema = json.loads((shapes_336 / "schema.json").read_text())
    manifest = [json.loads(line) for line in (shapes_336 / "eval-json.jsonl").read_text().splitlines()]
    records = [
        {
            "id": f"job1-item{number}",
            "image": entry["image"].removeprefix("images/"),
            "conversations": [
                {"from": "human", "value": f"{IMAGE_TOKEN}\n{build_instruction('json', entry['question'], schema=schema)}"},
                {"from": "gpt", "value": label_text(entry["reference"])},
            ],
        }
        for number, entry in enumerate(manifest, start=1)
    ]
    data = tmp_path / "train.json"
    data.write_text(json.dumps(records))
    done = run_cli("train", "--stage", "finetune", "--model", str(real_model_dir), "--data", str(data),
                   "--images", str(shapes_336 / "images"), "--out", str(tmp_path / "retrained"), "--lora",
                   "--lora-r", "8", "--lora-alpha", "16", "--max-steps", "1", "--batch-size", "2",
                   "--per-device-batch-size", "2", "--save-steps", "0")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert _trained(tmp_path / "retrained", records=2)["global_steps"] == 1
