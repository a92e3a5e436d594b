"""The review queue under AppTest against real databases: accept, edit a JSON field, reject, skip, leases, filters."""

from __future__ import annotations

import math

import getpass
import time

import pytest

ME = getpass.getuser()  # the reviewer in the local mode without a login


def review_page(open_app, console, **ui):
    return open_app(console, "review", **ui)


def shown(app):
    """The ReviewTask the review page shows (None: nothing to review)."""
    return app.session_state["review.task"]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_accept_then_edit_a_json_field(database: str, request, open_app) -> None:
    console = request.getfixturevalue("console" if database == "sqlite" else "pg_console")
    app = review_page(open_app, console)
    app.selectbox(key="review.job").select(console.json_job).run()
    first = shown(app)
    assert first.job_id == console.json_job and first.task == "json"
    assert f"item {first.item_id}" in app.markdown[0].value and app.image, "the item is shown with its image"

    app.button(key=f"accept-{first.prediction_id}").click().run()
    assert console.reviews()[first.prediction_id] == ("accept", None, ME)
    second = shown(app)
    assert second.prediction_id != first.prediction_id
    assert (second.confidence or 0) >= (first.confidence or 0), "lowest confidence first"
    assert "Saved: accept" in app.success[0].value

    original = second.output_json
    new_shape = next(s for s in ("circle", "square", "triangle", "star") if s != original["shape"])
    new_count = 4 if original["count"] != 4 else 1
    app.selectbox(key=f"edit-{second.prediction_id}.shape").select(new_shape).run()
    app.number_input(key=f"edit-{second.prediction_id}.count").set_value(new_count).run()
    app.button(key=f"save-{second.prediction_id}").click().run()
    assert console.reviews()[second.prediction_id] == ("edit", {**original, "shape": new_shape, "count": new_count}, ME)
    assert shown(app).prediction_id not in (first.prediction_id, second.prediction_id)


def test_reject_and_edit_of_a_caption(console, open_app) -> None:
    app = review_page(open_app, console)
    app.selectbox(key="review.job").select(console.caption_job).run()
    rejected = shown(app)
    app.button(key=f"reject-{rejected.prediction_id}").click().run()
    edited = shown(app)
    box = app.text_area(key=f"edit-{edited.prediction_id}")
    assert box.value == edited.text
    box.input("   ").run()
    assert "the corrected answer is empty" in [e.value for e in app.error]
    assert app.button(key=f"save-{edited.prediction_id}").disabled, "an empty edit cannot be saved"
    app.text_area(key=f"edit-{edited.prediction_id}").input("a red circle on green").run()
    app.button(key=f"save-{edited.prediction_id}").click().run()
    assert console.reviews() == {
        rejected.prediction_id: ("reject", None, ME),
        edited.prediction_id: ("edit", "a red circle on green", ME),
    }


def test_an_unchanged_edit_is_an_accept(console, open_app) -> None:
    app = review_page(open_app, console)
    task = shown(app)
    app.button(key=f"save-{task.prediction_id}").click().run()
    assert console.reviews() == {task.prediction_id: ("accept", None, ME)}


def test_skip_moves_on_without_a_review_and_frees_the_item(console, open_app) -> None:
    app = review_page(open_app, console)
    skipped = shown(app)
    app.button(key=f"skip-{skipped.prediction_id}").click().run()
    after = shown(app)
    assert after.prediction_id != skipped.prediction_id
    assert console.reviews() == {}
    assert console.lease_owners() == {after.prediction_id: ME}, "the skipped item's lease was given back"
    other = console.labeler.next_for_review("someone-else")
    assert other.prediction_id == skipped.prediction_id, "a skipped item goes to the next reviewer"


def test_a_second_click_and_a_reload_never_duplicate_or_lose_a_review(console, open_app) -> None:
    """Two tabs of one reviewer show the same held item; a click on it in the stale tab after the save does nothing."""
    tab, stale_tab = review_page(open_app, console), review_page(open_app, console)
    first = shown(tab)
    assert shown(stale_tab).prediction_id == first.prediction_id, "the reviewer gets back the item they hold"
    tab.button(key=f"accept-{first.prediction_id}").click().run()
    second = shown(tab)
    stale_tab.button(key=f"accept-{first.prediction_id}").click().run()  # the click arrives after the save
    assert shown(stale_tab).prediction_id == second.prediction_id, "the late click did not act on the next item"
    assert "no longer yours" in stale_tab.warning[0].value
    assert console.reviews() == {first.prediction_id: ("accept", None, ME)}
    reloaded = review_page(open_app, console)
    assert shown(reloaded).prediction_id == second.prediction_id
    assert console.reviews() == {first.prediction_id: ("accept", None, ME)}


def test_two_reviewers_never_share_an_item_and_a_lease_expires(console, open_app) -> None:
    console.settings.labeler.review_lease_s = 1.5
    alice = review_page(open_app, console, sign_in_as="alice")
    bob = review_page(open_app, console, sign_in_as="bob")
    held_by_alice, held_by_bob = shown(alice), shown(bob)
    assert held_by_alice.prediction_id != held_by_bob.prediction_id
    assert console.lease_owners() == {held_by_alice.prediction_id: "alice", held_by_bob.prediction_id: "bob"}

    time.sleep(1.6)  # alice walks away; her lease runs out
    carol = review_page(open_app, console, sign_in_as="carol")
    assert shown(carol).prediction_id == held_by_alice.prediction_id, "an expired lease frees the item"
    alice.run()
    assert "no longer yours" in alice.warning[0].value and shown(alice).prediction_id != held_by_alice.prediction_id
    carol.button(key=f"accept-{held_by_alice.prediction_id}").click().run()
    assert console.reviews()[held_by_alice.prediction_id][2] == "carol", "the reviewer's login name is stored"


def test_filters_select_what_the_queue_hands_out(console, open_app) -> None:
    app = review_page(open_app, console)
    predictions = {p.prediction_id: p for p in _all_tasks(console)}
    app.selectbox(key="review.job").select(console.caption_job).run()
    assert shown(app).job_id == console.caption_job

    confidences = sorted(p.confidence for p in predictions.values() if p.job_id == console.caption_job)
    # the filters take the geometric-mean probability a person reads (stored: the mean log-probability)
    app.number_input(key="review.min").set_value(math.exp(confidences[2]) - 1e-12).run()
    assert shown(app).confidence == confidences[2], "the least confident item at or above the minimum"
    app.number_input(key="review.max").set_value(math.exp(confidences[2]) / 2).run()
    assert shown(app) is None and "Nothing to review" in app.info[0].value
    app.number_input(key="review.max").set_value(None).run()
    app.number_input(key="review.min").set_value(None).run()

    version = console.labeler.list_model_versions()[0]
    app.selectbox(key="review.model").select(version.id).run()
    assert shown(app) is not None

    first = shown(app)
    app.button(key=f"accept-{first.prediction_id}").click().run()
    app.selectbox(key="review.state").select("accept").run()
    assert shown(app).prediction_id == first.prediction_id, "accepted items can be reviewed again"
    app.button(key=f"reject-{first.prediction_id}").click().run()
    assert console.reviews()[first.prediction_id][0] == "reject", "a new decision replaces the old one"

    app.selectbox(key="review.state").select("unreviewed").run()
    app.radio(key="review.order").set_value("random").run()
    seen = set()
    for _ in range(4):
        task = shown(app)
        assert task.job_id == console.caption_job and task.prediction_id != first.prediction_id
        seen.add(task.prediction_id)
        app.button(key=f"skip-{task.prediction_id}").click().run()
    assert len(seen) == 4, "skipped items do not come back in this session"


def test_confidence_reads_as_a_probability_with_the_raw_value_on_hover(console, open_app) -> None:
    app = review_page(open_app, console)
    task = shown(app)
    metric = next(m for m in app.metric if m.label == "Confidence")
    assert metric.value == f"{math.exp(task.confidence):.1%}"
    assert f"mean token log-probability {task.confidence:.3f}" in metric.proto.help


def _all_tasks(console):
    """Lease every prediction once to read its confidence, then give them all back."""
    tasks = []
    while (task := console.labeler.next_for_review(f"reader-{len(tasks)}")) is not None:
        tasks.append(task)
    for n, task in enumerate(tasks):
        console.labeler.release_review(task.prediction_id, f"reader-{n}")
    return tasks
