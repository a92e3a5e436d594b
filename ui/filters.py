"""The filter widgets Review and Browse share: job, model version, review state, confidence range."""

from __future__ import annotations

import streamlit as st

from labeler.service import REVIEW_STATES, Decision, Labeler, PredictionFilter, mean_logprob

ANY = "any"
STATE_LABELS = {
    "unreviewed": "unreviewed", Decision.ACCEPT: "accepted", Decision.EDIT: "edited", Decision.REJECT: "rejected", Decision.AUTO: "auto-accepted",
}  # fmt: skip
JOB_CHOICES = 500


def prediction_filter(labeler: Labeler, key: str, *, default_state: str = ANY) -> PredictionFilter:
    """Render the shared filters (widget keys under `key`) and return what they select."""
    jobs = {job.id: f"#{job.id} {job.name or job.source} ({job.task})" for job in labeler.list_jobs(limit=JOB_CHOICES)}
    versions = {version.id: version.name for version in labeler.list_model_versions()}
    job_id = st.selectbox("Job", [None, *jobs], format_func=lambda j: "all jobs" if j is None else jobs[j], key=f"{key}.job")
    version_id = st.selectbox(
        "Model version", [None, *versions], format_func=lambda v: "all versions" if v is None else versions[v], key=f"{key}.model"
    )
    states = [ANY, *REVIEW_STATES]
    state = st.selectbox(
        "Review status",
        states,
        index=states.index(default_state),
        format_func=lambda s: "any" if s == ANY else STATE_LABELS[s],
        key=f"{key}.state",
    )
    low, high = st.columns(2)
    meaning = "The answer's geometric-mean token probability, 0 to 1."
    bounds = dict(value=None, min_value=0.0, max_value=1.0, step=0.05, help=meaning)
    min_confidence = low.number_input("Min confidence", key=f"{key}.min", **bounds)
    max_confidence = high.number_input("Max confidence", key=f"{key}.max", **bounds)
    return PredictionFilter(
        job_id=job_id,
        model_version_id=version_id,
        review_state=None if state == ANY else state,  # type: ignore[arg-type]
        min_confidence=mean_logprob(min_confidence),
        max_confidence=mean_logprob(max_confidence),
    )
