"""The predictor as clients see it: KServe v1 and v2, health, metrics, limits, bad input, concurrent load."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.backend import GenerationRequest


def metric(base_url: str, name: str, **labels: str) -> float:
    """One sample of the server's /metrics (0 when absent)."""
    for family in text_string_to_metric_families(httpx.get(f"{base_url}/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def test_health_and_readiness(predictor):
    assert httpx.get(f"{predictor.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{predictor.url}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{predictor.url}/v2/models/llava/ready").json() == {"name": "llava", "ready": True}
    assert httpx.get(f"{predictor.url}/v1/models/llava").json() == {"name": "llava", "ready": True}
    assert httpx.get(f"{predictor.url}/v1/models").json() == {"models": ["llava"]}


def test_v1_predict_matches_the_in_process_backend(predictor, tiny_backend, png, b64):
    images = [png("red"), png("blue", (40, 90))]
    body = {"instances": [
        {"image": {"b64": b64(images[0])}, "max_new_tokens": 6},
        {"image": {"b64": b64(images[1])}, "task": "vqa", "instruction": "What colour is it?", "max_new_tokens": 4},
    ]}
    response = httpx.post(f"{predictor.url}/v1/models/llava:predict", json=body, timeout=60)
    assert response.status_code == 200, response.text
    served = response.json()["predictions"]
    local = tiny_backend.generate([
        GenerationRequest(image=images[0], max_new_tokens=6),
        GenerationRequest(image=images[1], task="vqa", instruction="What colour is it?", max_new_tokens=4),
    ])
    for remote, here in zip(served, local):
        assert remote["token_ids"] == here.token_ids and remote["text"] == here.text
        assert remote["tokens"] == here.tokens and remote["finish_reason"] == here.finish_reason == "length"
        assert remote["confidence"] == pytest.approx(here.confidence, abs=1e-4)


def test_v1_json_schema_answers_are_valid_json(predictor, png, b64, shapes_schema):
    body = {"instances": [{"image": {"b64": b64(png("green"))}, "task": "json", "instruction": "What is shown?",
                           "schema": shapes_schema, "max_new_tokens": 80}]}
    [prediction] = httpx.post(f"{predictor.url}/v1/models/llava:predict", json=body, timeout=60).json()["predictions"]
    assert prediction["error"] is None and prediction["finish_reason"] == "stop"
    jsonschema.validate(prediction["json"], shapes_schema)
    assert json.loads(prediction["text"]) == prediction["json"]


def test_v2_infer(predictor, png, b64):
    body = {
        "id": "req-7",
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [2], "data": [b64(png("red")), b64(png("blue"))]},
            {"name": "request", "datatype": "BYTES", "shape": [2],
             "data": [json.dumps({"max_new_tokens": 3}), json.dumps({"task": "vqa", "instruction": "Colour?", "max_new_tokens": 5})]},
        ],
    }
    response = httpx.post(f"{predictor.url}/v2/models/llava/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["id"] == "req-7" and answer["model_name"] == "llava"
    outputs = {o["name"]: o for o in answer["outputs"]}
    results = [json.loads(item) for item in outputs["result"]["data"]]
    assert [r["tokens"] for r in results] == [3, 5]
    assert outputs["text"]["data"] == [r["text"] for r in results] and outputs["text"]["shape"] == [2]
    metadata = httpx.get(f"{predictor.url}/v2/models/llava").json()
    assert [i["name"] for i in metadata["inputs"]] == ["image", "request"]


def predict(url: str, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/llava:predict", timeout=60, **kwargs, **({"json": body} if body is not None else {}))


@pytest.mark.parametrize(
    "make_body, status, fragment",
    [
        (lambda png, b64: {"instances": []}, 400, "non-empty list"),
        (lambda png, b64: {"rows": [1]}, 400, '"instances"'),
        (lambda png, b64: [1, 2], 400, "JSON object"),
        (lambda png, b64: {"instances": [{"image": "abc"}]}, 400, "not a bare string"),
        (lambda png, b64: {"instances": [{"image": {"b64": b64(png())}, "max_new_tokens": 0}]}, 400, "max_new_tokens"),
        (lambda png, b64: {"instances": [{"image": {"b64": b64(png())}, "task": "ocr"}]}, 400, "task"),
        (lambda png, b64: {"instances": [{"image": {"b64": b64(png())}, "colour": "red"}]}, 400, "colour"),
        (lambda png, b64: {"instances": [{"image": {"b64": b64(png())}}] * 33}, 400, "limit is 32"),
        (lambda png, b64: {"instances": [{"image": {"b64": "!!!"}}]}, 400, "not valid base64"),
        (lambda png, b64: {"instances": [{"image": {"b64": b64(b"GIF89a not really")}}]}, 400, "not an image"),
        (lambda png, b64: {"instances": [{"image": {"b64": b64(png("red", (1100, 1000)))}}]}, 400, "pixel limit"),
        (lambda png, b64: {"instances": [{"image": {"b64": b64(png())}, "task": "vqa"}]}, 400, "needs a question"),
        (lambda png, b64: {"instances": [{"image": {"b64": b64(png())}, "task": "json", "schema": {"type": 12}}]}, 400, "invalid JSON schema"),
        (lambda png, b64: {"instances": [{"image": {"b64": b64(png())}, "task": "json", "schema": {"$ref": "http://127.0.0.1:9/s.json"}}]},
         400, "'http://127.0.0.1:9/s.json' points outside the schema"),
    ],
    ids=["empty", "no-instances", "not-an-object", "bare-image-string", "zero-tokens", "unknown-task", "unknown-field",
         "too-many-items", "bad-base64", "not-an-image", "too-many-pixels", "vqa-without-question", "invalid-schema",
         "remote-ref"],
)
def test_bad_v1_requests_get_4xx_with_a_message(predictor, png, b64, make_body, status, fragment):
    response = predict(predictor.url, make_body(png, b64))
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_item_errors_name_each_bad_instance(predictor, png, b64):
    body = {"instances": [
        {"image": {"b64": b64(png())}, "max_new_tokens": 2},
        {"image": {"b64": b64(b"not an image")}},
        {"image": {"b64": b64(png())}, "task": "json", "schema": {"type": "object", "properties": {"a": {"type": "nope"}}}},
    ]}
    response = predict(predictor.url, body)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert [e["index"] for e in errors] == [1, 2]
    assert "not an image" in errors[0]["error"] and "schema" in errors[1]["error"]


def test_transport_level_bad_requests(predictor, png, b64):
    url = predictor.url
    assert predict(url, None, content=b"{not json", headers={"content-type": "application/json"}).status_code == 400
    assert httpx.post(f"{url}/v1/models/nope:predict", json={"instances": [{}]}).status_code == 404
    assert httpx.post(f"{url}/v2/models/llava/infer", content=b"{", headers={"content-type": "application/json"}).status_code in (400, 422)
    missing = httpx.post(f"{url}/v2/models/llava/infer", json={"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["a"]}]})
    assert missing.status_code == 400 and '"image"' in missing.json()["error"]
    too_big = predict(url, {"instances": [{"image": {"b64": "A" * (3 * 1024 * 1024)}}]})
    assert too_big.status_code == 413 and "byte limit" in too_big.json()["error"]
    unload = httpx.post(f"{url}/v2/repository/models/llava/unload")
    assert unload.status_code == 501
    assert httpx.get(f"{url}/v2/models/llava/ready").json()["ready"] is True


def test_concurrent_load_is_batched_with_zero_errors(predictor, png, b64):
    before_count = metric(predictor.url, "llava_batch_size_count")
    before_sum = metric(predictor.url, "llava_batch_size_sum")
    ok_before = metric(predictor.url, "llava_requests_total", route="v1", code="200")
    images = [b64(png(color)) for color in ("red", "green", "blue", "yellow")]

    def one(i: int) -> httpx.Response:
        body = {"instances": [{"image": {"b64": images[i % 4]}, "max_new_tokens": 4}]}
        return httpx.post(f"{predictor.url}/v1/models/llava:predict", json=body, timeout=120)

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(one, range(64)))
    assert [r.status_code for r in responses] == [200] * 64
    assert all(r.json()["predictions"][0]["tokens"] == 4 for r in responses)
    batches = metric(predictor.url, "llava_batch_size_count") - before_count
    items = metric(predictor.url, "llava_batch_size_sum") - before_sum
    assert items == 64 and batches < 64, f"{batches} engine calls for 64 items: no batching happened"
    assert metric(predictor.url, "llava_requests_total", route="v1", code="200") - ok_before == 64
    assert metric(predictor.url, "llava_queue_depth") == 0
    assert metric(predictor.url, "llava_request_latency_seconds_count", route="v1") >= 64
