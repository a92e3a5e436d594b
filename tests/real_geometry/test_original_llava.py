"""What the model is fed is what the original LLaVA (haotian-liu/LLaVA, llava-torch 1.2.2.post1) feeds it.

The oracle for prompt ids is `conv_templates["vicuna_v1"]` + `tokenizer_image_token` (the text
split at `<image>`, each chunk tokenized on its own, the image as index -200); the oracle for
pixels is `process_images` with `image_aspect_ratio="pad"` (`expand2square` with the truncated
mean colour, then the CLIP processor) on an image opened as the original opens it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from engine.backend import GenerationRequest
from engine.prompts import IMAGE_TOKEN, build_instruction

SHAPES_SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "data" / "schemas" / "shapes.json").read_text())
# openai/clip-vit-large-patch14-336's preprocessor_config.json, which LLaVA-1.5's vision tower loads.
PUBLISHED_PREPROCESSOR = {
    "crop_size": 336, "do_center_crop": True, "do_normalize": True, "do_resize": True, "resample": 3,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "size": 336,
}  # fmt: skip


def original_prompt_ids(original_llava, tokenizer, user_text: str) -> list[int]:
    """LLaVA-1.5's eval scripts: `<image>\\n` + question as the user turn of vicuna_v1, then `tokenizer_image_token`."""
    conversation = original_llava.conversation.conv_templates["vicuna_v1"].copy()
    conversation.append_message(conversation.roles[0], f"{IMAGE_TOKEN}\n{user_text}")
    conversation.append_message(conversation.roles[1], None)
    ids = original_llava.mm_utils.tokenizer_image_token(conversation.get_prompt(), tokenizer)
    return [tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) if i == original_llava.constants.IMAGE_TOKEN_INDEX else i for i in ids]


@pytest.mark.parametrize(
    "options",
    [
        {"task": "caption"},
        {"task": "caption", "instruction": "Describe the image in detail."},
        {"task": "vqa", "instruction": "What colour is the shape?"},
        {"task": "vqa", "instruction": "Is there a dog?", "unanswerable": True},
        {"task": "vqa", "instruction": "Which shape is shown?", "choices": ("circle", "square", "star")},
        {"task": "json", "schema": SHAPES_SCHEMA},
    ],
    ids=["caption", "caption-instruction", "vqa", "unanswerable", "multiple-choice", "json"],
)
def test_prompt_ids_are_the_originals(real_backend, original_llava, options):
    request = GenerationRequest(image=b"", **options)
    user_text = build_instruction(request.task, request.instruction, schema=request.json_schema,
                                  choices=request.choices, unanswerable=request.unanswerable)  # fmt: skip
    expected = original_prompt_ids(original_llava, real_backend.tokenizer, user_text)
    assert expected.count(32000) == 1 and expected[0] == 1
    # What the backend feeds the model: the processor expands <image> to 576 tokens.
    image = Image.new("RGB", (336, 336))
    fed = real_backend.loaded.processor(text=[request.prompt], images=[image], return_tensors="pt")["input_ids"][0].tolist()
    first = fed.index(32000)
    assert fed[first : first + 576] == [32000] * 576
    assert fed[: first + 1] + fed[first + 576 :] == expected


def _png(width: int, height: int) -> bytes:
    pixels = np.random.default_rng(width * height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("size", [(336, 336), (500, 500), (300, 200), (301, 200), (120, 330)],
                         ids=["336-square", "square", "wide", "wide-odd", "tall"])  # fmt: skip
def test_pixel_values_are_the_originals(real_backend, original_llava, size):
    from transformers import CLIPImageProcessorPil

    data = _png(*size)
    row = real_backend._prepare(0, GenerationRequest(image=data, task="caption"))
    ours = real_backend.loaded.processor(text=[row.request.prompt], images=[row.image], return_tensors="pt")["pixel_values"]
    original = original_llava.mm_utils.process_images(
        [Image.open(io.BytesIO(data)).convert("RGB")],
        CLIPImageProcessorPil(**PUBLISHED_PREPROCESSOR),
        SimpleNamespace(image_aspect_ratio="pad"),
    )
    assert ours.shape == original.shape == (1, 3, 336, 336)
    assert torch.equal(ours, original)
