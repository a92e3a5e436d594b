"""The batch format without a server: input lines to engine options, refusals, file checks, result lines."""

from __future__ import annotations

import io
import json

import pytest
from pydantic import SecretStr

from engine.predictor import ExposureError, check_exposure
from labeler.jobs import JobSpec
from labeler.openai_batch import BatchFileError, Refused, Request, check_batch_file, parse_line, parse_requests, shape, write_batch_results
from labeler.service import Labeler
from labeler.settings import ApiSettings

from .conftest import SHAPES_SCHEMA, _make_settings


def _raw(line: dict) -> bytes:
    return json.dumps(line).encode()


def test_a_json_schema_line_becomes_a_json_task(batch_line) -> None:
    parsed = parse_line(1, _raw(batch_line("a", "data:image/png;base64,AAAA", "What shapes?", SHAPES_SCHEMA, temperature=0.5, logprobs=True)))
    assert isinstance(parsed, Request)
    options = parsed.options
    assert (options.task, options.instruction, options.json_schema) == ("json", "What shapes?", SHAPES_SCHEMA)
    assert (options.max_new_tokens, options.temperature, parsed.logprobs, parsed.image) == (48, 0.5, True, "data:image/png;base64,AAAA")


def test_a_line_without_a_schema_is_a_caption_or_a_question_by_its_text(batch_line) -> None:
    caption = parse_line(1, _raw(batch_line("c", "/data/a.png", max_tokens=None, max_completion_tokens=20)))
    question = parse_line(2, _raw(batch_line("q", "https://example.com/a.png", "How many circles?")))
    assert (caption.options.task, caption.options.instruction, caption.options.max_new_tokens) == ("caption", None, 20)
    assert (question.options.task, question.options.instruction, question.options.temperature) == ("caption", "How many circles?", 0.0)
    assert shape(caption.options.model_copy(update={"max_new_tokens": 48})) == shape(question.options)  # one job for both


@pytest.mark.parametrize(
    "line, reason",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "a JSON object is expected"),
        (b'{"method": "POST"}', '"custom_id"'),
        (b'{"custom_id": "x", "method": "GET", "url": "/v1/chat/completions", "body": {}}', '"method": "POST"'),
        (b'{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}', "invalid body: messages"),
    ],
)
def test_a_bad_line_is_refused_with_the_reason(line: bytes, reason: str) -> None:
    refused = parse_line(3, line)
    assert isinstance(refused, Refused) and refused.line == 3 and reason in refused.message


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"stream": True}, "streaming is not supported"),
        ({"n": 2}, "n must be 1"),
        ({"max_tokens": 100_000}, "max_new_tokens"),
        ({"messages": [{"role": "system", "content": "hi"}]}, "exactly one user message"),
    ],
)
def test_requests_llava_cannot_honour_are_refused_as_the_predictor_refuses_them(batch_line, change: dict, reason: str) -> None:
    line = batch_line("x", "/data/a.png")
    line["body"].update(change)
    refused = parse_line(1, _raw(line))
    assert isinstance(refused, Refused) and refused.custom_id == "x" and reason in refused.message


def test_a_repeated_custom_id_is_refused_and_blank_lines_are_skipped(batch_line) -> None:
    lines = [_raw(batch_line("a", "/x.png")), b"\n", _raw(batch_line("a", "/y.png"))]
    first, second = parse_requests(lines)
    assert isinstance(first, Request) and isinstance(second, Refused) and second.line == 3 and "earlier line" in second.message


@pytest.mark.parametrize(
    "content, reason",
    [
        (b'{"a": 1}\n\n{"b": 2\n', "line 3: not valid JSON"),
        (b'{"a": 1}\n"text"\n', "line 2: a JSON object is expected"),
        (b'{"a": 1}\n' * 3, "line 3: more than 2 requests"),
        (b"\n\n", "no requests"),
        (b'{"a": 1}\n' + b'{"a": "' + b"x" * 100 + b'"}\n', "line 2: the file is over the 64-byte limit"),
    ],
)
def test_a_file_that_is_not_a_batch_is_refused_naming_the_line(content: bytes, reason: str) -> None:
    with pytest.raises(BatchFileError, match=reason):
        check_batch_file(io.BytesIO(content), max_bytes=64, max_requests=2)
    assert check_batch_file(io.BytesIO(b'{"a": 1}\n\n{"b": 2}'), max_bytes=64, max_requests=2) == 2


def test_the_api_will_not_bind_beyond_loopback_without_a_key() -> None:
    with pytest.raises(ExposureError, match="LLAVA_LABELER_API__API_KEY"):
        check_exposure(ApiSettings(host="0.0.0.0"), section="API")
    check_exposure(ApiSettings(host="0.0.0.0", api_key=SecretStr("k")), section="API")
    check_exposure(ApiSettings(), section="API")


def test_any_job_exports_as_batch_results(tmp_path, png) -> None:
    """`export JOB --format openai-batch` of a job not submitted as a batch: its items are named item-<id>."""
    (tmp_path / "images").mkdir()
    for i in range(2):
        (tmp_path / "images" / f"{i}.png").write_bytes(png(i))
    labeler = Labeler(_make_settings(tmp_path, tmp_path / "no-model"))
    job = labeler.submit(str(tmp_path / "images"), JobSpec(task="caption"))
    labeler.cancel(job.id)
    output, errors = io.BytesIO(), io.BytesIO()
    refused = [Refused(4, "bad", "not valid JSON")]
    counts = write_batch_results(labeler.db, [job.id], output, errors, refused=refused)
    assert (counts.completed, counts.failed, output.getvalue()) == (0, 3, b"")
    lines = [json.loads(line) for line in errors.getvalue().splitlines()]
    assert [(line["custom_id"], line["error"]["code"], line["response"]) for line in lines] == [
        ("bad", "invalid_request", None),
        *[(f"item-{item_id}", "batch_cancelled", None) for item_id in sorted(int(line["id"].rsplit("_", 1)[1]) for line in lines[1:])],
    ]
