"""The Models page's calibration section: a reliability plot of one job's, or one task and version's, reviews.

A row of the plot is a bin of predicted probability of being right (out-of-fold isotonic,
`labeler.calibration`) against how often the reviewers found those labels right; on the
diagonal is perfect calibration. Too few reviews is a caption, not an error.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from labeler.service import Labeler
from labeler.calibration import BINS, FOLDS, CalibrationError, Scope


def reliability_section(labeler: Labeler, rates: list) -> None:
    """Pick a scope among the reviewed jobs (or their task and model version) and plot its calibration."""
    st.subheader("Calibration")
    reviewed = sorted({r.job_id: r for r in rates if r.reviewed}.values(), key=lambda r: -r.job_id)
    if not reviewed:
        st.caption("No reviews yet: calibration is fitted on reviewed labels.")
        return
    tasks = {job.id: job.task for job in labeler.list_jobs(limit=len(reviewed) + 50)}
    scopes = [Scope(job_id=r.job_id) for r in reviewed]
    scopes += sorted({Scope(task=tasks[r.job_id], model_version_id=r.model_version_id) for r in reviewed if r.job_id in tasks}, key=str)
    names = {r.model_version_id: r.model_version for r in reviewed}
    scope = st.selectbox(
        "Fitted on the reviews of",
        scopes,
        format_func=lambda s: str(s) if s.job_id is not None else f"every {s.task} job of {names.get(s.model_version_id)}",
        key="models.calibration",
    )
    try:
        fitted = labeler.calibration(scope)
    except CalibrationError as exc:
        st.caption(str(exc))
        return
    st.markdown(
        f"Expected calibration error **{fitted.ece:.3f}** ({BINS} bins, {FOLDS}-fold out-of-fold isotonic; "
        f"raw exp(mean log-prob) read as a probability: {fitted.raw_ece:.3f}) · {fitted.reviews:,} reviews, "
        f"{fitted.right / fitted.reviews:.1%} right"
    )
    plot = pd.DataFrame(
        [{"predicted P(right)": b.predicted, "observed": b.observed, "perfect calibration": b.predicted} for b in fitted.bins]
    ).set_index("predicted P(right)")
    st.line_chart(plot, x_label="predicted probability that the label is right", y_label="share the reviewers found right")
