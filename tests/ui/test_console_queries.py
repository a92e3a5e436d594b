"""The console's queries on a real database: the filtered review lease, browsing, failures by reason, review rates."""

from __future__ import annotations

import time
from collections import Counter

from labeler.console_queries import BrowseQuery, browse, failure_reasons, review_rates
from labeler.review import PredictionFilter, next_for_review


def test_the_review_lease_filters_excludes_and_never_shares(console) -> None:
    db, lease = console.labeler.db, 60.0
    caption = PredictionFilter(job_id=console.caption_job, review_state="unreviewed")
    alice = next_for_review(db, "alice", lease, caption)
    assert next_for_review(db, "alice", lease, caption).prediction_id == alice.prediction_id, "the held item comes back"
    taken = {alice.prediction_id}
    while (task := next_for_review(db, f"r{len(taken)}", lease, caption, order="random")) is not None:
        assert task.prediction_id not in taken and task.job_id == console.caption_job
        taken.add(task.prediction_id)
    assert len(taken) == console.labeler.status(console.caption_job).done, "every item once, then nothing is free"

    json_only = PredictionFilter(job_id=console.json_job, review_state="unreviewed")
    first = next_for_review(db, "bob", lease, json_only)
    console.labeler.release_review(first.prediction_id, "bob")
    second = next_for_review(db, "bob", lease, json_only, exclude={first.prediction_id})
    assert second.prediction_id != first.prediction_id and (second.confidence or 0) >= (first.confidence or 0)
    narrow = PredictionFilter(job_id=console.json_job, min_confidence=second.confidence, max_confidence=second.confidence)
    assert next_for_review(db, "bob", lease, narrow).prediction_id == second.prediction_id


def test_an_expired_lease_frees_the_item_and_decided_items_can_be_reviewed_again(console) -> None:
    db = console.labeler.db
    held = next_for_review(db, "alice", 0.3)
    time.sleep(0.4)
    assert next_for_review(db, "bob", 60.0).prediction_id == held.prediction_id
    console.labeler.record_review(held.prediction_id, "bob", "accept")
    assert next_for_review(db, "bob", 60.0).prediction_id != held.prediction_id, "decided items leave the unreviewed queue"
    again = next_for_review(db, "carol", 60.0, PredictionFilter(review_state="accept"))
    assert again.prediction_id == held.prediction_id


def test_browse_pages_searches_and_filters(console) -> None:
    db = console.labeler.db
    everything = browse(db, BrowseQuery(limit=100))
    assert everything.total == 14 and len(everything.rows) == 14
    pages = [browse(db, BrowseQuery(limit=5, offset=offset)).rows for offset in (0, 5, 10)]
    assert [row.item_id for page in pages for row in page] == [row.item_id for row in everything.rows]
    found = browse(db, BrowseQuery(search="SHAPE-1.PNG"))
    assert found.total == 2 and all(row.uri.endswith("shape-1.png") for row in found.rows)
    job_items = browse(db, BrowseQuery(predictions=PredictionFilter(job_id=console.json_job), limit=100))
    assert job_items.total == 7 and any(row.prediction_id is None for row in job_items.rows), "failed items are listed too"
    version = console.labeler.list_model_versions()[0].id
    predicted = browse(db, BrowseQuery(predictions=PredictionFilter(job_id=console.json_job, model_version_id=version), limit=100))
    assert predicted.total == console.labeler.status(console.json_job).done and all(row.prediction_id for row in predicted.rows)
    failed = browse(db, BrowseQuery(item_status="failed", limit=100))
    assert {row.item_status for row in failed.rows} == {"failed"} and all(row.error for row in failed.rows)


def test_failures_are_grouped_by_reason_most_frequent_first(console) -> None:
    expected = Counter(item.error for item in console.labeler.failed_items(console.json_job, limit=100))
    grouped = failure_reasons(console.labeler.db, console.json_job)
    assert {g.reason: g.count for g in grouped} == expected
    assert [g.count for g in grouped] == sorted(expected.values(), reverse=True)


def test_review_rates_count_decisions_per_version_and_job(console) -> None:
    service = console.labeler
    for n, decision in enumerate(["accept", "edit", "edit", "reject"]):
        task = service.next_for_review(f"r{n}", PredictionFilter(job_id=console.caption_job, review_state="unreviewed"))
        service.record_review(task.prediction_id, f"r{n}", decision, "fixed" if decision == "edit" else None)
    rates = {r.job_id: r for r in review_rates(service.db)}
    caption = rates[console.caption_job]
    assert (caption.predictions, caption.accepted, caption.edited, caption.rejected) == (6, 1, 2, 1)
    assert (caption.acceptance_rate, caption.edit_rate) == (0.25, 0.5)
    assert rates[console.json_job].reviewed == 0 and rates[console.json_job].acceptance_rate is None
