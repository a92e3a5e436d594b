"""Multi-process training runs on the stock engines: DDP over gloo on the CPU, DeepSpeed configs that parse."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.utils.deepspeed import HfDeepSpeedConfig

from engine.model import checkpoint_keys, load_model

REPO = Path(__file__).resolve().parents[2]
# The keys the transformers Trainer fills in when a DeepSpeed config says "auto".
TRAINER_FILLS = {
    "bf16.enabled", "fp16.enabled", "train_micro_batch_size_per_gpu", "train_batch_size",
    "gradient_accumulation_steps", "gradient_clipping", "zero_optimization.reduce_bucket_size",
    "zero_optimization.stage3_prefetch_bucket_size", "zero_optimization.stage3_param_persistence_threshold",
}  # fmt: skip


def _autos(config: dict, prefix: str = "") -> set[str]:
    found = set()
    for key, value in config.items():
        if isinstance(value, dict):
            found |= _autos(value, f"{prefix}{key}.")
        elif value == "auto":
            found.add(prefix + key)
    return found


@pytest.mark.parametrize("name, stage", [("zero2.json", 2), ("zero3.json", 3)])
def test_deepspeed_configs_parse_and_leave_only_trainer_filled_values_open(name, stage):
    path = REPO / "training" / "deepspeed" / name
    config = HfDeepSpeedConfig(str(path))
    assert config.get_value("zero_optimization.stage") == stage
    assert config.is_zero3() == (stage == 3)
    assert _autos(json.loads(path.read_text())) <= TRAINER_FILLS
    if stage == 3:  # the final save needs whole weights, not shards
        assert config.get_value("zero_optimization.stage3_gather_16bit_weights_on_model_save") is True


def test_two_process_ddp_run_on_cpu(tiny_model_dir, shapes_dir, tmp_path):
    out = tmp_path / "ddp"
    bin_dir = Path(sys.executable).parent
    command = [
        str(bin_dir / "torchrun"), "--standalone", "--nproc_per_node", "2", "--no-python", str(bin_dir / "llava-labeler"),
        "train", "--stage", "finetune", "--model", str(tiny_model_dir), "--data", str(shapes_dir / "finetune.json"),
        "--images", str(shapes_dir / "images"), "--out", str(out), "--batch-size", "8", "--per-device-batch-size", "2",
        "--max-steps", "3", "--save-steps", "0", "--learning-rate", "1e-3", "--no-gradient-checkpointing",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": str(bin_dir)})
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_steps"] == 3
    # 8 = 2 per device x 2 processes x 2 accumulation steps
    assert metrics["runtime"]["epoch"] == pytest.approx(3 * 8 / 48, abs=0.01)
    assert result.stdout.count("checkpoint written to") == 1  # rank 0 saves, once
    assert any(k.startswith("vision_tower.vision_model.") for k in checkpoint_keys(out))
    load_model(out)
