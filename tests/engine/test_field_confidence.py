"""Per-field confidence: each JSON field's value tokens, found through the tokenizer's own decoding.

Checked on the real LLaMA tokenizer (sentencepiece `▁`, byte fallback for characters outside
its vocabulary) and on the demo model's byte-level BPE, with log-probs chosen so every
field's mean is known; then end to end through a backend and over the wire.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from engine.backend import GenerationRequest
from engine.field_confidence import field_confidence, token_spans, value_spans
from engine.llama_tokenizer import fetch_llama_tokenizer
from engine.wire import result_from_wire

REPO = Path(__file__).resolve().parents[2]
ANSWER = {"shape": "círcle ☃", "count": 3, "tags": ["a", "", True, None], "o": {"x/y": -1.5e3}}
SCHEMA = json.loads((REPO / "tests" / "data" / "schemas" / "shapes.json").read_text())


@pytest.fixture(scope="module", params=["llama", "demo"])
def tokenizer(request):
    """The real LLaMA tokenizer (rebuilt from npm into build/llama-tokenizer, as tests/real_geometry does) or the demo model's."""
    where = fetch_llama_tokenizer(REPO / "build" / "llama-tokenizer") if request.param == "llama" else REPO / "training" / "demo_model"
    return AutoTokenizer.from_pretrained(str(where))


def _encode(tokenizer, value) -> tuple[str, list[int]]:
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return text, tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]


def test_value_spans_are_leaf_contents_keyed_by_json_pointer() -> None:
    text = '{"a": "xy", "b/c": [1, -2.5e3, true, null, ""], "d": {"e~": false}}'
    spans = value_spans(text)
    assert {pointer: text[start:end] for pointer, (start, end) in spans.items()} == {
        "/a": "xy", "/b~1c/0": "1", "/b~1c/1": "-2.5e3", "/b~1c/2": "true", "/b~1c/3": "null", "/b~1c/4": '""', "/d/e~0": "false",
    }  # fmt: skip
    with pytest.raises(ValueError, match="not JSON"):
        value_spans('{"a": nope}')


def test_token_spans_cover_the_text_and_share_byte_fallback_characters(tokenizer) -> None:
    text, ids = _encode(tokenizer, ANSWER)
    decoded, spans = token_spans(ids, tokenizer)
    assert decoded == text and len(spans) == len(ids)
    assert all(spans[i][0] <= spans[i][1] for i in range(len(spans)))
    pieces = [decoded[start:end] for i, (start, end) in enumerate(spans) if i == 0 or spans[i - 1] != spans[i]]
    assert "".join(pieces) == text, "consecutive distinct spans tile the text"
    snowman = [i for i, (start, end) in enumerate(spans) if "☃" in decoded[start:end]]
    assert len(snowman) == 3 and len({spans[i] for i in snowman}) == 1, "the snowman's three UTF-8 bytes share its span"


def test_each_field_is_the_mean_of_its_value_tokens(tokenizer) -> None:
    text, ids = _encode(tokenizer, ANSWER)
    _, spans = token_spans(ids, tokenizer)
    value = value_spans(text)
    logprobs = [-0.01] * len(ids)
    count = [i for i, (start, end) in enumerate(spans) if start < value["/count"][1] and end > value["/count"][0]]
    for i in count:
        logprobs[i] = -2.0
    shape = [i for i, (start, end) in enumerate(spans) if start < value["/shape"][1] and end > value["/shape"][0]]
    logprobs[shape[0]] = -0.5
    got = field_confidence(ids, logprobs, tokenizer)
    assert got is not None and set(got["fields"]) == {"/shape", "/count", "/tags/0", "/tags/1", "/tags/2", "/tags/3", "/o/x~1y"}
    assert got["weakest"] == "/count" and got["weakest_logprob"] == pytest.approx(-2.0)
    assert got["fields"]["/shape"] == pytest.approx((-0.5 - 0.01 * (len(shape) - 1)) / len(shape))
    snowman = {i for i, (start, end) in enumerate(spans) if "☃" in text[start:end]}
    assert snowman <= set(shape), "every byte piece of the snowman counts for the shape"
    assert got["fields"]["/tags/2"] == pytest.approx(-0.01)


def test_text_that_is_not_json_has_no_field_confidence(tokenizer) -> None:
    ids = tokenizer("a red circle", add_special_tokens=False).input_ids
    assert field_confidence(ids, [-0.1] * len(ids), tokenizer) is None


def test_a_backend_result_carries_field_confidence_over_the_wire(tiny_backend, tmp_path: Path) -> None:
    from PIL import Image

    image = tmp_path / "red.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    result = tiny_backend.generate([GenerationRequest(image=image, task="json", json_schema=SCHEMA, max_new_tokens=128)])[0]
    assert result.ok, result.error
    assert set(result.field_confidence["fields"]) == {f"/{key}" for key in result.json}
    assert result.field_confidence["weakest_logprob"] == min(result.field_confidence["fields"].values()) <= 0.0
    assert result_from_wire(json.loads(json.dumps(result.to_dict(with_logprobs=True)))) == result
