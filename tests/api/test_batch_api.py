"""The batch API end to end with the stock `openai` client: a real server, a real worker, the demo model.

One server serves every case (it takes seconds to start): the key is enforced, broken files are
400s naming the line, a batch cancelled before any worker runs ends `cancelled` with every
request in the error file, and a batch of JSON and caption requests with bad lines among them
completes with one output line per finished request and one error line per failed one.
"""

from __future__ import annotations

import json
import time

import httpx
import jsonschema
import openai
import pytest
from openai.types import Batch
from openai.types.chat import ChatCompletion

from .conftest import API_KEY, MAX_REQUEST_BYTES, SHAPES_SCHEMA


def _jsonl(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def _wait_final(client: openai.OpenAI, batch_id: str, timeout: float, log) -> Batch:
    deadline = time.monotonic() + timeout
    while (batch := client.batches.retrieve(batch_id)).status not in ("completed", "failed", "cancelled", "expired"):
        assert batch.status in ("validating", "in_progress", "finalizing"), batch.status
        assert time.monotonic() < deadline, f"batch still {batch.status} after {timeout:.0f} s: {batch.request_counts}\n{log()}"
        time.sleep(0.3)
    return batch


def _lines(client: openai.OpenAI, file_id: str) -> dict[str, dict]:
    return {line["custom_id"]: line for line in map(json.loads, client.files.content(file_id).text.splitlines())}


def test_batches_through_the_stock_openai_client(api_server, start_worker, batch_line) -> None:
    client = openai.OpenAI(base_url=api_server.url, api_key=API_KEY, max_retries=0)

    # the key is enforced
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=api_server.url, api_key="wrong", max_retries=0).batches.list()
    assert httpx.get(f"{api_server.url}/jobs").status_code == 401

    # a file that is not JSONL, or over the limit, is a 400 naming the line
    good = json.dumps(batch_line("a", api_server.data_url(0))).encode()
    with pytest.raises(openai.BadRequestError, match="line 2: not valid JSON"):
        client.files.create(file=("broken.jsonl", good + b"\n{not json\n"), purpose="batch")
    with pytest.raises(openai.BadRequestError, match=r"line \d+: the file is over the 200,000-byte limit"):
        client.files.create(file=("big.jsonl", (good + b"\n") * (MAX_REQUEST_BYTES // len(good) + 2)), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("x.jsonl", good), purpose="fine-tune")

    # cancelled before any worker runs: every request ends in the error file
    waiting = client.files.create(file=("wait.jsonl", _jsonl([batch_line(f"w{i}", api_server.data_url(i)) for i in range(3)])), purpose="batch")
    assert (waiting.purpose, waiting.status, waiting.filename) == ("batch", "processed", "wait.jsonl")
    queued = client.batches.create(input_file_id=waiting.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert queued.status == "in_progress" and queued.request_counts.total == 3
    cancelled = client.batches.cancel(queued.id)
    assert cancelled.status == "cancelled" and cancelled.output_file_id is None
    assert (cancelled.request_counts.completed, cancelled.request_counts.failed) == (0, 3)
    assert {k: v["error"]["code"] for k, v in _lines(client, cancelled.error_file_id).items()} == dict.fromkeys(["w0", "w1", "w2"], "batch_cancelled")
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(queued.id)

    # a batch read after its window with work left expires: cancelled, its requests in the error file
    late = client.batches.create(input_file_id=waiting.id, endpoint="/v1/chat/completions", completion_window="24h")
    document = api_server.settings.data_dir / "api" / "batches" / f"{late.id}.json"
    stored = json.loads(document.read_text())
    stored["batch"]["expires_at"] = int(time.time()) - 1
    document.write_text(json.dumps(stored))
    expired = client.batches.retrieve(late.id)
    assert expired.status == "expired" and expired.expired_at and expired.request_counts.failed == 3
    assert {line["error"]["code"] for line in _lines(client, expired.error_file_id).values()} == {"batch_expired"}

    # a mixed batch: JSON (data: URL and allowed path) and captions, with bad lines among them
    images = api_server.images
    lines = [
        batch_line("json-0", api_server.data_url(0), "What shapes are there?", SHAPES_SCHEMA),
        batch_line("json-1", str(images / "1.png"), "What shapes are there?", SHAPES_SCHEMA, logprobs=True),
        batch_line("json-2", (images / "2.png").as_uri(), "What shapes are there?", SHAPES_SCHEMA),
        batch_line("caption-3", api_server.data_url(3), max_tokens=12),
        batch_line("outside", "/etc/hostname", max_tokens=12),
        {"custom_id": "wrong-url", "method": "POST", "url": "/v1/embeddings", "body": {}},
        batch_line("two-images", api_server.data_url(0), max_tokens=12) | {"custom_id": "two-images"},
        {"method": "POST", "url": "/v1/chat/completions", "body": {}},
        batch_line("json-0", api_server.data_url(1), "duplicate custom_id", SHAPES_SCHEMA),
    ]
    lines[6]["body"]["messages"][0]["content"].append({"type": "image_url", "image_url": {"url": api_server.data_url(1)}})
    upload = client.files.create(file=("mixed.jsonl", _jsonl(lines)), purpose="batch")
    assert client.files.retrieve(upload.id).bytes == len(_jsonl(lines))
    assert client.files.content(upload.id).content == _jsonl(lines)
    created = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"team": "shapes"}
    )
    assert created.request_counts.total == len(lines) and created.metadata == {"team": "shapes"}

    worker = start_worker(api_server.settings)
    done = _wait_final(client, created.id, 120, lambda: worker.log.read_text()[-3000:] + api_server.log.read_text()[-2000:])
    assert done.status == "completed" and done.completed_at and done.in_progress_at
    assert (done.request_counts.completed, done.request_counts.failed) == (4, 5)

    output = _lines(client, done.output_file_id)
    assert set(output) == {"json-0", "json-1", "json-2", "caption-3"}
    for custom_id, line in output.items():
        assert line["error"] is None and line["response"]["status_code"] == 200
        completion = ChatCompletion.model_validate(line["response"]["body"])
        answer = completion.choices[0].message.content
        assert completion.choices[0].finish_reason in ("stop", "length") and completion.usage.completion_tokens > 0
        usage = completion.usage  # the prompt's positions: its text and the image's features
        assert usage.prompt_tokens > 36 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        if custom_id.startswith("json"):
            jsonschema.validate(json.loads(answer), SHAPES_SCHEMA)
            if api_server.stack == "sqlite":  # PostgreSQL's JSONB reorders the schema's keys, so the prompt differs from training's
                assert json.loads(answer)["color"] == api_server.scenes[int(custom_id[-1])].colour, answer  # read right 100% of the time
        else:
            assert answer and completion.choices[0].logprobs is None
    assert output["json-1"]["response"]["body"]["choices"][0]["logprobs"]["mean_logprob"] < 0

    errors = _lines(client, done.error_file_id)
    assert errors["outside"]["error"]["code"] == "item_failed" and "outside the allowed roots" in errors["outside"]["error"]["message"]
    assert "only \"method\": \"POST\"" in errors["wrong-url"]["error"]["message"]
    assert "exactly one image_url part, got 2" in errors["two-images"]["error"]["message"]
    assert "custom_id" in errors[None]["error"]["message"]
    assert len(errors) == 5, errors  # and the duplicate json-0 (keyed like the first)

    # the batch became two jobs (JSON, caption), visible to scripts; the batches list pages newest first
    jobs = httpx.get(f"{api_server.url}/jobs", headers={"Authorization": f"Bearer {API_KEY}"}).json()["data"]
    assert sorted(job["task"] for job in jobs if job["name"] == f"openai-batch {created.id}") == ["caption", "json"]
    assert [batch.id for batch in client.batches.list(limit=1)] == [created.id, late.id, queued.id]
    assert client.files.delete(upload.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(upload.id)
