"""A labeler job end to end through the predictor: the workers' engine is one setting away."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from engine.backend import GenerationRequest

CLI = Path(sys.executable).with_name("llava-labeler")


def _items_served(url: str) -> float:
    families = text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
    return sum(s.value for f in families for s in f.samples if s.name == "llava_batch_size_sum")


def test_a_job_runs_through_the_predictor_and_matches_in_process(predictor, tiny_backend, png, tmp_path):
    colours = ["red", "green", "blue", "orange", "purple"]
    for colour in colours:
        (tmp_path / f"{colour}.png").write_bytes(png(colour))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    env = {
        **os.environ,
        "LLAVA_LABELER_DATA_DIR": str(tmp_path / "data"),
        "LLAVA_LABELER_DATABASE_URL": f"sqlite:///{tmp_path}/data/labeler.db",
        "LLAVA_LABELER_BROKER_URL": f"sqla+sqlite:///{tmp_path}/data/broker.db",
        "LLAVA_LABELER_ENGINE__MODEL": str(tmp_path / "no-model-here"),  # proves nothing loads in-process
        "LLAVA_LABELER_ENGINE__URL": predictor.url,
        "LLAVA_LABELER_LABELER__BATCH_SIZE": "4",
        "LLAVA_LABELER_LABELER__METRICS_PORT": "0",
    }
    before = _items_served(predictor.url)
    run = subprocess.run(
        [str(CLI), "run", str(tmp_path), "--max-new-tokens", "8", "--out", str(tmp_path / "exports")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "6 items - 5 done, 1 failed" in run.stdout, run.stdout
    assert "broken.png: not an image" in run.stdout
    assert _items_served(predictor.url) - before == len(colours), "every good item went through the predictor"

    records = [json.loads(line) for line in (tmp_path / "exports" / "job-1.jsonl").read_text().splitlines()]
    served = {Path(r["uri"]).stem: r["prediction"]["text"] for r in records if r["status"] == "done"}
    local = tiny_backend.generate(
        [GenerationRequest(image=tmp_path / f"{c}.png", task="caption", max_new_tokens=8) for c in colours]
    )
    assert served == {c: result.text for c, result in zip(colours, local)}, "greedy answers equal the in-process engine's"
