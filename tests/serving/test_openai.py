"""The OpenAI-compatible routes, driven by the stock `openai` client against the real predictor."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from engine.backend import GenerationRequest


@pytest.fixture()
def client(predictor):
    with openai.OpenAI(base_url=f"{predictor.url}/openai/v1", api_key="unused", max_retries=0, timeout=60) as client:
        yield client


def user(text: str, image_url: str | None) -> list[dict]:
    parts = [{"type": "text", "text": text}]
    if image_url is not None:
        parts.append({"type": "image_url", "image_url": {"url": image_url}})
    return [{"role": "user", "content": parts}]


def data_url(data: bytes, b64) -> str:
    return f"data:image/png;base64,{b64(data)}"


def test_models_list(client):
    [card] = client.models.list().data
    assert card.id == "llava" and card.owned_by == "llava-labeler"


def test_chat_completion_matches_the_engine(client, tiny_backend, png, b64):
    image = png("purple")
    completion = client.chat.completions.create(
        model="llava", messages=user("Describe the picture.", data_url(image, b64)), max_tokens=7, logprobs=True
    )
    [here] = tiny_backend.generate([GenerationRequest(image=image, instruction="Describe the picture.", max_new_tokens=7)])
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == here.text
    assert choice.finish_reason == "length"
    assert [t.logprob for t in choice.logprobs.content] == pytest.approx(here.token_logprobs, abs=1e-4)
    assert len(choice.logprobs.content) == 7 and all(isinstance(t.token, str) for t in choice.logprobs.content)
    assert completion.usage.completion_tokens == 7
    assert completion.usage.prompt_tokens > 64  # the image alone takes 64 positions in the tiny model
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 7


def test_response_format_json_schema_is_enforced(client, png, b64, shapes_schema):
    completion = client.chat.completions.create(
        model="llava",
        messages=user("What is in the image?", data_url(png("orange"), b64)),
        response_format={"type": "json_schema", "json_schema": {"name": "shapes", "schema": shapes_schema, "strict": True}},
        max_tokens=80,
        temperature=0,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content), shapes_schema)


def test_json_object_mode_and_sampling(client, png, b64):
    completion = client.chat.completions.create(
        model="llava",
        messages=user("Answer in JSON.", data_url(png("red"), b64)),
        response_format={"type": "json_object"},
        max_tokens=120,
        temperature=0.8,
        seed=3,
    )
    choice = completion.choices[0]
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content), dict)
    else:
        assert choice.finish_reason == "length" and choice.message.content.startswith("{")


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        (dict(model="gpt-4o"), openai.NotFoundError, "does not exist"),
        (dict(messages=[{"role": "user", "content": "no image here"}]), openai.BadRequestError, "exactly one image_url"),
        (dict(messages="two-images"), openai.BadRequestError, "exactly one image_url"),
        (dict(messages="with-system"), openai.BadRequestError, "exactly one user message"),
        (dict(messages="bad-data-url"), openai.BadRequestError, "not valid base64"),
        (dict(messages="not-an-image"), openai.BadRequestError, "not an image"),
        (dict(messages="corrupt-image"), openai.BadRequestError, "corrupt or truncated image"),
        (dict(messages="ftp-url"), openai.BadRequestError, "data: URL or an http(s) URL"),
        (dict(messages="internal-url"), openai.BadRequestError, "could not fetch the image"),
        (dict(n=2), openai.BadRequestError, "n must be 1"),
        (dict(max_tokens=0), openai.BadRequestError, "max_tokens"),
        (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}),
         openai.BadRequestError, "schema"),
        (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "file:///etc/hostname"}}}),
         openai.BadRequestError, "'file:///etc/hostname' points outside the schema"),
    ],
    ids=["unknown-model", "no-image", "two-images", "system-message", "bad-data-url", "not-an-image", "corrupt-image", "ftp-url",
         "internal-url", "n-2", "zero-max-tokens", "invalid-schema", "file-ref"],
)
def test_bad_requests_are_4xx_openai_errors(client, png, b64, kwargs, error, fragment):
    image = data_url(png(), b64)
    two = user("Compare.", image)
    two[0]["content"].append({"type": "image_url", "image_url": {"url": image}})
    messages = {
        "two-images": two,
        "with-system": [{"role": "system", "content": "Be terse."}, *user("Hi", image)],
        "bad-data-url": user("Hi", "data:image/png;base64,@@@"),
        "not-an-image": user("Hi", data_url(b"plain text", b64)),
        "corrupt-image": user("Hi", data_url(png()[:60], b64)),  # a sound header: only the engine's decode finds it
        "ftp-url": user("Hi", "ftp://example.com/a.png"),
        "internal-url": user("Hi", "http://127.0.0.1:9/a.png"),
    }
    call = {"model": "llava", "messages": user("Hi", image), "max_tokens": 3, **kwargs}
    if isinstance(call["messages"], str):
        call["messages"] = messages[call["messages"]]
    with pytest.raises(error) as raised:
        client.chat.completions.create(**call)
    assert fragment in raised.value.message


def test_malformed_body_is_a_400(predictor):
    response = httpx.post(f"{predictor.url}/openai/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
