"""`llava-labeler train`: stage 1, stage 2, LoRA, resume — checkpoints the engine loads, in the llava-hf layout."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from engine.model import checkpoint_keys, load_model
from entrypoints.cli.main import app

FAST = ["--batch-size", "4", "--per-device-batch-size", "4", "--save-steps", "0", "--logging-steps", "1"]


def _train(*args: str):
    return CliRunner().invoke(app, ["train", *args, *FAST])


def _weights(path: Path) -> dict:
    return {k: v for shard in sorted(path.glob("*.safetensors")) for k, v in load_file(shard).items()}


def _changed(before: dict, after: dict, prefix: str) -> bool:
    keys = [k for k in before if k.startswith(prefix)]
    assert keys, prefix
    return any(not before[k].equal(after[k]) for k in keys)


def _check_checkpoint(out: Path, steps: int) -> dict:
    loaded = load_model(out)  # the engine's loader, unchanged
    assert type(loaded.model).__name__ == "LlavaForConditionalGeneration"
    keys = checkpoint_keys(out)
    assert {".".join(k.split(".")[:2]) for k in keys} == {
        "vision_tower.vision_model", "multi_modal_projector.linear_1", "multi_modal_projector.linear_2",
        "language_model.model", "language_model.lm_head",
    }  # fmt: skip
    assert not [k for k in keys if "lora" in k or "base_layer" in k or "modules_to_save" in k]
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["global_steps"] == steps and metrics["data"]["bad_by_reason"] == {}
    log = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log if "loss" in entry] == list(range(1, steps + 1))
    assert not (out / "checkpoints").exists()
    return metrics


def test_stage1_trains_only_the_projector(tiny_model_dir, shapes_dir, tmp_path):
    out = tmp_path / "stage1"
    result = _train("--stage", "pretrain", "--model", str(tiny_model_dir), "--data", str(shapes_dir / "pretrain.json"),
                    "--images", str(shapes_dir / "images"), "--out", str(out), "--max-steps", "3", "--learning-rate", "1e-2")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "48 records, 48 usable, 0 bad" in result.output
    assert "pretrain stage1" in result.output and "{'loss'" not in result.output, "one progress bar, no line per step"
    metrics = _check_checkpoint(out, 3)
    assert metrics["stage"] == "pretrain" and metrics["config"]["batch_size"] == 4
    before, after = _weights(tiny_model_dir), _weights(out)
    assert _changed(before, after, "multi_modal_projector.")
    assert not _changed(before, after, "vision_tower.") and not _changed(before, after, "language_model.")


def test_a_run_ends_early_at_the_loss_it_was_asked_to_reach(tiny_model_dir, shapes_dir, tmp_path):
    common = ["--stage", "pretrain", "--model", str(tiny_model_dir), "--data", str(shapes_dir / "pretrain.json"),
              "--images", str(shapes_dir / "images"), "--max-steps", "3", "--learning-rate", "1e-2"]  # fmt: skip
    reached = _train(*common, "--out", str(tmp_path / "reached"), "--stop-at-loss", "1000")
    assert reached.exit_code == 0, reached.output
    assert _check_checkpoint(tmp_path / "reached", 1)["stopped_at_loss"] == 1
    unreachable = _train(*common, "--out", str(tmp_path / "capped"), "--stop-at-loss", "1e-9")
    assert unreachable.exit_code == 0, unreachable.output
    assert _check_checkpoint(tmp_path / "capped", 3)["stopped_at_loss"] is None


def test_stage2_trains_projector_and_llm_and_optionally_the_tower(tiny_model_dir, shapes_dir, tmp_path):
    common = ["--stage", "finetune", "--model", str(tiny_model_dir), "--data", str(shapes_dir / "finetune.json"),
              "--images", str(shapes_dir / "images"), "--max-steps", "2", "--learning-rate", "1e-3"]  # fmt: skip
    result = _train(*common, "--out", str(tmp_path / "full"), "--no-gradient-checkpointing")
    assert result.exit_code == 0, result.output
    _check_checkpoint(tmp_path / "full", 2)
    before, after = _weights(tiny_model_dir), _weights(tmp_path / "full")
    assert _changed(before, after, "multi_modal_projector.") and _changed(before, after, "language_model.lm_head")
    assert _changed(before, after, "language_model.model.layers.")
    assert not _changed(before, after, "vision_tower.")
    result = _train(*common, "--out", str(tmp_path / "tower"), "--train-vision-tower")
    assert result.exit_code == 0, result.output
    assert _changed(before, _weights(tmp_path / "tower"), "vision_tower.vision_model.encoder.")


def test_lora_is_merged_into_a_plain_checkpoint_or_kept_as_an_adapter(tiny_model_dir, shapes_dir, tmp_path):
    common = ["--stage", "finetune", "--lora", "--lora-r", "4", "--lora-alpha", "8", "--learning-rate", "1e-2", "--projector-lr", "1e-2",
              "--model", str(tiny_model_dir), "--data", str(shapes_dir / "finetune.json"),
              "--images", str(shapes_dir / "images"), "--max-steps", "2"]  # fmt: skip
    result = _train(*common, "--out", str(tmp_path / "merged"))
    assert result.exit_code == 0, result.output
    metrics = _check_checkpoint(tmp_path / "merged", 2)
    assert metrics["lora"] and metrics["trainable_parameters"] < metrics["total_parameters"] / 2
    before, after = _weights(tiny_model_dir), _weights(tmp_path / "merged")
    assert _changed(before, after, "language_model.model.layers.0.self_attn.q_proj")  # LoRA delta merged in
    assert _changed(before, after, "multi_modal_projector.")  # trained whole, at its own learning rate
    assert not _changed(before, after, "language_model.model.embed_tokens") and not _changed(before, after, "vision_tower.")
    result = _train(*common, "--out", str(tmp_path / "adapter"), "--no-merge-lora")
    assert result.exit_code == 0, result.output
    adapter = json.loads((tmp_path / "adapter/adapter/adapter_config.json").read_text())
    assert adapter["r"] == 4 and adapter["lora_alpha"] == 8 and "multi_modal_projector" in adapter["modules_to_save"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--stage", "pretrain", "--lora"], "--lora applies to the finetune stage"),
        (["--stage", "sideways"], "--stage: Input should be 'pretrain' or 'finetune'"),
        (["--stage", "finetune", "--batch-size", "6"], "global batch 6 is not a multiple of per-device batch 4"),
    ],
)
def test_bad_training_options_fail_in_one_line(tiny_model_dir, shapes_dir, tmp_path, args, message):
    base = ["train", "--model", str(tiny_model_dir), "--data", str(shapes_dir / "finetune.json"),
            "--images", str(shapes_dir / "images"), "--out", str(tmp_path / "x"), "--per-device-batch-size", "4"]  # fmt: skip
    result = CliRunner().invoke(app, base + args)
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_missing_images_fail_before_training_with_the_record_ids(tiny_model_dir, shapes_dir, tmp_path):
    result = _train("--stage", "finetune", "--model", str(tiny_model_dir), "--data", str(shapes_dir / "finetune.json"),
                    "--images", str(tmp_path), "--out", str(tmp_path / "x"))  # fmt: skip
    assert result.exit_code == 1
    assert "48 bad (missing image: 48)" in result.output and "shapes-3-mix-000000 (missing image" in result.output


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tiny_model_dir, shapes_dir, tmp_path):
    out = tmp_path / "resumed"
    cli = str(Path(sys.executable).parent / "llava-labeler")
    args = [cli, "train", "--stage", "finetune", "--model", str(tiny_model_dir), "--data", str(shapes_dir / "finetune.json"),
            "--images", str(shapes_dir / "images"), "--out", str(out), "--batch-size", "4", "--per-device-batch-size", "4",
            "--max-steps", "24", "--save-steps", "4", "--no-gradient-checkpointing"]  # fmt: skip
    run = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoints/checkpoint-4/trainer_state.json").exists() and run.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)  # a preempted pod, long before step 24
    run.wait()
    assert not (out / "config.json").exists()
    refused = subprocess.run(args, capture_output=True, text=True)
    assert refused.returncode == 1 and "pass --resume to continue it" in refused.stderr
    resumed = subprocess.run(args + ["--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert "checkpoint-" in metrics["resumed_from"] and metrics["global_steps"] == 24
    load_model(out)
