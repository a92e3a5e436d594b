"""A checkpoint whose tokenizer_config says `LlamaTokenizer` with `legacy: false` (as published llava-hf ones do) feeds the original's ids.

transformers 5 builds such a tokenizer with a Metaspace that adds `▁` to the first piece only, so
`<image>\\n` loses the `▁` the original LLaVA's chunk-by-chunk `tokenizer_image_token` gives it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from engine.backend import GenerationRequest
from engine.model import keep_word_start_after_special_tokens, load_model
from engine.prompts import build_instruction

from .test_original_llava import SHAPES_SCHEMA, original_prompt_ids

IMAGE_NEWLINE = "USER: <image>\nWhat"
ORIGINAL_IDS = [1, 3148, 1001, 29901, 29871, 32000, 29871, 13, 5618]  # <image> ▁ <0x0A> What


@pytest.fixture(scope="module")
def legacy_false_dir(real_model_dir: Path, tmp_path_factory) -> Path:
    """The real-geometry checkpoint with the tokenizer_config of llava-hf/llava-1.5-7b-hf's kind."""
    out = tmp_path_factory.mktemp("legacy-false") / "model"
    shutil.copytree(real_model_dir, out)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("backend", None)
    config.update(tokenizer_class="LlamaTokenizer", legacy=False, add_prefix_space=None)
    config_path.write_text(json.dumps(config, indent=2))
    return out


@pytest.fixture(scope="module")
def loaded(legacy_false_dir: Path):
    return load_model(legacy_false_dir)


def test_transformers_alone_drops_the_word_start_and_the_fix_up_restores_it(legacy_false_dir):
    from transformers import LlamaTokenizer

    tokenizer = LlamaTokenizer.from_pretrained(legacy_false_dir)
    assert tokenizer(IMAGE_NEWLINE).input_ids == [1, 3148, 1001, 29901, 29871, 32000, 13, 5618]  # no ▁ after <image>
    keep_word_start_after_special_tokens(tokenizer)
    assert tokenizer(IMAGE_NEWLINE).input_ids == ORIGINAL_IDS


@pytest.mark.parametrize(
    "options",
    [{"task": "caption"}, {"task": "vqa", "instruction": "Which shape is shown?", "choices": ("circle", "square")},
     {"task": "json", "schema": SHAPES_SCHEMA}],
    ids=["caption", "multiple-choice", "json"],
)  # fmt: skip
def test_load_model_feeds_the_original_prompt_ids(loaded, original_llava, options):
    request = GenerationRequest(image=b"", **options)
    user_text = build_instruction(request.task, request.instruction, schema=request.json_schema,
                                  choices=request.choices, unanswerable=request.unanswerable)  # fmt: skip
    expected = original_prompt_ids(original_llava, loaded.tokenizer, user_text)
    fed = loaded.processor(text=[request.prompt], images=[Image.new("RGB", (336, 336))], return_tensors="pt")["input_ids"][0].tolist()
    first = fed.index(32000)
    assert fed[first : first + 576] == [32000] * 576
    assert fed[: first + 1] + fed[first + 576 :] == expected
    assert fed[first + 576 : first + 578] == [29871, 13]  # ▁ <0x0A> after the image
