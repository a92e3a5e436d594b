"""Jobs, Browse, Models and Export pages under AppTest against a real SQLite database with real jobs."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pandas as pd
from PIL import Image

from labeler.review import PredictionFilter


def test_jobs_page_shows_progress_and_failures_and_acts(console, open_app) -> None:
    app = open_app(console)  # Jobs is the first page
    assert [s.value for s in app.subheader] == [f"#{console.caption_job} captions", f"#{console.json_job} shapes"]
    metrics = {m.label: m.value for m in app.metric[:5]}
    assert metrics == {"Done": "6", "Failed": "1", "Cancelled": "0", "Throughput": metrics["Throughput"], "ETA": "–"}
    assert metrics["Throughput"].endswith("items/s")
    assert app.get("progress")[0].proto.value == 100
    reasons = app.dataframe[0].value
    assert list(reasons["items"]) == [1] and "not an image" in reasons["reason"][0] and reasons["for example"][0].endswith("broken.png")

    app.button(key=f"retry-{console.caption_job}").click().run()
    assert "1 items queued again" in app.success[0].value
    status = console.labeler.status(console.caption_job)
    assert (status.status, status.failed, status.pending) == ("queued", 0, 1)

    app.button(key=f"pause-{console.caption_job}").click().run()
    assert console.labeler.status(console.caption_job).status == "paused"
    assert not [b for b in app.button if b.key == f"pause-{console.caption_job}"], "a paused job offers resume, not pause"
    app.button(key=f"resume-{console.caption_job}").click().run()
    assert console.labeler.status(console.caption_job).status == "queued"
    app.button(key=f"cancel-{console.caption_job}").click().run()
    status = console.labeler.status(console.caption_job)
    assert (status.status, status.cancelled, status.pending) == ("cancelled", 1, 0)
    offered = {b.key for b in app.button}
    assert not {k for k in offered if k.endswith(f"-{console.caption_job}")}, "a cancelled job offers no actions"
    assert {k for k in offered if k.endswith(f"-{console.json_job}")} == {f"retry-{console.json_job}"}, "completed: retry only"


def test_an_action_the_job_refuses_is_shown_not_raised(console, open_app) -> None:
    console.labeler.retry_failed(console.json_job)  # queued again: the page offers pause
    app = open_app(console)
    console.labeler.cancel(console.json_job)  # someone else cancels it after the page was drawn
    app.button(key=f"pause-{console.json_job}").click().run()
    assert f"cannot pause job {console.json_job}: it is cancelled" in app.error[0].value and not app.exception


def test_browse_searches_and_filters_items_with_thumbnails(console, open_app) -> None:
    app = open_app(console, "browse")
    assert "14 matching items" in app.caption[0].value
    done = sum(console.labeler.status(job).done for job in (console.json_job, console.caption_job))
    assert len(app.image) == done, "a thumbnail per done item (failed ones show their reason)"
    for thumbnail in app.image:
        (url,) = thumbnail.value
        assert url.startswith("data:image/png;base64,"), "thumbnails travel inside the page, never through /media/"
        assert max(Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2]))).size) <= 256
    assert len(app.error) == 14 - done and "not an image" in app.error[0].value
    app.text_input(key="browse.search").input("shape-3").run()
    table = app.dataframe[0].value
    assert sorted(table["job"]) == sorted([console.json_job, console.caption_job]) and all(table["image"].str.endswith("shape-3.png"))
    app.text_input(key="browse.search").input("").run()
    app.selectbox(key="browse.status").select("failed").run()
    table = app.dataframe[0].value
    assert len(table) == 14 - done and set(table["status"]) == {"failed"} and not app.image

    task = console.labeler.next_for_review("alice", PredictionFilter(job_id=console.caption_job, review_state="unreviewed"))
    console.labeler.record_review(task.prediction_id, "alice", "edit", "a purple dot")
    app.selectbox(key="browse.status").select("any").run()
    app.selectbox(key="browse.state").select("edit").run()
    table = app.dataframe[0].value
    assert list(table["answer"]) == ["a purple dot"] and list(table["reviewer"]) == ["alice"] and list(table["item"]) == [task.item_id]


def test_models_page_shows_versions_metrics_and_review_rates(console, open_app) -> None:
    service = console.labeler
    first = service.list_model_versions()[0]
    service.register_model_version("shapes-ft-1", "build/ft-1", parent=first.name, metrics={"accuracy": 0.5, "loss": 1.2})
    service.promote_model_version("shapes-ft-1")
    decisions = ["accept", "accept", "edit", "reject"]
    for n, decision in enumerate(decisions):
        task = service.next_for_review(f"r{n}", PredictionFilter(job_id=console.caption_job, review_state="unreviewed"))
        service.record_review(task.prediction_id, f"r{n}", decision, "fixed" if decision == "edit" else None)

    app = open_app(console, "models")
    assert "Active version: **shapes-ft-1**" in app.markdown[0].value
    versions = app.dataframe[0].value.set_index("version")
    assert versions.loc["shapes-ft-1", "status"] == "active" and versions.loc["shapes-ft-1", "accuracy"] == 0.5
    assert versions.loc[first.name, "acceptance rate"] == 2 / 4 and versions.loc[first.name, "edit rate"] == 1 / 4
    per_job = app.dataframe[1].value.set_index("job")
    assert per_job.loc[console.caption_job, ["predictions", "accepted", "edited", "rejected"]].tolist() == [6, 2, 1, 1]
    assert pd.isna(per_job.loc[console.json_job, "acceptance rate"]), "no reviews, no rate"
    chart = app.get("vega_lite_chart")[0].proto
    assert b"acceptance rate" in chart.datasets[0].data.data and b"accuracy" in chart.datasets[0].data.data


def test_export_downloads_and_writes_inside_the_data_folder_only(console, open_app, tmp_path: Path) -> None:
    task = console.labeler.next_for_review("alice", PredictionFilter(job_id=console.json_job, review_state="unreviewed"))
    console.labeler.record_review(task.prediction_id, "alice", "accept")
    app = open_app(console, "export")
    app.selectbox(key="export.job").select(console.json_job).run()
    app.selectbox(key="export.format").select("jsonl").run()
    app.button(key="export.prepare").click().run()
    link = app.markdown[-1].value  # a data: link inside the page, never a /media/ URL (served without login)
    assert link.startswith('<a download="job-') and 'href="data:application/octet-stream;base64,' in link and "(7 records)" in link
    records = [json.loads(line) for line in app.session_state["export.ready"][1].decode().splitlines()]
    assert len(records) == 7 and [r["review"]["reviewer"] for r in records if r["review"]] == ["alice"]

    app.selectbox(key="export.format").select("llava").run()
    assert not [m for m in app.markdown if "<a download=" in m.value], "a file prepared for other choices is not offered"
    app.text_input(key="export.path").input("exports/reviewed.llava.json").run()
    app.button(key="export.write").click().run()
    written = console.settings.data_dir.resolve() / "exports" / "reviewed.llava.json"
    assert "1 records written" in app.success[0].value
    assert [record["id"] for record in json.loads(written.read_text())] == [f"job{console.json_job}-item{task.item_id}"]

    app.text_input(key="export.path").input("../../outside.json").run()
    app.button(key="export.write").click().run()
    assert "outside the data folder" in app.error[0].value
    assert not (console.settings.data_dir.resolve().parent.parent / "outside.json").exists()


def test_every_page_explains_an_empty_database(empty_console, open_app) -> None:
    app = open_app(empty_console)
    expected = {
        "jobs": "No jobs yet",
        "review": "Nothing to review",
        "browse": None,
        "models": "No model versions yet",
        "export": "No jobs to export yet",
    }
    for page, info in expected.items():
        app.switch_page(f"../ui/views/{page}.py").run()
        assert not app.exception, page
        assert info is None or info in app.info[0].value, page
    app.switch_page("../ui/views/browse.py").run()
    assert app.caption[0].value.startswith("0 matching items")
