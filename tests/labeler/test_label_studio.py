"""Label Studio both ways: configs from a job's schema, and a round trip through files in Label Studio's own formats.

The export file Label Studio would give back is built here as its JSON export writes one
(tasks renumbered, our `data` kept, `annotations` with `result`, `completed_by`,
`was_cancelled`, `created_at`/`updated_at`), then read by `llava-labeler import-reviews`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from entrypoints.cli.main import app
from entrypoints.settings import Settings, get_settings
from labeler import jobs, label_studio, retrain_data
from labeler.batches import BatchProcessor
from labeler.jobs import JobSpec
from labeler.label_studio import LabelStudioError
from labeler.models import Prediction, Review
from labeler.service import Labeler

SHAPES_SCHEMA = json.loads((Path(__file__).parents[1] / "data" / "schemas" / "shapes.json").read_text())
RICH_SCHEMA = {
    "type": "object",
    "properties": {
        "shape": {"type": "string", "enum": ["circle", "square"]},
        "count": {"type": "integer", "minimum": 1, "maximum": 4},
        "size": {"type": "object", "properties": {"ratio": {"type": "number"}, "unit": {"type": "string"}}},
        "tags": {"type": "array", "items": {"type": "string"}},
        "filled": {"type": "boolean"},
        "level": {"enum": [1, 2, None]},
    },
    "required": ["shape", "count"],
}
ALICE = {"id": 1, "email": "alice@example.com", "first_name": "", "last_name": ""}


def test_the_config_has_one_control_per_schema_leaf() -> None:
    config = ElementTree.fromstring(label_studio.config("json", RICH_SCHEMA))
    controls = {c.get("name"): c for c in config if c.get("toName") == "image"}
    assert {name: c.tag for name, c in controls.items()} == {
        "shape": "Choices", "count": "Number", "size.ratio": "Number", "size.unit": "TextArea",
        "tags": "TextArea", "filled": "Choices", "level": "Choices",
    }  # fmt: skip
    assert [c.get("value") for c in controls["shape"]] == ["circle", "square"] and controls["shape"].get("choice") == "single"
    assert [c.get("value") for c in controls["level"]] == ["1", "2", "null"]
    assert [c.get("value") for c in controls["filled"]] == ["true", "false"]
    assert (controls["count"].get("min"), controls["count"].get("max"), controls["count"].get("step")) == ("1", "4", "1")
    assert controls["size.ratio"].get("step") == "0.001" and controls["size.ratio"].get("min") is None
    assert [h.get("value") for h in config if h.tag == "Header"][0] == "$question"
    caption = ElementTree.fromstring(label_studio.config("caption", None))
    assert [(c.tag, c.get("name")) for c in caption][-1] == ("TextArea", "answer")
    clash = {"type": "object", "properties": {"a.b": {"type": "string"}, "a": {"type": "object", "properties": {"b": {"type": "string"}}}}}
    with pytest.raises(LabelStudioError, match=r"property paths that collide as control names: \['a.b', 'a.b'\]"):
        label_studio.config("json", clash)


def test_result_entries_read_back_to_the_same_answer() -> None:
    found = label_studio.fields("json", RICH_SCHEMA)
    output = {"shape": "square", "count": 3, "size": {"ratio": 0.5, "unit": "cm"}, "tags": ["a", "b"], "filled": False, "level": None}
    entries = label_studio.result(found, output, "p7")
    by_name = {e["from_name"]: e for e in entries}
    assert by_name["shape"] == {"id": "p7-0", "from_name": "shape", "to_name": "image", "type": "choices", "value": {"choices": ["square"]}}
    assert by_name["count"]["value"] == {"number": 3} and by_name["count"]["type"] == "number"
    assert by_name["size.unit"]["value"] == {"text": ["cm"]} and by_name["tags"]["value"] == {"text": ['["a", "b"]']}
    assert label_studio.answer(found, entries) == output
    partial = {"shape": "circle", "count": 1}  # leaves the model left out get no entry, and come back absent
    assert label_studio.answer(found, label_studio.result(found, partial, "p8")) == partial
    number = {"from_name": "count", "value": {"number": 2.0}}
    assert label_studio.answer(found, [number]) == {"count": 2} and isinstance(label_studio.answer(found, [number])["count"], int)
    text = label_studio.fields("caption", None)
    assert label_studio.answer(text, label_studio.result(text, "a red circle", "p9")) == "a red circle"
    for entries, message in (
        ([{"from_name": "colour", "value": {"text": ["x"]}}], "'colour', which is not a control"),
        ([{"from_name": "shape", "value": {"choices": ["hexagon"]}}], r"'shape': expected one of \['circle', 'square'\]"),
        ([{"from_name": "tags", "value": {"text": ["[1,"]}}], "'tags': the text is not valid JSON"),
        ([{"from_name": "count", "value": {"text": ["3"]}}], "'count' has no value.number"),
    ):
        with pytest.raises(LabelStudioError, match=message):
            label_studio.answer(found, entries)


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request, labeler_settings) -> Settings:
    """This test's settings, on SQLite or PostgreSQL."""
    return labeler_settings(database_url=request.getfixturevalue("pg_database") if request.param == "postgresql" else None)


@pytest.fixture
def cli(settings: Settings) -> Callable[..., tuple[int, str]]:
    """cli(*args) -> (exit code, output): the CLI as a user runs it, on the same database as `settings`."""
    env = {f"LLAVA_LABELER_{key.upper()}": str(getattr(settings, key)) for key in ("data_dir", "database_url", "broker_url")}

    def invoke(*args: str) -> tuple[int, str]:
        get_settings.cache_clear()  # read from `env`, not from what an earlier test left cached
        result = CliRunner().invoke(app, list(args), env=env)
        get_settings.cache_clear()
        return result.exit_code, result.output

    return invoke


@pytest.fixture
def images(tmp_path: Path, png) -> Path:
    """A folder of three images."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        (folder / f"shape-{i}.png").write_bytes(png(i))
    return folder


def _finished_job(labeler: Labeler, backend, images: Path, spec: JobSpec) -> int:
    job = labeler.submit(str(images), spec)
    processor = BatchProcessor(labeler.db, labeler.settings, lambda: backend)
    assert processor.process(job.id, list(jobs.pending_item_ids(labeler.db, job.id))).done == 3
    return job.id


def _annotation(result: list[dict[str, Any]], author: Any, at: datetime, *, cancelled: bool = False) -> dict[str, Any]:
    """An annotation as Label Studio's JSON export writes it."""
    stamp = at.isoformat().replace("+00:00", "Z")
    return {
        "id": int(at.timestamp() * 1000) % 10**9, "completed_by": author, "result": copy.deepcopy(result),
        "was_cancelled": cancelled, "ground_truth": False, "created_at": stamp, "updated_at": stamp,
        "lead_time": 4.2, "prediction": {}, "result_count": len(result), "task": 0,
    }  # fmt: skip


def _as_label_studio_exports(tasks: list[dict[str, Any]], first_id: int) -> list[dict[str, Any]]:
    """The imported tasks as Label Studio keeps them: its own ids, our data, predictions, no annotations yet."""
    return [
        {"id": first_id + n, "data": task["data"], "meta": {}, "annotations": [], "predictions": task["predictions"],
         "project": 3, "created_at": "2026-12-05T10:00:00.000000Z", "updated_at": "2026-12-05T10:00:00.000000Z"}
        for n, task in enumerate(tasks)
    ]  # fmt: skip


def _edited(result: list[dict[str, Any]], name: str, value: dict[str, Any]) -> list[dict[str, Any]]:
    changed = copy.deepcopy(result)
    next(entry for entry in changed if entry["from_name"] == name)["value"] = value
    return changed


def test_label_studio_round_trip(settings: Settings, tiny_backend, images: Path, tmp_path: Path, cli) -> None:
    labeler = Labeler(settings)
    shapes = _finished_job(labeler, tiny_backend, images, JobSpec(task="json", schema=SHAPES_SCHEMA, max_new_tokens=96))
    captions = _finished_job(labeler, tiny_backend, images, JobSpec(task="caption", max_new_tokens=5))
    exported = {}
    for job_id in (shapes, captions):
        code, out = cli("export", str(job_id), "--format", "label-studio", "--out", str(tmp_path / f"job-{job_id}.label-studio.json"),
                        "--image-root", str(images), "--image-url-prefix", "/data/local-files/?d=")  # fmt: skip
        assert code == 0 and f"and {tmp_path / f'job-{job_id}.label-studio.xml'}" in out, out
        exported[job_id] = json.loads((tmp_path / f"job-{job_id}.label-studio.json").read_text())
    assert sorted(t["data"]["image"] for t in exported[shapes]) == [f"/data/local-files/?d=shape-{i}.png" for i in range(3)]

    now = datetime.now(UTC)
    earlier = now - timedelta(hours=1)
    # The JSON job: alice accepts one, corrects the colour of another, skips the third; a task of the caption job strays in.
    ls_shapes = _as_label_studio_exports(exported[shapes], 101)
    keep, fix, skip = ls_shapes
    keep["annotations"] = [_annotation(keep["predictions"][0]["result"], ALICE, earlier)]
    new_colour = "purple" if _predicted(labeler, fix["data"]["prediction_id"])["color"] != "purple" else "green"
    fix["annotations"] = [_annotation(_edited(fix["predictions"][0]["result"], "color", {"choices": [new_colour]}), ALICE, earlier)]
    skip["annotations"] = [_annotation([], ALICE, earlier, cancelled=True)]
    stray = _as_label_studio_exports(exported[captions][:1], 200)[0]
    stray["annotations"] = [_annotation(stray["predictions"][0]["result"], ALICE, earlier)]
    shapes_file = tmp_path / "project-3-at-2026-12-05.json"
    shapes_file.write_text(json.dumps([*ls_shapes, stray]))
    # The caption job: user 7 (no email in the export) accepts one; edits one twice (the later annotation wins); one is untouched.
    ls_captions = _as_label_studio_exports(exported[captions], 301)
    first, second, _ = ls_captions
    first["annotations"] = [_annotation(first["predictions"][0]["result"], 7, earlier)]
    second["annotations"] = [
        _annotation(_edited(second["predictions"][0]["result"], "answer", {"text": ["a red circle"]}), 7, earlier),
        _annotation(_edited(second["predictions"][0]["result"], "answer", {"text": ["a red circle on noise"]}), 7, earlier + timedelta(minutes=5)),
    ]  # fmt: skip
    captions_file = tmp_path / "captions-export.json"
    captions_file.write_text(json.dumps(ls_captions))

    code, out = cli("import-reviews", str(shapes), str(shapes_file), "--format", "label-studio")
    assert code == 0, out
    assert out.splitlines()[0] == "1 accepted, 1 edited, 0 unchanged, 1 skipped (no annotation or cancelled), 1 unknown, 0 invalid"
    assert f"task 200: item {stray['data']['item_id']} belongs to job {captions}, not job {shapes}" in out
    assert cli("import-reviews", str(captions), str(captions_file))[1].startswith("1 accepted, 1 edited, 0 unchanged, 1 skipped")

    def reviews(job_id: int) -> dict[int, tuple[str, Any, str]]:
        with labeler.db.read() as session:
            rows = session.execute(select(Prediction.item_id, Review).join(Review, Review.prediction_id == Prediction.id).where(Prediction.job_id == job_id))
            return {item_id: (r.decision, r.output, r.reviewer) for item_id, r in rows}  # fmt: skip

    fixed = {**_predicted(labeler, fix["data"]["prediction_id"]), "color": new_colour}
    assert reviews(shapes) == {
        keep["data"]["item_id"]: ("accept", None, "alice@example.com"),
        fix["data"]["item_id"]: ("edit", fixed, "alice@example.com"),
    }
    assert reviews(captions) == {
        first["data"]["item_id"]: ("accept", None, "label-studio:7"),
        second["data"]["item_id"]: ("edit", "a red circle on noise", "label-studio:7"),
    }
    # Importing the same files again records nothing new.
    before = reviews(shapes), reviews(captions)
    assert cli("import-reviews", str(shapes), str(shapes_file))[1].startswith("0 accepted, 0 edited, 2 unchanged, 1 skipped")
    assert cli("import-reviews", str(captions), str(captions_file))[1].startswith("0 accepted, 0 edited, 2 unchanged")
    assert (reviews(shapes), reviews(captions)) == before
    # A later annotation of the same task supersedes; a console decision made after an annotation stands.
    keep["annotations"].append(_annotation(_edited(keep["predictions"][0]["result"], "count", {"number": 4}), ALICE, datetime.now(UTC)))
    shapes_file.write_text(json.dumps([*ls_shapes, stray]))
    assert cli("import-reviews", str(shapes), str(shapes_file))[1].startswith("0 accepted, 1 edited, 1 unchanged")
    assert reviews(shapes)[keep["data"]["item_id"]][1]["count"] == 4
    labeler.record_review(first["data"]["prediction_id"], "bob", "reject")
    assert cli("import-reviews", str(captions), str(captions_file))[1].startswith("0 accepted, 0 edited, 2 unchanged")
    assert reviews(captions)[first["data"]["item_id"]] == ("reject", None, "bob")
    # The retrain sees the imported reviews, with the corrections as its labels.
    reviewed = retrain_data.reviewed_since(labeler.db, None)  # the shared PostgreSQL database holds other tests' jobs too
    assert {job: ids for job, ids in reviewed.items() if job in (shapes, captions)} == {shapes: {keep["data"]["item_id"], fix["data"]["item_id"]}, captions: {second["data"]["item_id"]}}
    labeler.export(captions, "llava", tmp_path / "train.json")
    (record,) = json.loads((tmp_path / "train.json").read_text())
    assert record["conversations"][1]["value"] == "a red circle on noise"


def _predicted(labeler: Labeler, prediction_id: int) -> dict[str, Any]:
    with labeler.db.read() as session:
        return session.get(Prediction, prediction_id).output_json  # type: ignore[union-attr]


def test_import_reviews_problems_are_reported(settings: Settings, tiny_backend, images: Path, tmp_path: Path, cli) -> None:
    labeler = Labeler(settings)
    job_id = _finished_job(labeler, tiny_backend, images, JobSpec(task="json", schema=SHAPES_SCHEMA, max_new_tokens=96))
    labeler.export(job_id, "label-studio", tmp_path / "ls.json")
    tasks = _as_label_studio_exports(json.loads((tmp_path / "ls.json").read_text()), 1)
    late = datetime.now(UTC)
    tasks[0]["annotations"] = [_annotation(_edited(tasks[0]["predictions"][0]["result"], "count", {"number": 9}), ALICE, late)]
    tasks[1]["annotations"] = [_annotation([{"from_name": "colour", "value": {"text": ["red"]}}], ALICE, late)]
    tasks[2]["data"]["item_id"] = 999999
    tasks[2]["annotations"] = [_annotation(tasks[2]["predictions"][0]["result"], ALICE, late)]
    (tmp_path / "export.json").write_text(json.dumps(tasks + [{"id": 9, "data": {"image": "x.png"}, "annotations": []}]))
    code, out = cli("import-reviews", str(job_id), str(tmp_path / "export.json"))
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "0 accepted, 0 edited, 0 unchanged, 0 skipped (no annotation or cancelled), 2 unknown, 2 invalid"
    assert "  task 1: the corrected output does not fit the job's schema at count: 9 is greater than the maximum of 4" in lines
    assert "  task 2: a result entry for 'colour', which is not a control of this job's labeling config" in lines
    assert f"  task 3: job {job_id} has no item 999999 with prediction {tasks[2]['data']['prediction_id']}" in lines
    assert "  task 9: no llava-labeler job, item and prediction ids in its data (not exported by llava-labeler?)" in lines
    assert labeler.review_counts(job_id)["unreviewed"] == 3

    for content, message in (
        ("id,image\n1,a.png\n", "is not a Label Studio JSON export: not valid JSON (Expecting value, line 1)"),
        ('{"tasks": []}', "is not a Label Studio JSON export: expected an array of tasks, found a JSON dict"),
        ('[{"image": "a.png", "label": "x"}]', "is not a Label Studio JSON export: task 1 has no 'data' object and 'annotations' list (export as JSON, not JSON-MIN)"),
    ):
        (tmp_path / "bad.json").write_text(content)
        code, out = cli("import-reviews", str(job_id), str(tmp_path / "bad.json"))
        assert code == 1 and out == f"error: {tmp_path / 'bad.json'} {message}\n", out
    assert cli("import-reviews", str(job_id), str(tmp_path / "none.json"))[1] == f"error: no such file: {tmp_path / 'none.json'}\n"
    assert cli("import-reviews", "424242", str(tmp_path / "ls.json"))[1] == "error: no job 424242\n"
    assert cli("import-reviews", str(job_id), str(tmp_path / "ls.json"), "--format", "csv")[1].startswith("error: unknown review format 'csv'")
