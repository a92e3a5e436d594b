"""Review: one leased item at a time, least confident first, accepted, corrected, rejected or skipped.

A JSON item shows each field's confidence, and the form marks the least-sure field; a job's
auto-accepted labels (`llava-labeler auto-accept`) can be undone from here.

Every run asks the labeler for the reviewer's item: the one they already hold comes back
first (which renews the lease), so a page reload shows the same item and a lease that ran
out and went to someone else is noticed. Action buttons are keyed by prediction, so a
second click that arrives after the first was saved belongs to no button on the next
item, and the write itself is an upsert: one review per prediction, whatever happens.
"""

from __future__ import annotations

import json

import streamlit as st

from labeler.service import Decision, ReviewError, ReviewTask, probability
from ui import context, filters, images, schema_form

TASK_KEY, FILTER_KEY, SKIPPED_KEY, NOTICE_KEY = "review.task", "review.filter", "review.skipped", "review.notice"
ORDERS = {
    "confidence": "lowest confidence first",
    "weakest_field": "weakest JSON field first",
    "calibrated": "least likely right first (calibrated on reviews)",
    "random": "random",
}

labeler = context.labeler()
reviewer = context.reviewer()
state = st.session_state
state.setdefault(SKIPPED_KEY, set())

with st.sidebar:
    st.subheader("Queue")
    wanted = filters.prediction_filter(labeler, "review", default_state="unreviewed")
    order = st.radio("Order", list(ORDERS), format_func=ORDERS.get, key="review.order")


def release_current() -> None:
    held: ReviewTask | None = state.get(TASK_KEY)
    if held is not None:
        labeler.release_review(held.prediction_id, reviewer)
    state[TASK_KEY] = None


if state.get(FILTER_KEY) != (wanted, order):  # new filters: give the held item back, start over
    release_current()
    state[FILTER_KEY] = (wanted, order)
    state[SKIPPED_KEY] = set()

previous: ReviewTask | None = state.get(TASK_KEY)
task = labeler.next_for_review(reviewer, wanted, order=order, exclude=state[SKIPPED_KEY])
state[TASK_KEY] = task
if previous is not None and (task is None or task.prediction_id != previous.prediction_id):
    st.warning(
        f"Item {previous.item_id} is no longer yours to review (your hold ran out and it went to someone else, "
        "or it was decided in another tab); nothing from this page was saved for it."
    )

st.title("Review")
if notice := state.pop(NOTICE_KEY, None):
    st.success(notice)
counts = labeler.review_counts(wanted.job_id)
st.caption(
    f"{counts['unreviewed']:,} unreviewed · {counts['accept']:,} accepted · {counts['edit']:,} edited · "
    f"{counts['reject']:,} rejected · {counts['auto']:,} auto-accepted · reviewing as **{reviewer}**"
)
if wanted.job_id is not None and counts["auto"] and st.button(f"Undo job #{wanted.job_id}'s auto-accepts", key="review.undo-auto"):
    state[NOTICE_KEY] = f"{labeler.undo_auto_accept(wanted.job_id):,} auto-accepted labels are back in the queue."
    st.rerun()
if task is None:
    st.info("Nothing to review with these filters." + (" (Skipped items come back when the filters change.)" if state[SKIPPED_KEY] else ""))
    st.stop()


def save(current: ReviewTask, decision: str, output=None) -> None:
    try:
        record = labeler.record_review(current.prediction_id, reviewer, decision, output)
    except ReviewError as exc:
        st.error(str(exc))
        return
    state[TASK_KEY] = None
    state[NOTICE_KEY] = f"Saved: {record.decision} on item {current.item_id}."
    st.rerun()


def skip(current: ReviewTask) -> None:
    labeler.release_review(current.prediction_id, reviewer)
    state[SKIPPED_KEY].add(current.prediction_id)
    state[TASK_KEY] = None
    st.rerun()


def model_output(current: ReviewTask):
    """What the model answered: parsed JSON for schema tasks, else its text."""
    return current.output_json if current.output_json is not None else current.text


picture, detail = st.columns([3, 2], gap="large")
with picture:
    images.show(task.uri, caption=task.uri)
with detail:
    st.markdown(f"**Job #{task.job_id}** · {task.task} · item {task.item_id}")
    likely = probability(task.confidence)
    st.metric(
        "Confidence",
        "unknown" if likely is None else f"{likely:.1%}",
        help="The geometric-mean probability of the answer's tokens"
        + ("" if task.confidence is None else f" (mean token log-probability {task.confidence:.3f})."),
    )
    st.markdown("**Instruction**")
    st.write(task.question or "(the task's default instruction)")
    weakest = (task.field_confidence or {}).get("weakest")
    if weakest is not None:
        sure = {field: probability(logprob) for field, logprob in task.field_confidence["fields"].items()}
        st.caption("Field confidence: " + " · ".join(
            (f"**{field} {p:.0%} (least sure)**" if field == weakest else f"{field} {p:.0%}") for field, p in sure.items()
        ))  # fmt: skip
    st.markdown("**Model output**")
    if task.output_json is not None:
        st.code(json.dumps(task.output_json, indent=2, ensure_ascii=False), language="json")
    else:
        st.write(task.text)

    pid = task.prediction_id
    accept, reject, skip_button = st.columns(3)
    if accept.button("Accept", key=f"accept-{pid}", type="primary", shortcut="A", width="stretch"):
        save(task, Decision.ACCEPT)
    if reject.button("Reject", key=f"reject-{pid}", shortcut="X", width="stretch"):
        save(task, Decision.REJECT)
    if skip_button.button("Skip", key=f"skip-{pid}", shortcut="S", width="stretch"):
        skip(task)

    st.markdown("**Correct it**")
    if task.schema is not None:
        form_schema = schema_form.flag_field(task.schema, weakest, "least sure") if weakest else task.schema
        edited = schema_form.edit(form_schema, task.output_json, key=f"edit-{pid}")
        value, problems = edited.value, edited.problems
    else:
        value = st.text_area("Corrected answer", value=task.text, key=f"edit-{pid}", height=120)
        problems = [] if value.strip() else ["the corrected answer is empty"]
    for problem in problems:
        st.error(problem)
    if st.button("Save edit", key=f"save-{pid}", disabled=bool(problems), shortcut="Ctrl+Enter", width="stretch"):
        save(task, Decision.ACCEPT if value == model_output(task) else Decision.EDIT, None if value == model_output(task) else value)
    st.caption("Keys: A accept · X reject · S skip · Ctrl+Enter save edit")
