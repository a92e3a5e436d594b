"""`llava-labeler predict` and `model init-tiny`, run as a user runs them: a real process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"

CLI = [str(Path(sys.executable).with_name("llava-labeler"))]
IMAGE = DATA / "images" / "red-circle.png"
SCHEMA = DATA / "schemas" / "shapes.json"


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def assert_one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], proc.stderr


def test_predict_prints_one_json_object(tiny_model_dir):
    proc = run("predict", "--model", str(tiny_model_dir), "--image", str(IMAGE), "--max-new-tokens", "5")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) == {"text", "json", "finish_reason", "tokens", "prompt_tokens", "confidence", "field_confidence", "error"}
    assert result["tokens"] == 5 and result["finish_reason"] == "length" and result["error"] is None and result["field_confidence"] is None


def test_predict_with_a_schema_returns_parsed_json(tiny_model_dir):
    proc = run("predict", "--model", str(tiny_model_dir), "--image", str(IMAGE), "--schema", str(SCHEMA),
               "--question", "What is in the image?", "--max-new-tokens", "60")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result["json"]) == {"shape", "color", "count", "position"}
    assert result["finish_reason"] == "stop"


@pytest.mark.parametrize(
    "make_args, fragment",
    [
        (lambda tmp, model: ["--model", model, "--image", str(tmp / "nope.png")], "no such image file"),
        (lambda tmp, model: ["--model", model, "--image", str(DATA / "schemas" / "shapes.json")], "not an image"),
        (lambda tmp, model: ["--model", str(tmp / "no-model"), "--image", str(IMAGE)], "no checkpoint at"),
        (lambda tmp, model: ["--model", model, "--image", str(IMAGE), "--schema", __file__], "is not valid JSON"),
        (lambda tmp, model: ["--model", model, "--image", str(IMAGE), "--task", "vqa"], "needs a question"),
        (lambda tmp, model: ["--model", model, "--image", str(IMAGE), "--task", "ocr"], "--task: Input should be 'caption', 'vqa' or 'json'"),
    ],
    ids=["missing-image", "not-an-image", "missing-model", "schema-not-json", "vqa-without-question", "bad-task"],
)
def test_predict_errors_are_one_line_without_traceback(tiny_model_dir, tmp_path, make_args, fragment):
    assert_one_line_error(run("predict", *make_args(tmp_path, str(tiny_model_dir))), fragment)


def test_invalid_schema_is_named(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "object", "properties": {"n": {"type": "integr"}}}))
    proc = run("predict", "--model", str(tiny_model_dir), "--image", str(IMAGE), "--schema", str(bad))
    assert_one_line_error(proc, "invalid JSON schema at properties/n/type")


def test_unreachable_hub_id_is_a_clear_error():
    proc = run("predict", "--model", "llava-hf/llava-1.5-7b-hf", "--image", str(IMAGE), env={"HF_HUB_OFFLINE": "1"})
    assert_one_line_error(proc, "could not load the checkpoint llava-hf/llava-1.5-7b-hf")


def test_init_tiny_builds_a_loadable_model_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "tiny"
    proc = run("model", "init-tiny", str(out), "--vocab-size", "600")
    assert proc.returncode == 0, proc.stderr
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert_one_line_error(run("model", "init-tiny", str(out)), "exists and is not empty")
    proc = run("predict", "--model", str(out), "--image", str(IMAGE), "--max-new-tokens", "2")
    assert proc.returncode == 0 and json.loads(proc.stdout)["tokens"] == 2
