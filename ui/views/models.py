"""Models: every model version with its evaluation metrics, reviewers' acceptance and edit rates, and quality over versions."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ui import context
from ui.views.calibration import reliability_section
from ui.views.benchmark_scores import show_benchmark_scores

labeler = context.labeler()
st.title("Models")
versions = labeler.list_model_versions()
if not versions:
    st.info("No model versions yet: one is recorded when a job first runs, and training registers new ones.")
    st.stop()

rates = labeler.review_rates()
active = next((v.name for v in versions if v.status == "active"), None)
st.markdown(f"Active version: **{active}**" if active else "No version is active: jobs use the configured engine model.")


def numeric_metrics(metrics: dict | None) -> dict[str, float]:
    """The version's top-level numeric metrics (what can be charted)."""
    return {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def overall(version_id: int, attribute: str) -> float | None:
    """A version's share of accepted (or edited) predictions over all its jobs."""
    mine = [r for r in rates if r.model_version_id == version_id]
    reviewed = sum(r.reviewed for r in mine)
    return sum(getattr(r, attribute) for r in mine) / reviewed if reviewed else None


st.subheader("Versions")
st.dataframe(
    [
        {
            "version": v.name,
            "status": v.status,
            "parent": v.parent,
            "created": v.created_at,
            "acceptance rate": overall(v.id, "accepted"),
            "edit rate": overall(v.id, "edited"),
            **numeric_metrics(v.metrics),
            "uri": v.uri,
        }
        for v in versions
    ],
    hide_index=True,
    width="stretch",
    column_config={
        "acceptance rate": st.column_config.ProgressColumn(min_value=0, max_value=1, format="percent"),
        "edit rate": st.column_config.ProgressColumn(min_value=0, max_value=1, format="percent"),
    },
)

st.subheader("Quality over versions")
quality = pd.DataFrame(
    [{"version": v.name, "acceptance rate": overall(v.id, "accepted"), **numeric_metrics(v.metrics)} for v in versions]
).set_index("version")
quality = quality.dropna(axis="columns", how="all")
if quality.empty:
    st.caption("No metrics or reviews yet.")
else:
    st.line_chart(quality, x_label="model version (oldest first)")

reliability_section(labeler, rates)

st.subheader("Per job")
st.dataframe(
    [
        {
            "version": r.model_version,
            "job": r.job_id,
            "predictions": r.predictions,
            "reviewed": r.reviewed,
            "accepted": r.accepted,
            "edited": r.edited,
            "rejected": r.rejected,
            "acceptance rate": r.acceptance_rate,
            "edit rate": r.edit_rate,
        }
        for r in rates
    ],
    hide_index=True,
    width="stretch",
)

show_benchmark_scores(versions)
