"""Checkpoints: the tiny model is a real LLaVA-1.5, saved in the llava-hf layout, loaded by the real loader."""

import json
import shutil

import pytest
import torch

from engine.backend import EngineError
from engine.model import checkpoint_keys, load_model, pick_device, pick_dtype, save_model


def test_saved_keys_use_the_llava_hf_layout(tiny_model_dir):
    keys = checkpoint_keys(tiny_model_dir)
    prefixes = {".".join(key.split(".")[:2]) for key in keys}
    assert prefixes == {
        "vision_tower.vision_model",
        "multi_modal_projector.linear_1",
        "multi_modal_projector.linear_2",
        "language_model.model",
        "language_model.lm_head",
    }
    assert not [k for k in keys if k.startswith("vision_tower.") and not k.startswith("vision_tower.vision_model.")]


def test_tiny_model_is_llava_1_5_architecture(tiny_model_dir):
    loaded = load_model(tiny_model_dir)
    config = loaded.model.config
    assert type(loaded.model).__name__ == "LlavaForConditionalGeneration"
    assert config.vision_feature_layer == -2
    assert config.vision_feature_select_strategy == "default"  # CLS token dropped
    assert config.projector_hidden_act == "gelu"
    assert config.vision_config.model_type == "clip_vision_model"
    assert config.text_config.model_type == "llama"
    projector = loaded.model.model.multi_modal_projector
    assert [type(m).__name__ for m in projector.children()] == ["Linear", "GELUActivation", "Linear"]
    assert loaded.device.type == "cpu" and loaded.dtype == torch.float32
    assert loaded.processor.patch_size == 8 and loaded.processor.num_additional_image_tokens == 1
    assert loaded.tokenizer.padding_side == "left"


def test_save_then_load_round_trips_every_weight(tiny_model_dir, tmp_path):
    first = load_model(tiny_model_dir)
    save_model(first.model, first.processor, tmp_path / "copy")
    second = load_model(tmp_path / "copy")
    a, b = first.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda d: shutil.rmtree(d), "the directory does not exist"),
        (lambda d: (d / "config.json").unlink(), "config.json is missing"),
        (lambda d: (d / "config.json").write_text("{not json"), "config.json is not valid JSON"),
        (lambda d: (d / "model.safetensors").unlink(), "has no weights"),
        (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000]), "could not load"),
        (
            lambda d: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()), "model_type": "bert"})),
            "holds a 'bert' model",
        ),
    ],
    ids=["missing-dir", "no-config", "bad-config", "no-weights", "truncated-weights", "wrong-architecture"],
)
def test_broken_checkpoints_give_clear_errors(tiny_model_dir, tmp_path, breakage, message):
    broken = _copy(tiny_model_dir, tmp_path / "broken")
    breakage(broken)
    with pytest.raises(EngineError, match=message):
        load_model(broken)


def test_a_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"x")
    with pytest.raises(EngineError, match="is a file"):
        load_model(path)


def test_device_and_dtype_choice_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the CPU defaults are what is checked here")
    assert pick_device("auto").type == "cpu"
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cpu"), "bfloat16") == torch.bfloat16
    with pytest.raises(EngineError, match="no CUDA device"):
        pick_device("cuda")
    with pytest.raises(EngineError, match="unknown dtype 'fp8'"):
        pick_dtype(torch.device("cpu"), "fp8")


def test_saved_tokenizer_config_is_readable_by_transformers_4(tiny_model_dir):
    """The predictor image runs TensorRT-LLM 1.2, which pins transformers 4.57: it must read what 5.x saved."""
    config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"  # 5.x writes TokenizersBackend, unknown to 4.x
    assert isinstance(config.get("extra_special_tokens", {}), dict)  # 4.x reads a {name: token} mapping
    loaded = load_model(tiny_model_dir)
    assert "token_type_ids" not in loaded.processor.tokenizer("USER: hi").keys()  # generate() refuses them
