"""OpenAI's Batch file format over labeler jobs: input line -> item, item -> output or error line.

The one source of this format, shared by the batch API (`labeler.api`) and the CLI
(`submit FILE --format openai-batch`, `export JOB --format openai-batch`).

- An input line is `{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}`;
  its body is read by the predictor's own mapping (`engine.openai_api.read_chat`): one user
  message with text and exactly one image, `response_format` `json_schema` (a JSON task),
  `max_tokens`, `temperature`, `top_p`, `seed`, `logprobs`. The image is a `data:` URL
  (written into the store, where the workers read it), an http(s) URL (fetched by the
  workers under the fetch policy) or a path under the allowed roots.
- A job has one set of generation options, so a batch becomes one job per distinct request
  shape (the options without the text; usually one). Each request is an item whose question
  is the text and whose metadata holds the `custom_id`, the batch and the line.
- A line that cannot become a request is refused alone: it goes to the error file and the
  rest of the batch runs. A file that is not JSONL, is too large or holds too many lines is
  refused whole (`BatchFileError`, naming the line).
- Output lines `{"id", "custom_id", "response": {"status_code": 200, "request_id", "body"},
  "error": null}` carry a `chat.completion` body: the prediction's text (the JSON text for
  JSON tasks), its finish reason and token count. Error lines carry `"response": null` and
  `"error": {"code", "message"}` with the item's reason.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from pydantic import ValidationError

from engine.backend import GenerationOptions
from engine.openai_api import ChatCompletionRequest, OpenAIError, data_url_bytes, read_chat
from engine.wire import error_text
from labeler import jobs
from labeler.db import Database
from labeler.exports import Row, iter_rows
from labeler.file_store import FileStore, store_for
from labeler.jobs import JobError, JobSpec
from labeler.models import ItemState
from labeler.service import Labeler

ENDPOINT = "/v1/chat/completions"
_MEDIA_SUFFIX = re.compile(r"^data:image/([a-z0-9.+-]{1,20});")


class BatchFileError(ValueError):
    """The file as a whole cannot be a batch (not JSONL, too large, too many lines); the message names the line."""


@dataclass(frozen=True)
class Request:
    """One input line that becomes an item."""

    line: int
    custom_id: str
    options: GenerationOptions  # the instruction is the request's text
    image: str  # the image_url as given
    logprobs: bool


@dataclass(frozen=True)
class Refused:
    """One input line that cannot run; it fails alone, in the error file."""

    line: int
    custom_id: str | None
    message: str


def check_batch_file(lines: Iterable[bytes], *, max_bytes: int, max_requests: int) -> int:
    """The number of requests in a batch file; `BatchFileError` naming the first line that breaks JSONL or a limit."""
    size = requests = 0
    for number, raw in enumerate(lines, start=1):
        size += len(raw)
        if size > max_bytes:
            raise BatchFileError(f"line {number}: the file is over the {max_bytes:,}-byte limit (LLAVA_LABELER_API__MAX_REQUEST_BYTES)")
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BatchFileError(f"line {number}: not valid JSON ({exc}); a batch file is JSONL, one request per line") from None
        if not isinstance(record, dict):
            raise BatchFileError(f"line {number}: a JSON object is expected, got {type(record).__name__}")
        requests += 1
        if requests > max_requests:
            raise BatchFileError(f"line {number}: more than {max_requests:,} requests (LLAVA_LABELER_API__MAX_REQUESTS)")
    if not requests:
        raise BatchFileError("line 1: the file holds no requests")
    return requests


def parse_line(number: int, raw: bytes) -> Request | Refused:
    """One input line as a request, or refused with the reason."""
    try:
        record = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return Refused(number, None, f"not valid JSON ({exc})")
    if not isinstance(record, dict):
        return Refused(number, None, "a JSON object is expected")
    custom_id = record.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return Refused(number, None, 'needs a "custom_id" (a non-empty string)')
    if record.get("method") != "POST" or record.get("url") != ENDPOINT:
        return Refused(number, custom_id, f'only "method": "POST" with "url": "{ENDPOINT}" is supported')
    try:
        chat = ChatCompletionRequest.model_validate(record.get("body"))
        options, image = read_chat(chat)
    except ValidationError as exc:
        return Refused(number, custom_id, f"invalid body: {error_text(exc)}")
    except OpenAIError as exc:
        return Refused(number, custom_id, exc.message)
    return Request(number, custom_id, options, image, chat.logprobs)


def parse_requests(lines: Iterable[bytes]) -> Iterator[Request | Refused]:
    """Every non-blank line, parsed; a `custom_id` seen before is refused (output lines are matched by it)."""
    seen: set[str] = set()
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        parsed = parse_line(number, raw)
        if isinstance(parsed, Request):
            if parsed.custom_id in seen:
                parsed = Refused(number, parsed.custom_id, f"custom_id {parsed.custom_id!r} appears on an earlier line")
            else:
                seen.add(parsed.custom_id)
        yield parsed


def shape(options: GenerationOptions) -> str:
    """What requests must share to be items of one job: every option but the text."""
    return options.model_dump_json(exclude={"instruction"})


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


@dataclass
class Submitted:
    """What a batch became: its jobs, and the lines refused before any job."""

    batch_id: str
    job_ids: list[int] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    total: int = 0


def submit_batch_lines(
    labeler: Labeler, lines: Iterable[bytes], *, store: FileStore | None = None, batch_id: str | None = None
) -> Submitted:
    """Submit a batch file's lines as jobs (one per request shape), writing manifests and `data:` images under
    `batches/<batch_id>/` in `store` (default: the configured store; a new id). Refused lines are returned,
    not raised: they fail alone. The job names are `openai-batch <batch_id>`."""
    store = store or store_for(labeler.settings)
    batch_id = batch_id or new_batch_id()
    submitted, groups = Submitted(batch_id), {}
    for parsed in parse_requests(lines):
        submitted.total += 1
        if isinstance(parsed, Refused):
            submitted.refused.append(parsed)
            continue
        try:
            entry = _image_entry(parsed, store, batch_id)
        except OpenAIError as exc:
            submitted.refused.append(Refused(parsed.line, parsed.custom_id, exc.message))
            continue
        groups.setdefault(shape(parsed.options), []).append((parsed, entry))
    settings = _with_store_root(labeler, store)
    for number, requests in enumerate(groups.values()):
        first = requests[0][0].options
        spec = JobSpec(**first.model_dump(exclude={"instruction"}))
        try:
            spec.check()
        except JobError as exc:
            submitted.refused.extend(Refused(r.line, r.custom_id, str(exc)) for r, _ in requests)
            continue
        key = f"batches/{batch_id}/manifest-{number}.jsonl"
        store.write(key, b"".join(_manifest_line(r, entry, batch_id) for r, entry in requests))
        job = jobs.submit(labeler.db, labeler.app, settings, store.uri(key), spec, name=f"openai-batch {batch_id}")
        submitted.job_ids.append(job.id)
    return submitted


def _image_entry(request: Request, store: FileStore, batch_id: str) -> str:
    """The manifest's `image` for a request: a `data:` image written into the store (relative to the manifest)."""
    if request.image.startswith("data:"):
        suffix = _MEDIA_SUFFIX.match(request.image)
        relative = f"images/{request.line}.{suffix.group(1) if suffix else 'img'}"
        store.write(f"batches/{batch_id}/{relative}", data_url_bytes(request.image))
        return relative
    if not store.local and "://" not in request.image:
        raise OpenAIError(400, "a local image path needs a local store (LLAVA_LABELER_API__STORE a directory); send a URL")
    return request.image


def _with_store_root(labeler: Labeler, store: FileStore):
    """The labeler's settings with the store among the allowed roots (where the `data:` images are)."""
    roots = labeler.settings.fetch.allowed_roots
    if not store.local or not roots:
        return labeler.settings  # no roots configured: the manifest's own directory, inside the store, is the root
    fetch = labeler.settings.fetch.model_copy(update={"allowed_roots": [*roots, store.root]})
    return labeler.settings.model_copy(update={"fetch": fetch})


def _manifest_line(request: Request, entry: str, batch_id: str) -> bytes:
    metadata = {"custom_id": request.custom_id, "openai_batch": batch_id, "line": request.line, "logprobs": request.logprobs}
    record = {"image": entry, "question": request.options.instruction, "metadata": metadata}
    return json.dumps(record, ensure_ascii=False).encode() + b"\n"


@dataclass(frozen=True)
class Counts:
    """Lines written: requests that finished, requests that failed (refused, failed or cancelled)."""

    completed: int
    failed: int


def write_batch_results(
    db: Database,
    job_ids: Sequence[int],
    output: IO[bytes],
    errors: IO[bytes],
    *,
    refused: Sequence[Refused] = (),
    cancelled_code: str = "batch_cancelled",
) -> Counts:
    """Write the jobs' finished items as output lines and their failed and cancelled items (and the `refused`
    lines) as error lines (a cancelled item's code: `cancelled_code`); items still pending are left out.
    Items of a job not submitted from a batch are named `item-<id>`."""
    completed = failed = 0
    for line in refused:
        errors.write(_jsonl(error_line(f"batch_req_line_{line.line}", line.custom_id, "invalid_request", line.message)))
        failed += 1
    for job_id in job_ids:
        for row in iter_rows(db, job_id):
            item, custom_id = row.item, (row.item.meta or {}).get("custom_id") or f"item-{row.item.id}"
            request_id = f"batch_req_{job_id}_{item.id}"
            if item.status == ItemState.DONE and row.prediction is not None:
                output.write(_jsonl(output_line(request_id, custom_id, row)))
                completed += 1
            elif item.status in (ItemState.FAILED, ItemState.CANCELLED):
                code = "item_failed" if item.status == ItemState.FAILED else cancelled_code
                errors.write(_jsonl(error_line(request_id, custom_id, code, item.error or "cancelled before it ran")))
                failed += 1
    return Counts(completed, failed)


def output_line(request_id: str, custom_id: str, row: Row) -> dict[str, Any]:
    """A finished item as OpenAI's output line with a `chat.completion` body."""
    prediction = row.prediction
    assert prediction is not None
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": prediction.text},
        "logprobs": None,
        "finish_reason": prediction.finish_reason,
    }
    if (row.item.meta or {}).get("logprobs"):
        # per-token log-probabilities are not kept with a prediction; its mean (the confidence) is
        choice["logprobs"] = {"content": [], "mean_logprob": prediction.confidence}
    used = prediction.prompt_tokens or 0  # none recorded before migration 0011
    body = {
        "id": f"chatcmpl-{prediction.id}",
        "object": "chat.completion",
        "created": int(prediction.created_at.timestamp()),
        "model": row.model_version,
        "choices": [choice],
        "usage": {"prompt_tokens": used, "completion_tokens": prediction.tokens, "total_tokens": used + prediction.tokens},
    }
    return {
        "id": request_id,
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": f"req_{prediction.id}", "body": body},
        "error": None,
    }


def error_line(request_id: str, custom_id: str | None, code: str, message: str) -> dict[str, Any]:
    return {"id": request_id, "custom_id": custom_id, "response": None, "error": {"code": code, "message": message}}


def _jsonl(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False).encode() + b"\n"
