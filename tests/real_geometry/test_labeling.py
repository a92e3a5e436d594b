"""A labeling job end to end at the real geometry: `llava-labeler run` in process, and the same job through the predictor."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import jsonschema
import pytest

from .conftest import CLI, REPO


def _manifest(shapes: Path) -> Path:
    """The held-out JSON questions (with references) and the four training images, all at 336 px."""
    lines = (shapes / "eval-json.jsonl").read_text().splitlines()
    lines += [json.dumps({"image": f"images/train/{i:06d}.png", "question": "What shapes are there?"}) for i in range(4)]
    manifest = shapes / "job.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def _run_job(shapes: Path, work: Path, **env: str) -> list[dict]:
    """`llava-labeler run` on the manifest as a user runs it; the exported JSONL records."""
    settings = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "LLAVA_LABELER_DATA_DIR": str(work / "data"),
        "LLAVA_LABELER_DATABASE_URL": f"sqlite:///{work}/data/labeler.db",
        "LLAVA_LABELER_BROKER_URL": f"sqla+sqlite:///{work}/data/broker.db",
        "LLAVA_LABELER_LABELER__BATCH_SIZE": "3",
        "LLAVA_LABELER_LABELER__METRICS_PORT": "0",
        **env,
    }
    done = subprocess.run(
        [*CLI, "run", str(_manifest(shapes)), "--schema", str(shapes / "schema.json"), "--max-new-tokens", "64",
         "--out", str(work / "exports")],
        env=settings, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 items - 6 done, 0 failed" in done.stdout, done.stdout
    return [json.loads(line) for line in (work / "exports" / "job-1.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def in_process(shapes_336, real_model_dir, tmp_path_factory) -> list[dict]:
    return _run_job(shapes_336, tmp_path_factory.mktemp("job-local"), LLAVA_LABELER_ENGINE__MODEL=str(real_model_dir))


def test_a_job_labels_336_px_shapes_with_valid_json(in_process, shapes_336):
    schema = json.loads((shapes_336 / "schema.json").read_text())
    assert len(in_process) == 6
    for record in in_process:
        assert record["status"] == "done"
        jsonschema.validate(record["prediction"]["json"], schema)


def test_the_same_job_through_the_predictor_gives_the_same_labels(in_process, shapes_336, real_predictor, tmp_path):
    served = _run_job(
        shapes_336, tmp_path,
        LLAVA_LABELER_ENGINE__URL=real_predictor.url,
        LLAVA_LABELER_ENGINE__MODEL=str(tmp_path / "no-model-here"),  # proves nothing loads in-process
    )  # fmt: skip
    assert [r["prediction"]["text"] for r in served] == [r["prediction"]["text"] for r in in_process]
