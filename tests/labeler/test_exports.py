"""Exports in the four formats, labels after review, and streaming without holding a job in memory."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from xml.etree import ElementTree

import pytest
from sqlalchemy import insert, select

from engine.prompts import IMAGE_TOKEN, build_instruction
from labeler import exports, jobs
from labeler.batches import BatchProcessor
from labeler.exports import ExportError
from labeler.jobs import JobSpec
from labeler.models import Item, Job, Prediction
from labeler.review import PredictionFilter
from labeler.service import Labeler

QUESTION = "Describe the picture."


@pytest.fixture
def reviewed(labeler_settings, tiny_backend, mixed_folder) -> tuple[Labeler, int, dict[str, int]]:
    """A finished caption job over the mixed folder, with one accept, one edit and one reject."""
    folder, _ = mixed_folder
    labeler = Labeler(labeler_settings())
    job = labeler.submit(str(folder), JobSpec(task="caption", instruction=QUESTION, max_new_tokens=5))
    processor = BatchProcessor(labeler.db, labeler.settings, lambda: tiny_backend)
    processor.process(job.id, list(jobs.pending_item_ids(labeler.db, job.id)))
    decided: dict[str, int] = {}
    for decision, output in (("accept", None), ("edit", "a red circle on noise"), ("reject", None)):
        task = labeler.next_for_review("alice", PredictionFilter(job_id=job.id, review_state="unreviewed"))
        labeler.record_review(task.prediction_id, "alice", decision, output)
        decided[decision] = task.item_id
    return labeler, job.id, decided


def test_jsonl_has_every_item_with_prediction_review_and_label(reviewed, tmp_path: Path) -> None:
    labeler, job_id, decided = reviewed
    out = tmp_path / "out" / "job.jsonl"
    assert labeler.export(job_id, "jsonl", out) == 9
    records = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(records) == 9 and not list(out.parent.glob("*.partial"))
    failed = [r for r in records.values() if r["status"] == "failed"]
    assert len(failed) == 3 and all(r["error"] and r["prediction"] is None and r["label"] is None for r in failed)
    edited = records[decided["edit"]]
    assert edited["review"]["decision"] == "edit" and edited["label"] == "a red circle on noise"
    assert edited["prediction"]["text"] != edited["label"] and edited["prediction"]["model_version"]
    assert records[decided["reject"]]["label"] is None
    accepted = records[decided["accept"]]
    assert accepted["label"] == accepted["prediction"]["text"]


def test_coco_captions(reviewed, tmp_path: Path) -> None:
    labeler, job_id, decided = reviewed
    out = tmp_path / "job-1.coco.json"
    assert labeler.export(job_id, "coco", out) == 5  # 6 done, 1 rejected
    coco = json.loads(out.read_text())
    assert [i["id"] for i in coco["images"]] == [a["image_id"] for a in coco["annotations"]]
    assert decided["reject"] not in {i["id"] for i in coco["images"]}
    caption = {a["image_id"]: a["caption"] for a in coco["annotations"]}
    assert caption[decided["edit"]] == "a red circle on noise"
    # The results file beside it, in the shape pycocotools' COCO.loadRes reads (a list of
    # {"image_id", "caption"} whose image ids all appear in the annotations' images): the model's own captions.
    results = json.loads((tmp_path / "job-1.coco-results.json").read_text())
    assert isinstance(results, list) and all(set(r) == {"image_id", "caption"} and isinstance(r["caption"], str) for r in results)
    assert [r["image_id"] for r in results] == [i["id"] for i in coco["images"]]
    said = {r["image_id"]: r["caption"] for r in results}
    assert said[decided["edit"]] != "a red circle on noise" and said[decided["accept"]] == caption[decided["accept"]]


def test_image_paths_relative_to_a_directory(reviewed, mixed_folder, tmp_path: Path) -> None:
    labeler, job_id, _ = reviewed
    folder, _ = mixed_folder
    labeler.export(job_id, "coco", tmp_path / "coco.json", relative_to=folder)
    names = {i["file_name"] for i in json.loads((tmp_path / "coco.json").read_text())["images"]}
    assert names and names <= {f"good-{i}.png" for i in range(5)} | {"nested/deeper/good-5.PNG"}
    assert all((folder / name).is_file() for name in names)
    labeler.export(job_id, "llava", tmp_path / "llava.json", relative_to=folder, include_unreviewed=True)
    records = json.loads((tmp_path / "llava.json").read_text())
    assert {r["image"] for r in records} == names  # what training's --image_folder joins with
    with pytest.raises(ExportError, match=r"image .*good-0\.png is outside .*nested, the directory image paths are made relative to"):
        labeler.export(job_id, "coco", tmp_path / "outside.json", relative_to=folder / "nested")
    assert not list(tmp_path.glob("outside*"))  # nothing half-written is left behind
    with pytest.raises(ExportError, match="is not a directory"):
        labeler.export(job_id, "coco", tmp_path / "x.json", relative_to=folder / "good-0.png")
    with pytest.raises(ExportError, match="jsonl keeps each item's URI"):
        labeler.export(job_id, "jsonl", tmp_path / "x.jsonl", relative_to=folder)


def test_llava_conversations_use_the_engine_prompts(reviewed, tmp_path: Path) -> None:
    labeler, job_id, decided = reviewed
    out = tmp_path / "llava.json"
    assert labeler.export(job_id, "llava", out) == 2  # reviewed only: the accept and the edit
    records = json.loads(out.read_text())
    human = f"{IMAGE_TOKEN}\n{build_instruction('caption', QUESTION)}"
    assert all(r["conversations"][0] == {"from": "human", "value": human} for r in records)
    by_id = {r["id"]: r for r in records}
    assert by_id[f"job{job_id}-item{decided['edit']}"]["conversations"][1] == {"from": "gpt", "value": "a red circle on noise"}
    assert all(Path(r["image"]).is_file() for r in records)
    assert labeler.export(job_id, "llava", out, include_unreviewed=True) == 5


def test_label_studio_tasks_carry_predictions_ids_and_their_config(reviewed, tmp_path: Path) -> None:
    labeler, job_id, _ = reviewed
    out = tmp_path / "job-1.label-studio.json"
    assert labeler.export(job_id, "label-studio", out) == 6
    tasks = json.loads(out.read_text())
    with labeler.db.read() as session:
        predictions = {p.item_id: p for p in session.scalars(select(Prediction).where(Prediction.job_id == job_id))}
    for task in tasks:
        ids = task["meta"]
        assert task["data"]["item_id"] == ids["item_id"] and ids["job_id"] == job_id and "id" not in task
        prediction = predictions[ids["item_id"]]
        (shown,) = task["predictions"]
        assert (shown["model_version"], shown["score"]) == (labeler.list_model_versions()[0].name, prediction.confidence)
        (result,) = shown["result"]
        assert (result["from_name"], result["to_name"], result["type"]) == ("answer", "image", "textarea")
        assert result["value"] == {"text": [prediction.text]} and ids["prediction_id"] == prediction.id
        assert task["data"]["question"] == QUESTION and Path(task["data"]["image"]).is_file()  # as stored, by default
    config = ElementTree.fromstring((tmp_path / "job-1.label-studio.xml").read_text())
    assert [(c.tag, c.get("name"), c.get("toName")) for c in config] == [
        ("Image", "image", None), ("Header", None, None), ("TextArea", "answer", "image")
    ]
    assert config[0].get("value") == "$image" and config[1].get("value") == "$question"


def test_label_studio_image_urls(reviewed, mixed_folder, tmp_path: Path) -> None:
    labeler, job_id, _ = reviewed
    folder, _ = mixed_folder
    out = tmp_path / "ls.json"

    def images(prefix: str, root: Path = folder) -> set[str]:
        labeler.export(job_id, "label-studio", out, relative_to=root, image_url_prefix=prefix)
        return {task["data"]["image"] for task in json.loads(out.read_text())}

    local = images("/data/local-files/?d=")  # Label Studio's local-file serving, LOCAL_FILES_DOCUMENT_ROOT=folder
    assert "/data/local-files/?d=nested/deeper/good-5.PNG" in local and "/data/local-files/?d=good-0.png" in local
    assert "https://cdn.example.com/set/good-0.png" in images("https://cdn.example.com/set/")
    assert "s3://bucket/set/nested/deeper/good-5.PNG" in images("s3://bucket/set/")
    assert (tmp_path / "ls.label-studio.xml").is_file()
    with pytest.raises(ExportError, match="needs the image root, the directory the served paths are relative to"):
        labeler.export(job_id, "label-studio", out, image_url_prefix="/data/local-files/?d=")
    with pytest.raises(ExportError, match="image URL prefix 'ftp://x/' must start with one of /, http://"):
        images("ftp://x/")
    with pytest.raises(ExportError, match="applies to the label-studio export only"):
        labeler.export(job_id, "coco", out, relative_to=folder, image_url_prefix="/data/local-files/?d=")


def test_a_path_is_quoted_in_an_image_url(tmp_path: Path) -> None:
    (tmp_path / "a b#c.png").write_bytes(b"")
    paths = exports.image_paths("label-studio", tmp_path, "https://host/x/")
    assert paths.url(str(tmp_path / "a b#c.png")) == "https://host/x/a%20b%23c.png"
    assert paths.url("https://elsewhere/y.png") == "https://elsewhere/y.png"  # URLs travel as they are


def test_export_errors(reviewed, tmp_path: Path) -> None:
    labeler, job_id, _ = reviewed
    with pytest.raises(ExportError, match="unknown export format 'csv'"):
        labeler.export(job_id, "csv", tmp_path / "x")
    with pytest.raises(ExportError, match="no job 424242"):
        labeler.export(424242, "jsonl", tmp_path / "x")


def _bulk_job(labeler: Labeler, n: int) -> int:
    """A finished job of `n` items with predictions, inserted directly (no engine needed to test exports)."""
    from labeler.registry import version_for_uri

    with labeler.db.write() as session:
        job = Job(source="bulk", task="caption", generation={}, batch_size=32, status="completed", total=n, done=n)
        session.add(job)
        session.flush()
        rows = [{"job_id": job.id, "uri": f"/data/{i:06d}.png", "status": "done", "attempts": 1} for i in range(n)]
        session.execute(insert(Item.__table__), rows)
        ids = session.scalars(select(Item.id).where(Item.job_id == job.id).order_by(Item.id))
        version = version_for_uri(session, "bulk-model").id
        session.execute(
            insert(Prediction.__table__),
            [
                {"item_id": i, "job_id": job.id, "model_version_id": version, "prompt_hash": "h", "text": "a caption " * 8,
                 "confidence": -0.5, "tokens": 20, "finish_reason": "stop", "latency_ms": 3.0, "reviewed": False}
                for i in ids
            ],
        )  # fmt: skip
        return job.id


def test_exports_stream_memory_does_not_grow_with_the_job(labeler_settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job ten times larger exports with about the same peak memory: pages, never the whole job."""
    labeler = Labeler(labeler_settings())
    small, large = _bulk_job(labeler, 1_000), _bulk_job(labeler, 10_000)
    monkeypatch.setattr(exports, "PAGE", 250)
    for fmt in ("jsonl", "coco", "label-studio"):
        peaks, sizes = [], []
        labeler.export(small, fmt, tmp_path / "warm-up")  # compiled-statement caches fill outside the measurement
        for job_id, n in ((small, 1_000), (large, 10_000)):
            out = tmp_path / f"{job_id}.{fmt}"
            tracemalloc.start()
            assert labeler.export(job_id, fmt, out) == n
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
            sizes.append(out.stat().st_size)
        assert sizes[1] > 9 * sizes[0]
        # Holding the job would cost ~10x; SQLAlchemy's caches fill towards a ceiling instead (coco measured
        # 1.22 MB for 1,000 items, 1.72 MB for 10,000, 1.89 MB for 30,000), so 1.5x was too close to call.
        assert peaks[1] < 2 * peaks[0], f"{fmt}: peak {peaks[1]:,} bytes for 10,000 items vs {peaks[0]:,} for 1,000"


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_each_item_exports_with_its_own_latest_prediction(
    labeler_settings, request: pytest.FixtureRequest, database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages read predictions by a range of item ids: items of another job in that range, and an item
    predicted twice (the later prediction wins), still export with their own job's latest answer."""
    from labeler.registry import version_for_uri

    url = request.getfixturevalue("pg_database") if database == "postgres" else None
    labeler = Labeler(labeler_settings(database_url=url))
    monkeypatch.setattr(exports, "PAGE", 3)
    with labeler.db.write() as session:
        mine, other = (Job(source=name, task="caption", generation={}, batch_size=4, status="completed") for name in "ab")
        session.add_all([mine, other])
        session.flush()
        version = version_for_uri(session, "two-jobs-model").id
        owners = [mine.id, other.id] * 5  # ids interleaved, as when two jobs are submitted at once
        ids = [session.execute(insert(Item.__table__).values(job_id=j, uri=f"/d/{n}.png", status="done", attempts=1)).inserted_primary_key[0]
               for n, j in enumerate(owners)]  # fmt: skip
        for (item_id, job_id), prompt in [*((pair, "h") for pair in zip(ids, owners)), ((ids[2], mine.id), "newer")]:
            session.execute(insert(Prediction.__table__).values(
                item_id=item_id, job_id=job_id, model_version_id=version, prompt_hash=prompt, text=f"{prompt} {item_id} of {job_id}",
                confidence=-0.5, tokens=3, finish_reason="stop", latency_ms=1.0, reviewed=False))  # fmt: skip
        job_id = mine.id
    out = tmp_path / "mine.jsonl"
    assert labeler.export(job_id, "jsonl", out) == 5
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ids[::2]
    assert [r["label"] for r in records] == [f"{'newer' if i == ids[2] else 'h'} {i} of {job_id}" for i in ids[::2]]
    (row,) = (row for row in exports.iter_rows(labeler.db, job_id) if row.item.id == ids[2])
    assert row.prediction is not None and row.prediction.prompt_hash == "newer" and row.model_version == "two-jobs-model"
    assert row.prediction.created_at.tzinfo is not None and row.review is None  # times decoded as the column types decode them
