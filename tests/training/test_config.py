"""Training runs are described by `TrainConfig`; the demo build and the retrain produce one, and the
`train` command's options are generated from it (one declaration per option)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from labeler.settings import RetrainSettings
from entrypoints.cli.main import app
from labeler.retrain import train_config
from labeler.retrain_data import RetrainData
from training.config import TrainConfig


@pytest.mark.parametrize("lora", [True, False])
def test_every_field_the_retrain_sets_exists_in_the_train_config(tmp_path: Path, lora: bool) -> None:
    data = RetrainData(train=tmp_path / "t.json", eval=tmp_path / "e.json", images=tmp_path, counts={})
    options = RetrainSettings(learning_rate=1e-4, batch_size=8, max_steps=5)
    fields = train_config(options, lora, "models/v1", data, tmp_path / "out")
    config = TrainConfig.model_validate(fields)  # extra="forbid": a field training does not know fails here
    assert (config.lora, config.learning_rate, config.batch_size, config.max_steps) == (lora, 1e-4, 8, 5)


def test_an_unknown_field_is_refused() -> None:
    with pytest.raises(ValidationError, match="learning_rat"):
        TrainConfig.model_validate({"stage": "finetune", "model": "m", "data": "d", "out": "o", "learning_rat": 1})


def test_train_reads_a_config_file_and_command_line_options_override_it(tmp_path: Path) -> None:
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"stage": "finetune", "model": "m", "data": "d.json", "out": str(tmp_path / "o"), "lora": True}))
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--stage", "pretrain"])
    # the override reaches validation: LoRA is for stage 2 only
    assert result.exit_code == 1
    assert "--lora applies to the finetune stage" in result.output


def test_train_names_the_option_that_is_wrong() -> None:
    result = CliRunner().invoke(app, ["train", "--stage", "finetune", "--model", "m", "--data", "d", "--out", "o", "--warmup-ratio", "2"])
    assert result.exit_code == 1
    assert "--warmup-ratio: Input should be less than or equal to 1" in result.output


def test_train_without_a_config_names_the_missing_fields() -> None:
    result = CliRunner().invoke(app, ["train", "--stage", "finetune"])
    assert result.exit_code == 1
    assert "--model: Field required" in result.output and "--out: Field required" in result.output
