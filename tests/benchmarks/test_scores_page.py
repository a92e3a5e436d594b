"""The Models page's benchmark section: each version's scores, and a candidate's drop against its active model."""

from __future__ import annotations

from types import SimpleNamespace

from ui.views.benchmark_scores import benchmark_rows

METRIC = "F1, mean of the splits (%)"


def test_each_version_with_scores_is_a_row_and_a_candidate_shows_its_drop() -> None:
    gate = {"pope": {"candidate": 80.0, "active": 85.5, "drop": 5.5, "margin": 1.0, "metric": METRIC}}
    versions = [
        SimpleNamespace(name="v1", status="active", metrics={"benchmarks": {"pope": {"score": 85.5, "metric": METRIC}}}),
        SimpleNamespace(name="retrain-1", status="rejected",
                        metrics={"benchmarks": {"pope": {"score": 80.0, "metric": METRIC}}, "retrain": {"benchmarks": gate}}),  # fmt: skip
        SimpleNamespace(name="v0", status="retired", metrics={"accuracy": 0.5}),
        SimpleNamespace(name="base", status="candidate", metrics=None),
    ]
    assert benchmark_rows(versions) == [
        {"version": "v1", "status": "active", f"pope ({METRIC})": 85.5},
        {"version": "retrain-1", "status": "rejected", f"pope ({METRIC})": 80.0, "pope: drop vs active (margin)": "+5.50 (1.00)"},
    ]
