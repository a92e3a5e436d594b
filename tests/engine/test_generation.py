"""Batched generation on the in-process backend: identical to one-at-a-time, honest finish reasons and confidence."""

import io

import pytest
import torch
from PIL import Image, ImageDraw

from engine.backend import GenerationRequest
from engine.backends.hf import HFBackend


def image_bytes(color, size=(80, 48), shape="circle") -> bytes:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    (draw.ellipse if shape == "circle" else draw.rectangle)((10, 8, 40, 38), fill=color)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


REQUESTS = [
    GenerationRequest(image=image_bytes("red"), task="caption", max_new_tokens=12),
    GenerationRequest(image=image_bytes("blue", (40, 90)), task="vqa", instruction="What colour is it?", max_new_tokens=6),
    GenerationRequest(
        image=image_bytes("green", shape="square"),
        task="vqa",
        instruction="Which shape is shown in the middle of this picture?",
        choices=("circle", "square", "star"),
        max_new_tokens=9,
    ),
    GenerationRequest(image=image_bytes("yellow"), task="caption", instruction="Describe the picture.", max_new_tokens=15),
]


@pytest.fixture()
def boosted(tiny_model_dir):
    """A backend whose LM head adds a large bias to chosen token ids (hooks are removed afterwards)."""
    backend = HFBackend.load(tiny_model_dir)
    handles = []

    def boost(token_ids, amount=1e4):
        def hook(module, inputs, output):
            output[..., token_ids] += amount
            return output

        handles.append(backend.loaded.model.get_output_embeddings().register_forward_hook(hook))
        return backend

    yield boost
    for handle in handles:
        handle.remove()


def test_greedy_batch_is_token_for_token_identical_to_one_at_a_time(tiny_backend):
    batched = tiny_backend.generate(REQUESTS)
    for request, together in zip(REQUESTS, batched):
        alone = tiny_backend.generate([request])[0]
        assert together.text == alone.text
        assert together.tokens == alone.tokens == len(together.token_logprobs)
        assert together.token_logprobs == pytest.approx(alone.token_logprobs, abs=1e-4)
        # each row's own prompt length, not the batch's padded one: text tokens plus the image's features
        assert together.prompt_tokens == alone.prompt_tokens == tiny_backend.prompt_tokens(request.prompt)
    assert len({result.prompt_tokens for result in batched}) > 1, "prompts of different lengths in the batch"


def test_per_request_limits_and_length_finish(tiny_backend):
    results = tiny_backend.generate(REQUESTS)
    for request, result in zip(REQUESTS, results):
        assert result.error is None
        assert result.tokens <= request.max_new_tokens
        if result.finish_reason == "length":
            assert result.tokens == request.max_new_tokens


def test_confidence_is_the_mean_log_probability_of_the_chosen_tokens(tiny_backend):
    request = REQUESTS[0]
    result = tiny_backend.generate([request])[0]
    assert result.confidence == pytest.approx(sum(result.token_logprobs) / len(result.token_logprobs))
    assert all(lp <= 0 for lp in result.token_logprobs)
    # The first token's log-probability, recomputed with a plain forward pass over the prompt.
    loaded = tiny_backend.loaded
    image = tiny_backend._prepare(0, request).image
    inputs = loaded.processor(text=[request.prompt], images=[image], return_tensors="pt")
    with torch.inference_mode():
        logits = loaded.model(**inputs).logits[0, -1]
    assert result.token_logprobs[0] == pytest.approx(float(torch.log_softmax(logits, -1).max()), abs=1e-4)


def test_stop_finish_when_the_model_ends_its_answer(boosted, tiny_backend):
    backend = boosted([tiny_backend.eos_id])
    result = backend.generate([REQUESTS[0]])[0]
    assert (result.finish_reason, result.tokens, result.text) == ("stop", 1, "")
    assert result.confidence == pytest.approx(0.0, abs=1e-3)


def test_special_tokens_are_never_generated(boosted, tiny_backend):
    image_token = tiny_backend.loaded.model.config.image_token_index
    pad = tiny_backend.tokenizer.pad_token_id
    backend = boosted([image_token, pad])
    result = backend.generate([REQUESTS[0]])[0]
    assert result.tokens == REQUESTS[0].max_new_tokens
    assert "<image>" not in result.text and "<pad>" not in result.text


def test_a_bad_image_fails_only_its_own_item(tiny_backend):
    batch = [REQUESTS[0], GenerationRequest(image=b"GIF89a-not-really"), REQUESTS[1]]
    results = tiny_backend.generate(batch)
    assert results[1].error.startswith("corrupt or truncated image") or results[1].error.startswith("not an image")
    assert results[1].finish_reason == "error"
    assert results[0].error is None and results[2].error is None
    assert results[0].text == tiny_backend.generate([REQUESTS[0]])[0].text


def test_sampling_is_reproducible_by_seed_and_differs_from_greedy(tiny_backend):
    def sample(seed):
        requests = [
            GenerationRequest(image=r.image, task=r.task, instruction=r.instruction, choices=r.choices,
                              max_new_tokens=10, temperature=1.0, top_p=0.95, seed=seed)
            for r in REQUESTS
        ]
        return [r.text for r in tiny_backend.generate(requests)]

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
    greedy = [r.text for r in tiny_backend.generate([GenerationRequest(image=r.image, task=r.task, instruction=r.instruction, choices=r.choices, max_new_tokens=10) for r in REQUESTS])]
    assert sample(1) != greedy


def test_mixed_sampling_settings_in_one_batch_keep_greedy_rows_exact(tiny_backend):
    sampled = GenerationRequest(image=REQUESTS[0].image, temperature=0.8, seed=3, max_new_tokens=8)
    results = tiny_backend.generate([REQUESTS[1], sampled, REQUESTS[2]])
    assert results[0].text == tiny_backend.generate([REQUESTS[1]])[0].text
    assert results[2].text == tiny_backend.generate([REQUESTS[2]])[0].text
    assert results[1].tokens == 8 or results[1].finish_reason == "stop"


def test_request_arguments_are_checked():
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationRequest(image=b"x", max_new_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        GenerationRequest(image=b"x", top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        GenerationRequest(image=b"x", temperature=-1)
