"""`llava-labeler engine build --dry-run` on the real-geometry checkpoint: the plan sizes every engine for 576 image tokens."""

from __future__ import annotations

import shlex

import pytest

from .conftest import run_cli


def _plan(real_model_dir, out, *options: str) -> list[list[str]]:
    done = run_cli("engine", "build", "--model", str(real_model_dir), "--out", str(out), "--dry-run", *options)
    assert done.returncode == 0, done.stderr
    return [shlex.split(line) for line in done.stdout.strip().splitlines()]


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


@pytest.mark.parametrize("batch", [16, 4])
def test_the_plan_reserves_576_prompt_table_rows_per_image(real_model_dir, tmp_path, batch):
    convert, build, vision = _plan(real_model_dir, tmp_path / "engine", "--max-batch-size", str(batch),
                                   "--max-input-len", "1024", "--max-new-tokens", "256")  # fmt: skip
    assert convert[1].endswith("llama/convert_checkpoint.py") and _option(convert, "--model_dir") == str(real_model_dir)
    assert build[0] == "trtllm-build" and _option(build, "--checkpoint_dir") == _option(convert, "--output_dir")
    assert int(_option(build, "--max_multimodal_len")) == batch * 576
    assert (int(_option(build, "--max_batch_size")), int(_option(build, "--max_input_len"))) == (batch, 1024)
    assert int(_option(build, "--max_seq_len")) == 1024 + 256
    assert _option(vision, "--model_type") == "llava" and int(_option(vision, "--max_batch_size")) == batch


def test_an_input_length_with_no_room_after_the_image_is_refused(real_model_dir, tmp_path):
    done = run_cli("engine", "build", "--model", str(real_model_dir), "--out", str(tmp_path / "engine"),
                   "--dry-run", "--max-input-len", "576")  # fmt: skip
    assert done.returncode != 0
    assert "--max-input-len 576 leaves no room for text after 576 image tokens" in done.stderr
