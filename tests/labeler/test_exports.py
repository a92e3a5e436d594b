"""Exports in the four formats, labels after review, and streaming without holding a job in memory."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

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
    out = tmp_path / "coco.json"
    assert labeler.export(job_id, "coco", out) == 5  # 6 done, 1 rejected
    coco = json.loads(out.read_text())
    assert [i["id"] for i in coco["images"]] == [a["image_id"] for a in coco["annotations"]]
    assert decided["reject"] not in {i["id"] for i in coco["images"]}
    caption = {a["image_id"]: a["caption"] for a in coco["annotations"]}
    assert caption[decided["edit"]] == "a red circle on noise"


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


def test_label_studio_tasks_carry_predictions(reviewed, tmp_path: Path) -> None:
    labeler, job_id, _ = reviewed
    out = tmp_path / "ls.json"
    assert labeler.export(job_id, "label-studio", out) == 6
    tasks = json.loads(out.read_text())
    for task in tasks:
        (prediction,) = task["predictions"]
        (result,) = prediction["result"]
        assert (result["from_name"], result["to_name"], result["type"]) == ("answer", "image", "textarea")
        assert isinstance(result["value"]["text"][0], str) and prediction["model_version"]
        assert task["data"]["question"] == QUESTION and Path(task["data"]["image"]).is_file()
    assert 'name="answer" toName="image"' in exports.LABEL_STUDIO_CONFIG


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
        assert peaks[1] < 1.5 * peaks[0], f"{fmt}: peak {peaks[1]:,} bytes for 10,000 items vs {peaks[0]:,} for 1,000"
