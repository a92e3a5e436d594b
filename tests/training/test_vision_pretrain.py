"""Vision-tower pretraining: only the tower changes, the checkpoint stays a llava-hf LLaVA the engine loads."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.model import checkpoint_keys, load_model, save_model
from training.vision_pretrain import (
    ATTRIBUTES,
    POOLED,
    AttributeHeads,
    load_pixels,
    pretrain_vision_tower,
    tower_features,
    transplant_tower,
)


def _weights(path: Path) -> dict:
    return {k: v for shard in sorted(path.glob("*.safetensors")) for k, v in load_file(shard).items()}


def test_pretraining_changes_only_the_tower(tiny_model_dir, shapes_dir, tmp_path):
    out = tmp_path / "vision"
    lines: list[str] = []
    metrics = pretrain_vision_tower(tiny_model_dir, shapes_dir, out, steps=3, batch_size=8, warmup=1, log_every=1, echo=lines.append)
    assert metrics["steps"] == 3 and metrics["train_images"] == 48
    assert list(metrics["held_out_accuracy"]) == [*ATTRIBUTES, *(f"{name} (pooled)" for name in POOLED)]
    assert all(0.0 <= value <= 1.0 for value in metrics["held_out_accuracy"].values())
    assert json.loads((out / "vision_pretrain_metrics.json").read_text()) == metrics
    assert [line.split(":")[0].strip() for line in lines[1:4]] == ["step 1", "step 2", "step 3"]

    before, after = _weights(tiny_model_dir), _weights(out)
    assert set(before) == set(after) == set(checkpoint_keys(out))
    changed = {key for key in before if not before[key].equal(after[key])}
    assert changed and all(key.startswith("vision_tower.vision_model.") for key in changed)
    assert type(load_model(out).model).__name__ == "LlavaForConditionalGeneration"


def test_a_transplanted_tower_joins_the_pretrained_tower_to_another_checkpoints_llm(tiny_model_dir, shapes_dir, tmp_path):
    """The demo pretrains its tower beside the LLM's text steps and joins the two afterwards."""
    pretrain_vision_tower(tiny_model_dir, shapes_dir, tmp_path / "vision", steps=2, batch_size=8, warmup=1, echo=lambda line: None)
    llm = load_model(tiny_model_dir)  # stands in for the text steps' output: its LLM differs from the tiny model's
    with torch.no_grad():
        for param in llm.model.model.language_model.parameters():
            param.add_(0.5)
    save_model(llm.model, llm.processor, tmp_path / "llm")

    transplant_tower(tmp_path / "vision", tmp_path / "llm", tmp_path / "joined")
    joined, vision, other = _weights(tmp_path / "joined"), _weights(tmp_path / "vision"), _weights(tmp_path / "llm")
    assert set(joined) == set(vision) == set(other)
    for key, value in joined.items():
        source = vision if key.startswith("vision_tower.") else other
        assert value.equal(source[key]), key
    assert any(not vision[key].equal(other[key]) for key in joined if key.startswith("vision_tower."))
    assert any(not vision[key].equal(other[key]) for key in joined if key.startswith("language_model."))


def test_pixels_are_the_inference_preprocessing(tiny_model_dir, shapes_dir):
    from engine.images import expand_to_square, load_image, pad_color

    processor = load_model(tiny_model_dir).processor
    scenes = [s for s in json.loads((shapes_dir / "scenes.json").read_text()) if s["width"] != s["height"]][:2]
    assert scenes, "the fixture has no non-square image"
    pixels = load_pixels(processor, shapes_dir / "images", [s["image"] for s in scenes])
    colour = pad_color(processor.image_processor.image_mean)
    for row, scene in zip(pixels, scenes):
        image = expand_to_square(load_image(shapes_dir / "images" / scene["image"]), colour)
        expected = processor.image_processor([image], return_tensors="pt")["pixel_values"][0]
        assert torch.allclose(row.float(), expected, atol=1e-2)


def test_heads_read_the_features_llava_reads(tiny_model_dir):
    model = load_model(tiny_model_dir).model
    config = model.config
    pixels = torch.zeros(2, 3, config.vision_config.image_size, config.vision_config.image_size)
    features = tower_features(model.model.vision_tower, pixels, config.vision_feature_layer, config.vision_feature_select_strategy)
    with torch.no_grad():
        expected = model.model.get_image_features(
            pixel_values=pixels,
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
        ).pooler_output  # transformers' LLaVA: one projected feature tensor per image
    patches = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    assert features.shape == (2, patches, config.vision_config.hidden_size)
    # What the projector receives is exactly these features.
    with torch.no_grad():
        projected = model.model.multi_modal_projector(features)
    assert torch.allclose(projected, torch.stack(list(expected)), atol=1e-5)
    heads = AttributeHeads(config.vision_config.hidden_size, patches, pooled=("position", "colour"))
    logits = heads(features)
    assert heads.names == [*ATTRIBUTES, "position (pooled)", "colour (pooled)"]
    assert [tuple(x.shape) for x in logits] == [(2, len(ATTRIBUTES[name])) for name in (*ATTRIBUTES, "position", "colour")]
    # The pooled heads see the patches' mean only: shuffling the patches leaves their logits unchanged.
    shuffled = heads(features[:, torch.randperm(patches)])
    for name, before, after in zip(heads.names, logits, shuffled):
        assert torch.allclose(before, after, atol=1e-5) == name.endswith("(pooled)"), name


def test_a_data_set_without_training_images_is_refused(tiny_model_dir, tmp_path):
    (tmp_path / "scenes.json").write_text("[]")
    with pytest.raises(ValueError, match="no training images"):
        pretrain_vision_tower(tiny_model_dir, tmp_path, tmp_path / "out", steps=1)
