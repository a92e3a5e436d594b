"""`llava-labeler retrain` end to end: real reviews in SQLite and PostgreSQL, real `train` and `eval` processes.

The tiny model learns nothing useful in two steps, so the decision is steered by the
margin: -1 promotes whatever the scores are, +1 rejects whatever they are. What is
checked is the machinery: which reviews count, the files handed to training, the rows
recorded, the lock, and that a failure leaves the active model where it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from labeler.settings import RetrainSettings, RolloutSettings
from entrypoints.settings import Settings
from labeler import jobs, locks
from labeler.batches import BatchProcessor
from labeler.jobs import JobSpec
from labeler.model_store import ModelStoreError, publish
from labeler.retrain import LOCK, RetrainError, overall_score
from labeler.review import PredictionFilter
from labeler.service import Labeler

from .conftest import CLI, _settings_env
from .test_rollout import NAME, NAMESPACE, OLD, chart_isvc
from .test_rollout import fake_api as fake_api  # the fixture, shared

SCHEMA = {
    "type": "object",
    "properties": {"color": {"type": "string", "enum": ["red", "blue"]}},
    "required": ["color"],
    "additionalProperties": False,
}
FAST = RetrainSettings(
    min_reviews=8,
    holdout_fraction=0.25,
    max_steps=2,
    batch_size=4,
    learning_rate=1e-3,
    eval_batch_size=8,
    lock_ttl_s=120,
    extra_train_args=["--per-device-batch-size", "4", "--lora-r", "4", "--lora-alpha", "8", "--no-gradient-checkpointing"],
)
IMAGES = 5  # per job: 5 captions + 5 JSON answers reviewed per round


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None: the test's own SQLite file; else a fresh PostgreSQL database."""
    return None if request.param == "sqlite" else request.getfixturevalue("new_pg_database")()


@pytest.fixture
def make_labeler(labeler_settings, database_url) -> Callable[..., Labeler]:
    def make(**retrain) -> Labeler:
        settings: Settings = labeler_settings(database_url=database_url)
        return Labeler(settings.model_copy(update={"retrain": FAST.model_copy(update=retrain)}))

    return make


@pytest.fixture
def review_round(tmp_path: Path, png, tiny_backend) -> Callable[[Labeler, int], int]:
    """review_round(labeler, n): label a caption job and a JSON job of IMAGES new images, review every answer.

    Half the answers are corrected (edit), the rest accepted, through the service layer the console uses.
    """

    def run(labeler: Labeler, n: int) -> int:
        folder = tmp_path / f"images-{n}"
        folder.mkdir()
        for i in range(IMAGES):
            (folder / f"{i}.png").write_bytes(png(100 * n + i))
        reviewed = 0
        for spec, corrected in (
            (JobSpec(task="caption", max_new_tokens=6), "a red circle on noise"),
            (JobSpec(task="json", schema=SCHEMA, max_new_tokens=24), {"color": "red"}),
        ):
            job = labeler.submit(str(folder), spec)
            processor = BatchProcessor(labeler.db, labeler.settings, lambda: tiny_backend)
            processor.process(job.id, list(jobs.pending_item_ids(labeler.db, job.id)))
            while task := labeler.next_for_review("alice", PredictionFilter(job_id=job.id, review_state="unreviewed")):
                edit = reviewed % 2 == 0
                labeler.record_review(task.prediction_id, "alice", "edit" if edit else "accept", corrected if edit else None)
                reviewed += 1
        return reviewed

    return run


def _replay_file(folder: Path, png) -> Path:
    """Three records of "earlier training data" in LLaVA's format, their images under `folder`."""
    (folder / "shapes").mkdir(parents=True)
    records = []
    for i in range(3):
        (folder / "shapes" / f"{i}.png").write_bytes(png(900 + i))
        turns = [{"from": "human", "value": "<image>\nWhat colour is the circle?"}, {"from": "gpt", "value": "red"}]
        records.append({"id": f"earlier-{i}", "image": f"shapes/{i}.png", "conversations": turns})
    (folder / "mix.json").write_text(json.dumps(records))
    return folder / "mix.json"


def _retrain_cli(labeler: Labeler, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **_settings_env(labeler.settings)}
    for key, value in labeler.settings.retrain.model_dump().items():
        env[f"LLAVA_LABELER_RETRAIN__{key.upper()}"] = json.dumps(value) if isinstance(value, list) else str(value)
    return subprocess.run([str(CLI), "retrain", *args], env=env, capture_output=True, text=True, timeout=300)


def _versions(labeler: Labeler) -> dict[str, object]:
    return {v.name: v for v in labeler.list_model_versions()}


def test_too_few_reviews_exits_0_and_changes_nothing(make_labeler, review_round) -> None:
    labeler = make_labeler()
    reviewed = review_round(labeler, 0)
    before = _versions(labeler)
    result = _retrain_cli(labeler, "--min-reviews", str(reviewed + 1))
    assert result.returncode == 0, result.stderr
    assert f"{reviewed} new reviews, fewer than the {reviewed + 1}" in result.stdout
    assert _versions(labeler) == before
    assert not (Path(labeler.settings.data_dir) / "retrain").exists()
    locks.release(labeler.db, locks.acquire(labeler.db, LOCK, 5))  # the lock was left free


def test_promotes_by_the_margin_rolls_out_and_then_counts_only_newer_reviews(
    labeler_settings, review_round, fake_api, png, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster, _ = fake_api(chart_isvc())
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": cluster.url}}],
        "users": [{"name": "retrain", "user": {"token": "unused"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "retrain"}}],
        "current-context": "fake",
    }
    (tmp_path / "kubeconfig").write_text(json.dumps(kubeconfig))  # JSON is YAML
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    store = "pvc://llava-labeler-models/llava-1.5-7b"
    mount = tmp_path / "model-store"  # the chart mounts the claim and sets this path
    rollout = RolloutSettings(
        inference_service=NAME, namespace=NAMESPACE, model_store_uri=store, model_store_path=mount, poll_s=0.01
    )
    replay = {"replay_file": _replay_file(tmp_path / "earlier", png), "replay_images": tmp_path / "earlier", "replay_count": 2}
    retrain = FAST.model_copy(update={"margin": -1.0, **replay})
    settings = labeler_settings().model_copy(update={"retrain": retrain, "rollout": rollout})
    labeler = Labeler(settings)
    first_round = review_round(labeler, 0)
    outcome = labeler.retrain(echo=lambda line: None)
    assert outcome.decision == "promoted" and outcome.reviews == first_round
    versions = _versions(labeler)
    promoted = versions[outcome.candidate]
    base = labeler.settings.engine.model
    assert promoted.status == "active" and promoted.parent == base and versions[base].status == "candidate"
    facts = promoted.metrics["retrain"]
    assert facts["data"] == {"reviewed": first_round, "train_reviewed": 7, "held_out": 3, "replay": 2}
    work = Path(labeler.settings.data_dir) / "retrain" / outcome.candidate
    trained = json.loads((work / "train.json").read_text())
    assert len(trained) == 9 and all((work / "images" / r["image"]).is_file() for r in trained)
    assert sum(r["id"].startswith("earlier-") for r in trained) == 2 and sum(r["id"].startswith("job") for r in trained) == 7
    assert facts["training"]["global_steps"] == 2 and facts["lora"] is True
    evaluation = facts["evaluation"]
    assert {"candidate", "active", "margin"} <= set(evaluation) and evaluation["active"]["version"] == base
    assert 0.0 <= evaluation["candidate"]["score"] <= 1.0 and facts["decision"] == "promoted" and "margin" in facts["reason"]
    assert Path(promoted.uri) == mount.resolve() / outcome.candidate and (Path(promoted.uri) / "config.json").is_file()
    assert facts["published"] == {"uri": promoted.uri, "serving_uri": f"{store}/{outcome.candidate}"}
    assert labeler.settings_for_new_jobs().engine.model == promoted.uri  # embedded workers: new jobs run the promoted checkpoint
    predictor_env = cluster.isvc["spec"]["predictor"]["containers"][0]["env"]
    assert {"name": "STORAGE_URI", "value": f"{store}/{outcome.candidate}"} in predictor_env  # the cluster's predictor
    assert facts["rollout"]["mode"] == "kserve" and facts["rollout"]["previous_uri"] == OLD
    held_out = json.loads((Path(labeler.settings.data_dir) / "retrain" / outcome.candidate / "eval.json").read_text())
    kinds = {item["task"]: item for item in held_out}
    assert set(kinds) == {"caption", "json"}, "both jobs' tasks are in the held-out slice (seed 0)"
    assert set(kinds["json"]["truth"]) == {"color"} and kinds["json"]["schema"] == SCHEMA
    assert isinstance(kinds["caption"]["reference"], str)

    second_round = review_round(labeler, 1)
    planned = labeler.retrain(dry_run=True, echo=lambda line: None)
    assert planned.decision == "dry-run" and planned.reviews == second_round  # the first round's reviews were used up
    assert f"would finetune {promoted.uri}" in planned.reason  # from the promoted version
    assert _versions(labeler).keys() == versions.keys()


def test_an_object_store_gets_the_promoted_version_and_the_next_retrain_starts_from_it(
    labeler_settings, review_round, tmp_path: Path
) -> None:
    """A real fsspec store (file://, the code path of s3:// and gs://): upload, record, download."""
    store = f"file://{tmp_path / 'bucket' / 'llava'}"
    settings = labeler_settings().model_copy(
        update={"retrain": FAST.model_copy(update={"margin": -1.0}), "rollout": RolloutSettings(model_store_uri=store)}
    )
    labeler = Labeler(settings)
    review_round(labeler, 0)
    first = labeler.retrain(echo=lambda line: None)
    version = _versions(labeler)[first.candidate]
    assert version.status == "active" and version.uri == f"{store}/{first.candidate}"
    assert (tmp_path / "bucket" / "llava" / first.candidate / "config.json").is_file()
    assert first.metrics["published"] == {"uri": version.uri, "serving_uri": version.uri}

    review_round(labeler, 1)
    lines: list[str] = []
    second = labeler.retrain(echo=lines.append)
    assert second.decision == "promoted" and _versions(labeler)[second.candidate].parent == first.candidate
    cached = Path(labeler.settings.data_dir) / "cache" / "models" / first.candidate
    assert (cached / "config.json").is_file(), "the active version was downloaded to train from"
    assert any(line.startswith(f"retrain: finetuning {cached} ") for line in lines)
    again = tmp_path / "again"
    again.mkdir()
    (again / "config.json").write_text("{}")
    with pytest.raises(ModelStoreError, match="already exists in the model store; not overwriting"):
        publish(labeler.settings, again, first.candidate)


def test_a_trtllm_predictor_needs_an_engine_build_and_without_tensorrt_llm_nothing_is_promoted(
    labeler_settings, review_round, tmp_path: Path
) -> None:
    """This machine has no TensorRT-LLM (no GPU): the build step fails before promotion, as it must."""
    store = f"file://{tmp_path / 'bucket'}"
    rollout = RolloutSettings(model_store_uri=store, engine_build=True, engine_build_args=["--max-batch-size", "4"])
    settings = labeler_settings().model_copy(update={"retrain": FAST.model_copy(update={"margin": -1.0}), "rollout": rollout})
    labeler = Labeler(settings)
    labeler.register_model_version("v1", labeler.settings.engine.model, status="active")
    review_round(labeler, 0)
    with pytest.raises(RetrainError, match="TensorRT-LLM engine build failed .*tensorrt_llm is not installed"):
        labeler.retrain(echo=lambda line: None)
    versions = _versions(labeler)
    (failed,) = [v for v in versions.values() if v.name.startswith("retrain-")]
    assert failed.status == "failed" and versions["v1"].status == "active"
    assert not (tmp_path / "bucket").exists(), "nothing published"
    assert "published" not in failed.metrics["retrain"] and "rollout" not in failed.metrics["retrain"]


def test_a_volume_store_must_be_mounted(labeler_settings, review_round) -> None:
    rollout = RolloutSettings(model_store_uri="pvc://models/llava")
    labeler = Labeler(labeler_settings().model_copy(update={"retrain": FAST, "rollout": rollout}))
    review_round(labeler, 0)
    with pytest.raises(RetrainError, match="is a volume: mount it and set rollout.model_store_path"):
        labeler.retrain(echo=lambda line: None)


def test_the_cli_rejects_below_the_margin_and_exits_0_on_postgresql(labeler_settings, new_pg_database, review_round) -> None:
    settings = labeler_settings(database_url=new_pg_database())
    labeler = Labeler(settings.model_copy(update={"retrain": FAST.model_copy(update={"margin": 1.0})}))
    review_round(labeler, 0)
    labeler.register_model_version("v1", labeler.settings.engine.model, status="active")
    review_round(labeler, 1)
    result = _retrain_cli(labeler)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "retrain: 10 reviews accepted or edited since" in result.stdout, "only the reviews made after v1"
    assert "retrain: registered candidate" in result.stdout and "rejected: candidate" in result.stdout
    assert "  | " in result.stdout, "the training process's output is shown as it runs"
    versions = _versions(labeler)
    (rejected,) = [v for v in versions.values() if v.name.startswith("retrain-")]
    assert rejected.status == "rejected" and rejected.parent == "v1"
    facts = rejected.metrics["retrain"]
    assert facts["decision"] == "rejected" and "below the margin +1.0000" in facts["reason"]
    assert facts["evaluation"]["active"]["version"] == "v1" and facts["data"]["held_out"] == 3
    assert labeler.active_model_version().name == "v1" and labeler.model_for_new_jobs() == labeler.settings.engine.model


def test_a_failing_training_leaves_the_active_version_untouched(labeler_settings, review_round) -> None:
    failing = FAST.model_copy(update={"extra_train_args": [*FAST.extra_train_args, "--max-length", "8"]})  # every record too long
    labeler = Labeler(labeler_settings().model_copy(update={"retrain": failing}))
    labeler.register_model_version("v1", labeler.settings.engine.model, status="active")
    review_round(labeler, 0)
    with pytest.raises(RetrainError, match="training failed"):
        labeler.retrain(echo=lambda line: None)
    versions = _versions(labeler)
    assert versions["v1"].status == "active" and labeler.active_model_version().name == "v1"
    (failed,) = [v for v in versions.values() if v.name.startswith("retrain-")]
    assert failed.status == "failed" and failed.parent == "v1"
    assert "training failed" in failed.metrics["retrain"]["reason"] and failed.metrics["retrain"]["decision"] == "failed"
    locks.release(labeler.db, locks.acquire(labeler.db, LOCK, 5))  # released after the failure


def test_a_second_retrain_is_refused_while_the_lock_is_held(make_labeler) -> None:
    labeler = make_labeler()
    held = locks.acquire(labeler.db, LOCK, 60, owner="retrain-pod-1")
    with pytest.raises(locks.LockHeld, match="locked by retrain-pod-1"):
        labeler.retrain(echo=lambda line: None)
    result = _retrain_cli(labeler)
    assert result.returncode == 3 and "another retrain is running" in result.stderr
    assert not [v for v in labeler.list_model_versions() if v.name.startswith("retrain-")]
    locks.release(labeler.db, held)


def test_an_expired_lock_is_free_and_a_lock_is_renewed(labeler_settings) -> None:
    db = Labeler(labeler_settings()).db
    locks.acquire(db, LOCK, 0.05, owner="crashed")
    time.sleep(0.1)
    with locks.holding(db, LOCK, 0.3) as mine:  # the crashed holder's lock expired
        time.sleep(0.7)
        assert locks.still_held(db, mine), "renewed in the background past its first expiry"
        with pytest.raises(locks.LockHeld):
            locks.acquire(db, LOCK, 60)
    assert not locks.still_held(db, mine) and not locks.renew(db, mine, 60)


def test_overall_score_weights_each_type_by_its_size() -> None:
    table = {
        "job1-json": {"n": 3, "validity": 1.0, "exact_match": 0.0, "fields": {"color": 1.0, "shape": 0.0}},
        "job2-caption": {"n": 1, "token_f1": 1.0, "exact_match": 1.0},
    }
    assert overall_score(table) == pytest.approx((3 * 0.5 + 1 * 1.0) / 4)
