"""`llava-labeler serve` on the real-geometry model: v1, v2 and the OpenAI route through the stock `openai` client."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

DATA = Path(__file__).resolve().parents[1] / "data"
SHAPES_SCHEMA = json.loads((DATA / "schemas" / "shapes.json").read_text())
FREE_TEXT = {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]}


def _b64(name: str) -> str:
    return base64.b64encode((DATA / "images" / name).read_bytes()).decode()


def test_v1_answers_every_task_over_the_real_vocabulary(real_predictor):
    body = {"instances": [
        {"image": {"b64": _b64("red-circle.png")}, "task": "caption", "max_new_tokens": 5},
        {"image": {"b64": _b64("green-triangle.png")}, "task": "json", "instruction": "Describe the shapes.",
         "schema": SHAPES_SCHEMA, "max_new_tokens": 64},
    ]}  # fmt: skip
    response = httpx.post(f"{real_predictor.url}/v1/models/llava:predict", json=body, timeout=120)
    assert response.status_code == 200, response.text
    caption, labelled = response.json()["predictions"]
    assert caption["error"] is None and caption["tokens"] == 5 and caption["text"]
    assert labelled["error"] is None and labelled["finish_reason"] == "stop"
    jsonschema.validate(labelled["json"], SHAPES_SCHEMA)


def test_v2_answers_valid_json_or_an_explicit_failure(real_predictor):
    requests = [
        {"task": "json", "instruction": "Describe the shapes.", "schema": SHAPES_SCHEMA, "max_new_tokens": 64},
        {"task": "json", "instruction": "Describe the shapes.", "schema": FREE_TEXT, "max_new_tokens": 6},
    ]
    body = {"inputs": [
        {"name": "image", "datatype": "BYTES", "shape": [2], "data": [_b64("two-blue-squares.png")] * 2},
        {"name": "request", "datatype": "BYTES", "shape": [2], "data": [json.dumps(r) for r in requests]},
    ]}  # fmt: skip
    response = httpx.post(f"{real_predictor.url}/v2/models/llava/infer", json=body, timeout=120)
    assert response.status_code == 200, response.text
    outputs = {output["name"]: output for output in response.json()["outputs"]}
    valid, cut = (json.loads(item) for item in outputs["result"]["data"])
    jsonschema.validate(valid["json"], SHAPES_SCHEMA)
    assert cut["json"] is None and cut["error"] == "length: the JSON answer was cut off at max_new_tokens=6"


@pytest.fixture(scope="module")
def client(real_predictor):
    with openai.OpenAI(base_url=f"{real_predictor.url}/openai/v1", api_key="unused", max_retries=0, timeout=120) as client:
        yield client


def _ask(client: openai.OpenAI, schema: dict, max_tokens: int):
    return client.chat.completions.create(
        model="llava",
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is in the image?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{_b64('red-circle.png')}"}},
        ]}],  # fmt: skip
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}},
        max_tokens=max_tokens,
        temperature=0,
    )


def test_openai_json_schema_answers_json_that_validates(client):
    completion = _ask(client, SHAPES_SCHEMA, 80)
    assert completion.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(completion.choices[0].message.content), SHAPES_SCHEMA)
    assert completion.usage.prompt_tokens > 576  # the image alone takes 576 positions


def test_openai_json_cut_off_says_length_and_an_explosive_schema_is_refused(client):
    cut = _ask(client, FREE_TEXT, 6)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 6
    explosive = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(ab|cd){1,10000}"}}}
    with pytest.raises(openai.BadRequestError, match="repeats 10,000 times, over the limit of 1,000"):
        _ask(client, explosive, 8)


def test_metrics_name_the_out_of_memory_halvings(real_predictor):
    assert "llava_oom_batch_halvings_total 0.0" in httpx.get(f"{real_predictor.url}/metrics").text
