"""Jobs: progress, throughput, ETA (or why a job is stalled) and failure reasons of every job, with cancel / pause / resume / retry failed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import streamlit as st

from labeler.service import RUNNABLE_JOB_STATES, JobError, JobState, JobStatus
from ui import context

LISTED = 50
REFRESH_S = 5

labeler = context.labeler()
st.title("Jobs")
auto = st.toggle("Refresh every 5 s", key="jobs.auto")


def act(job: JobStatus, verb: str, run: Callable[[int], object]) -> None:
    try:
        outcome = run(job.id)
    except JobError as exc:
        st.session_state["jobs.notice"] = ("error", str(exc))
    else:
        extra = f" ({outcome[1]:,} items queued again)" if isinstance(outcome, tuple) else ""
        st.session_state["jobs.notice"] = ("success", f"Job {job.id}: {verb} done{extra}.")


def actions(job: JobStatus) -> None:
    pause, resume, retry, cancel = st.columns(4)
    if job.status in RUNNABLE_JOB_STATES:
        pause.button("Pause", key=f"pause-{job.id}", on_click=act, args=(job, "pause", labeler.pause))
    if job.status == JobState.PAUSED:
        resume.button("Resume", key=f"resume-{job.id}", on_click=act, args=(job, "resume", labeler.resume))
    if job.failed and job.status != JobState.CANCELLED:
        retry.button("Retry failed", key=f"retry-{job.id}", on_click=act, args=(job, "retry failed", labeler.retry_failed))
    if not job.finished:
        with cancel.popover("Cancel"):
            st.write(f"Cancel the {job.pending:,} unfinished items of job {job.id}? This cannot be undone.")
            st.button("Cancel job", key=f"cancel-{job.id}", type="primary", on_click=act, args=(job, "cancel", labeler.cancel))


def describe(job: JobStatus) -> None:
    finished = job.done + job.failed + job.cancelled
    st.progress(finished / job.total if job.total else 1.0, text=f"{finished:,} of {job.total:,} items finished")
    done, failed, cancelled, rate, eta = st.columns(5)
    done.metric("Done", f"{job.done:,}")
    failed.metric("Failed", f"{job.failed:,}")
    cancelled.metric("Cancelled", f"{job.cancelled:,}")
    rate.metric("Throughput", f"{job.items_per_second:.2f} items/s" if job.items_per_second else "–")
    eta.metric("ETA", str(timedelta(seconds=round(job.eta_seconds))) if job.eta_seconds is not None else "–")
    if job.cache_hits or job.reasks:
        st.caption(f"{job.cache_hits:,} labelled from the prediction cache · {job.reasks:,} JSON answers asked again after a cut-off")
    if job.stalled:  # then there is no ETA: say why nothing moves
        st.warning(f"Stalled: {job.stalled}.")
    if job.failed:
        reasons = labeler.failure_reasons(job.id)
        with st.expander(f"Failures by reason ({len(reasons)})"):
            st.dataframe(
                [{"reason": r.reason, "items": r.count, "for example": r.example_uri} for r in reasons],
                hide_index=True,
                width="stretch",
            )


@st.fragment(run_every=REFRESH_S if auto else None)
def job_list() -> None:
    if notice := st.session_state.pop("jobs.notice", None):
        getattr(st, notice[0])(notice[1])
    listed = labeler.list_jobs(limit=LISTED)
    if not listed:
        st.info("No jobs yet: `llava-labeler submit` or `llava-labeler run` creates one.")
    for job in listed:
        with st.container(border=True):
            st.subheader(f"#{job.id} {job.name or job.source}")
            st.caption(f"{job.task} · {job.status} · model {job.model_version or 'unknown'} · {job.source}")
            describe(job)
            actions(job)


job_list()
