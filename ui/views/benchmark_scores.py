"""The paper-benchmark scores of each model version (the retrain's gate), for the Models page.

The retrain (`retrain.benchmarks`) puts each version's scores on its row (`metrics["benchmarks"]`)
and, on a candidate, the comparison with the active model it was judged against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st


def benchmark_rows(versions: Sequence[Any]) -> list[dict[str, Any]]:
    """One row per version with scores: each benchmark's score, and a candidate's drops against its active model."""
    rows = []
    for version in versions:
        metrics = version.metrics or {}
        scores = metrics.get("benchmarks") or {}
        if not scores:
            continue
        gates = (metrics.get("retrain") or {}).get("benchmarks") or {}
        row: dict[str, Any] = {"version": version.name, "status": version.status}
        for name, score in sorted(scores.items()):
            row[f"{name} ({score.get('metric', 'score')})"] = score.get("score")
            if name in gates:
                row[f"{name}: drop vs active (margin)"] = f"{gates[name]['drop']:+.2f} ({gates[name]['margin']:.2f})"
        rows.append(row)
    return rows


def show_benchmark_scores(versions: Sequence[Any]) -> None:
    """The section of the Models page: the table, or how to get scores."""
    st.subheader("Paper benchmarks")
    rows = benchmark_rows(versions)
    if not rows:
        st.caption("No benchmark scores yet: set retrain.benchmarks (RETRAIN__BENCHMARKS) and the retrain scores both models.")
        return
    st.dataframe(rows, hide_index=True, width="stretch")
