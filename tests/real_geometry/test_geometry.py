"""Models at LLaVA-1.5's published geometry: the llava-hf configuration, the real tokenizer, and every task generating."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.backend import GenerationRequest
from engine.model import checkpoint_keys
from engine.tiny_model import GEOMETRIES, llava_config, llava_tokenizer

from .conftest import run_cli

IMAGE = Path(__file__).resolve().parents[1] / "data" / "images" / "red-circle.png"
SHAPES_SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "data" / "schemas" / "shapes.json").read_text())


@pytest.mark.parametrize(
    "name, parameters, llm_width",
    [("llava-1.5-7b", 7_063_427_072, 4096), ("llava-1.5-13b", 13_351_494_656, 5120)],
)
def test_the_published_geometry_has_the_published_size(llama_tokenizer_dir, name, parameters, llm_width):
    """Built on the meta device (no memory): llava-hf/llava-1.5-7b-hf has 7,063,427,072 parameters."""
    from transformers import LlavaForConditionalGeneration

    spec = GEOMETRIES[name]
    config = llava_config(spec, llava_tokenizer(llama_tokenizer_dir), spec.vocab_size)
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    assert sum(p.numel() for p in model.parameters()) == parameters
    projector = model.model.multi_modal_projector
    assert (projector.linear_1.in_features, projector.linear_1.out_features) == (1024, llm_width)
    assert projector.linear_2.out_features == llm_width
    text, vision = config.text_config, config.vision_config
    assert (config.image_token_index, text.pad_token_id, text.vocab_size) == (32000, 32001, 32064)
    assert (config.vision_feature_layer, config.vision_feature_select_strategy, config.image_seq_length) == (-2, "default", 576)
    assert (vision.hidden_size, vision.num_attention_heads, vision.intermediate_size) == (1024, 16, 4096)
    assert (vision.patch_size, vision.image_size) == (14, 336)
    assert (text.max_position_embeddings, text.rms_norm_eps) == (4096, 1e-5)


def test_the_command_writes_a_llava_hf_checkpoint_with_the_real_tokenizer(real_model_dir, real_backend):
    config = json.loads((real_model_dir / "config.json").read_text())
    assert (config["text_config"]["hidden_size"], config["text_config"]["num_hidden_layers"]) == (64, 1)
    assert (config["vision_config"]["hidden_size"], config["vision_config"]["num_hidden_layers"]) == (64, 1)
    keys = checkpoint_keys(real_model_dir)
    assert any(key.startswith("vision_tower.vision_model.") for key in keys)
    assert not any(key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model.") for key in keys)
    tokenizer = real_backend.tokenizer
    assert len(tokenizer) == 32002 and tokenizer.convert_tokens_to_ids(["<image>", "<pad>"]) == [32000, 32001]
    assert tokenizer("ASSISTANT:").input_ids == [1, 319, 1799, 9047, 13566, 29901]


def test_the_processor_gives_576_image_tokens_and_336_pixel_squares(real_backend):
    processor = real_backend.loaded.processor
    row = real_backend._prepare(0, GenerationRequest(image=IMAGE, task="caption"))
    inputs = processor(text=[row.request.prompt], images=[row.image], return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 336, 336)
    assert int((inputs["input_ids"] == 32000).sum()) == 576 == real_backend.image_tokens


@pytest.mark.parametrize(
    "options",
    [
        {"task": "caption"},
        {"task": "vqa", "instruction": "What shape is it?"},
        {"task": "vqa", "instruction": "What shape is it?", "unanswerable": True},
        {"task": "vqa", "instruction": "What shape is it?", "choices": ("circle", "square", "star")},
    ],
    ids=["caption", "vqa", "unanswerable", "multiple-choice"],
)
def test_every_task_generates_over_the_real_vocabulary(real_backend, options):
    result = real_backend.generate([GenerationRequest(image=IMAGE, max_new_tokens=6, **options)])[0]
    assert result.error is None and result.tokens == 6 and result.text
    # Never <image>, <pad> or the 62 padding rows: only real text tokens (and </s>).
    assert all(2 <= token < 32000 for token in result.token_ids)


def test_json_over_the_real_vocabulary_is_valid_or_an_explicit_failure(real_backend):
    """The schema is compiled against the 32k vocabulary; an enum-only schema always completes, a free string may not."""
    free = {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]}
    enums, cut = real_backend.generate([
        GenerationRequest(image=IMAGE, task="json", schema=SHAPES_SCHEMA, max_new_tokens=64),
        GenerationRequest(image=IMAGE, task="json", schema=free, max_new_tokens=8),
    ])  # fmt: skip
    assert enums.error is None and enums.finish_reason == "stop"
    assert set(enums.json) == {"shape", "color", "count", "position"} and json.loads(enums.text) == enums.json
    assert cut.json is None and cut.error == "length: the JSON answer was cut off at max_new_tokens=8"
    assert cut.text.startswith('{"note": "')


def test_predict_prints_a_valid_object_or_a_one_line_error(real_model_dir, tmp_path):
    """`llava-labeler predict` with a JSON schema on a real-geometry checkpoint, as a user runs it."""
    schema = tmp_path / "shapes.json"
    schema.write_text(json.dumps(SHAPES_SCHEMA))
    common = ["predict", "--model", str(real_model_dir), "--image", str(IMAGE), "--task", "json", "--schema", str(schema)]
    proc = run_cli(*common, "--max-new-tokens", "64")
    assert proc.returncode == 0, proc.stderr
    [line] = proc.stdout.splitlines()
    answer = json.loads(line)
    assert answer["error"] is None and set(answer["json"]) == set(SHAPES_SCHEMA["properties"])
    proc = run_cli(*common, "--max-new-tokens", "4")  # too few tokens to close the object
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == ["error: length: the JSON answer was cut off at max_new_tokens=4"], proc.stderr
    [line] = proc.stdout.splitlines()  # the result is still printed, with what was generated
    assert json.loads(line)["json"] is None and json.loads(line)["finish_reason"] == "length"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--text-layers", "2"], "error: --text-layers needs --geometry"),
        (["--geometry", "llava-1.5-13b", "--vocab-size", "600"], "error: --vocab-size cannot be used with --geometry"),
        (["--geometry", "llava-1.5-7b", "--text-hidden", "63"], "error: the text width must be even (RoPE rotates pairs of dimensions), got 63"),
    ],
    ids=["geometry-option-alone", "tiny-option-with-geometry", "odd-width"],
)
def test_the_command_refuses_options_that_do_not_go_together(tmp_path, args, message):
    done = run_cli("model", "init-tiny", str(tmp_path / "model"), *args)
    assert done.returncode == 1 and done.stderr.strip() == message
