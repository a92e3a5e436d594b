"""The closed loop, measured: a model that never saw two colours gets them right after one turn.

A small weak model (the learning test's recipe, purple and orange kept out of its image-text
data) labels a fresh batch; a simulated reviewer corrects it through the service layer the
console uses; `retrain` finetunes (replay mixed in), evaluates and promotes; the promoted model
is measured on held-out images it never saw, against the weak model. Every step is seeded.
"""

import dataclasses
import json

import pytest
from sqlalchemy import select

from entrypoints.settings import Settings
from labeler.loop_demo import LoopDemoError, LoopSizes, run_loop_demo
from labeler.models import ModelVersion, Review
from labeler.service import Labeler
from training.demo import build_demo

from .training.test_learning import SMALL

WITHHELD = ("purple", "orange")
# The learning test's small recipe (about 3.5 minutes), with two colours kept out of its image-text data.
WEAK = dataclasses.replace(SMALL, eval_images=20, withheld_colours=WITHHELD)
SIZES = LoopSizes(batch_images=240, heldout_images=90, replay_records=240)


@pytest.mark.slow
def test_one_turn_of_the_loop_teaches_the_colours_the_model_never_saw(tmp_path):
    build_demo(tmp_path / "weak", WEAK, echo=lambda line: None)
    lines: list[str] = []
    report = run_loop_demo(tmp_path / "weak", tmp_path / "loop", WITHHELD, Settings(), sizes=SIZES, echo=lines.append)
    table = report.markdown()

    rows = {(name, label): (before, after) for name, label, before, after in report.rows()}
    before, after = rows[("withheld", "JSON colour field")]
    # The weak model cannot name a colour its image-text data never showed; one loop teaches it.
    assert before <= 0.2, table
    assert after - before >= 0.3, table
    seen_before, seen_after = rows[("seen", "JSON colour field")]
    assert seen_after >= seen_before - 0.1, table  # the replay keeps what it knew

    assert report.job["items"] == SIZES.batch_images
    assert report.reviews["edit"] > 0 and sum(report.reviews.values()) == SIZES.batch_images
    assert report.retrain["decision"] == "promoted"
    assert report.retrain["data"]["replay"] == SIZES.replay_records

    labeler = Labeler(Settings(database_url=f"sqlite:///{tmp_path / 'loop' / 'labeler.db'}"))
    active = labeler.active_model_version()
    assert active is not None and active.parent == str((tmp_path / "weak").resolve())
    assert active.metrics["retrain"]["decision"] == "promoted" and active.metrics["retrain"]["lora"] is False
    with labeler.db.read() as session:
        reviewers = set(session.scalars(select(Review.reviewer)))
        versions = session.scalars(select(ModelVersion)).all()
    assert reviewers == {"simulated-reviewer"}
    # The weak model, registered as the first candidate's parent, and the promoted candidate.
    assert sorted((v.status, v.name == str((tmp_path / "weak").resolve())) for v in versions) == [("active", False), ("candidate", True)]
    saved = json.loads((tmp_path / "loop" / "loop_report.json").read_text())
    assert saved["scores"]["withheld"]["after"] == report.scores["withheld"]["after"]
    assert (tmp_path / "loop" / "loop_report.md").read_text().startswith("| held-out images |")


def test_the_loop_refuses_a_missing_model_or_a_used_directory(tmp_path):
    with pytest.raises(LoopDemoError, match="no model at"):
        run_loop_demo(tmp_path / "none", tmp_path / "loop", WITHHELD, Settings())
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / "labeler.db").write_text("")
    with pytest.raises(LoopDemoError, match="not empty"):
        run_loop_demo(tmp_path / "model", tmp_path / "loop", WITHHELD, Settings())
