"""Re-ask on truncation: a cut-off JSON answer is asked once more with the schema's budget (or twice its own),
then succeeds or fails with both budgets named; a JSON job's default budget is its schema's bound."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from engine.backend import DEFAULT_MAX_NEW_TOKENS, GenerationRequest, GenerationResult
from engine.schema_budget import BYTES_PER_CHAR, END_TOKENS, json_token_bound, reask_budget
from engine.structured import parse_and_validate
from labeler.batches import BatchProcessor
from labeler.jobs import JobSpec
from labeler.models import Prediction
from labeler.service import Labeler
from tests.labeler.test_jobs import assert_consistent, drain

SHAPES_SCHEMA = json.loads((Path(__file__).parents[1] / "data" / "schemas" / "shapes.json").read_text())
SHAPES_BOUND = 76  # {"shape": "triangle", "color": "yellow", "count": 4, "position": "center"} and 2
FREE_TEXT = {"type": "object", "properties": {"note": {"type": "string"}}, "required": ["note"]}


class Recording:
    """The real backend, noting each call's budgets: a re-ask is a second call with larger ones. One call
    at a time, as a worker's batches in flight share their engine."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.model_id = backend.model_id
        self.calls: list[list[int]] = []
        self.lock = threading.Lock()

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        with self.lock:
            self.calls.append([request.max_new_tokens for request in requests])
            return self.backend.generate(requests)

    @property
    def generated(self) -> int:
        return sum(map(len, self.calls))


def _spelled(value) -> int:
    return len(json.dumps(value, separators=(", ", ": "), ensure_ascii=False).encode())


LONGEST_TAGS = {"tags": ["bb", "bb", "bb"], "ok": False, "n": None}
TAGS = {
    "type": "object",
    "properties": {
        "tags": {"type": "array", "items": {"enum": ["a", "bb"]}, "maxItems": 3},
        "ok": {"type": "boolean"},
        "n": {"type": ["integer", "null"], "minimum": -5, "maximum": 100},
    },
}


@pytest.mark.parametrize(
    "schema, bound",
    [
        (SHAPES_SCHEMA, _spelled({"shape": "triangle", "color": "yellow", "count": 4, "position": "center"}) + END_TOKENS),
        (TAGS, _spelled(LONGEST_TAGS) + END_TOKENS),
        (
            {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10}}},
            _spelled({"name": ""}) + 10 * BYTES_PER_CHAR + END_TOKENS,
        ),
        (
            {"$defs": {"c": {"const": "x"}}, "type": "array", "items": {"$ref": "#/$defs/c"}, "maxItems": 2},
            _spelled(["x", "x"]) + END_TOKENS,
        ),
        ({"anyOf": [{"type": "boolean"}, {"enum": [12345678]}]}, 8 + END_TOKENS),
        (FREE_TEXT, None),  # a string without maxLength
        ({"type": "object", "properties": {"p": {"type": "number", "minimum": 0, "maximum": 1}}}, None),  # any count of digits
        ({"type": "array", "items": {"type": "boolean"}}, None),  # no maxItems
        ({"type": "object", "properties": {"a": {"type": "boolean"}}, "additionalProperties": True}, None),
        ({"$defs": {"n": {"type": "array", "items": {"$ref": "#/$defs/n"}, "maxItems": 1}}, "$ref": "#/$defs/n"}, None),  # recursive
    ],
)
def test_schema_token_bound(schema, bound) -> None:
    assert json_token_bound(schema) == bound
    assert SHAPES_BOUND == json_token_bound(SHAPES_SCHEMA)


def test_reask_budget_is_the_bound_else_double_within_the_cap() -> None:
    assert reask_budget(SHAPES_SCHEMA, used=3, cap=1024) == SHAPES_BOUND
    assert reask_budget(SHAPES_SCHEMA, used=SHAPES_BOUND, cap=1024) == 2 * SHAPES_BOUND  # the bound did not hold: double
    assert reask_budget(FREE_TEXT, used=100, cap=1024) == 200
    assert reask_budget(FREE_TEXT, used=700, cap=1024) == 1024
    assert reask_budget(FREE_TEXT, used=1024, cap=1024) is None  # nothing larger to ask with: the item fails
    assert reask_budget(SHAPES_SCHEMA, used=3, cap=0) is None  # re-asking off


def test_the_bound_holds_for_a_tokenizer(tiny_backend) -> None:
    """A token is at least a byte: the longest answer, as the model's tokenizer spells it, fits its bound."""
    tokenizer = tiny_backend.tokenizer
    longest = {"shape": "triangle", "color": "yellow", "count": 4, "position": "center"}
    text = " " + json.dumps(longest, separators=(", ", ": "))
    assert len(tokenizer(text, add_special_tokens=False).input_ids) + 1 <= SHAPES_BOUND


def test_a_json_job_budget_defaults_to_its_schema_bound() -> None:
    assert JobSpec(task="json", schema=SHAPES_SCHEMA).max_new_tokens == SHAPES_BOUND
    assert JobSpec(task="json", json_schema=SHAPES_SCHEMA, max_new_tokens=9).max_new_tokens == 9  # given: kept
    assert JobSpec(task="json", schema=FREE_TEXT).max_new_tokens == DEFAULT_MAX_NEW_TOKENS  # unbounded
    assert JobSpec(task="caption").max_new_tokens == DEFAULT_MAX_NEW_TOKENS


def _job(labeler_settings, tiny_backend, folder: Path, spec: JobSpec, **settings):
    labeler = Labeler(labeler_settings(batch_size=8, **settings))
    backend = Recording(tiny_backend)
    job = labeler.submit(f"{folder}/good-*.png", spec)
    drain(labeler, BatchProcessor(labeler.db, labeler.settings, lambda: backend), job.id, batch=8)
    assert_consistent(labeler.db, job.id)
    return labeler, backend, labeler.status(job.id)


def test_a_cut_off_answer_is_asked_again_with_the_schema_bound_and_succeeds(labeler_settings, tiny_backend, mixed_folder) -> None:
    folder, _ = mixed_folder
    spec = JobSpec(task="json", instruction="What shapes are there?", schema=SHAPES_SCHEMA, max_new_tokens=3)
    labeler, backend, status = _job(labeler_settings, tiny_backend, folder, spec)
    assert backend.calls == [[3] * 5, [SHAPES_BOUND] * 5], "one re-ask, all five at the schema's bound"
    assert (status.done, status.failed, status.reasks) == (5, 0, 5)
    assert status.to_dict()["reasks"] == 5
    with labeler.db.read() as session:
        predictions = session.query(Prediction).filter_by(job_id=status.id).all()
    for prediction in predictions:
        assert prediction.finish_reason == "stop" and 3 < prediction.tokens <= SHAPES_BOUND
        assert parse_and_validate(prediction.text, SHAPES_SCHEMA) == (prediction.output_json, None)


def test_an_answer_cut_off_again_fails_naming_both_budgets(labeler_settings, tiny_backend, mixed_folder) -> None:
    folder, _ = mixed_folder
    spec = JobSpec(task="json", schema=SHAPES_SCHEMA, max_new_tokens=3)
    labeler, backend, status = _job(labeler_settings, tiny_backend, folder, spec, max_reask_tokens=5)
    assert backend.calls == [[3] * 5, [5] * 5], "asked again once, at the cap"
    assert (status.done, status.failed, status.reasks) == (0, 5, 5)
    reason = "length: the JSON answer was cut off at max_new_tokens=5 (asked again: first cut off at max_new_tokens=3)"
    assert [item.error for item in labeler.failed_items(status.id)] == [reason] * 5


def test_an_unbounded_schema_is_asked_again_with_twice_the_budget(labeler_settings, tiny_backend, mixed_folder) -> None:
    folder, _ = mixed_folder
    labeler, backend, status = _job(labeler_settings, tiny_backend, folder, JobSpec(task="json", schema=FREE_TEXT, max_new_tokens=3))
    assert backend.calls == [[3] * 5, [6] * 5]
    assert status.reasks == 5 and status.done + status.failed == 5
    for item in labeler.failed_items(status.id):
        assert item.error.endswith("cut off at max_new_tokens=6 (asked again: first cut off at max_new_tokens=3)")


def test_an_answer_within_the_default_budget_is_asked_once(labeler_settings, tiny_backend, mixed_folder) -> None:
    folder, _ = mixed_folder
    labeler, backend, status = _job(labeler_settings, tiny_backend, folder, JobSpec(task="json", schema=SHAPES_SCHEMA))
    assert backend.calls == [[SHAPES_BOUND] * 5], "the schema's bound never cuts an answer off"
    assert (status.done, status.reasks) == (5, 0)
