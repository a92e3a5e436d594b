"""The job commands of `llava-labeler`, run as a user would (settings from the environment)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from entrypoints.settings import get_settings
from entrypoints.cli.main import app

SCHEMA = Path(__file__).parents[1] / "data" / "schemas" / "shapes.json"


@pytest.fixture
def cli(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """invoke(*args) -> (exit code, output) with this test's embedded-default settings."""
    env = {
        "LLAVA_LABELER_DATA_DIR": str(tmp_path / "data"),
        "LLAVA_LABELER_DATABASE_URL": f"sqlite:///{tmp_path}/data/labeler.db",
        "LLAVA_LABELER_BROKER_URL": f"sqla+sqlite:///{tmp_path}/data/broker.db",
        "LLAVA_LABELER_ENGINE__MODEL": str(tiny_model_dir),
        "LLAVA_LABELER_LABELER__BATCH_SIZE": "2",
        "LLAVA_LABELER_LABELER__METRICS_PORT": "0",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    runner = CliRunner()

    def invoke(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, list(args))
        return result.exit_code, result.output

    yield invoke
    get_settings.cache_clear()


def _manifest(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_run_scores_against_references_and_writes_exports(cli, tmp_path: Path, png) -> None:
    for name in ("a", "b"):
        (tmp_path / f"{name}.png").write_bytes(png(ord(name)))
    (tmp_path / "c.png").write_bytes(b"")
    code, out = cli("run", str(_manifest(tmp_path / "first.jsonl", [{"image": "a.png"}])), "--max-new-tokens", "6")
    assert code == 0, out
    export = re.search(r"export jsonl: (\S+) \(1 records\)", out).group(1)
    said = json.loads(Path(export).read_text())["prediction"]["text"]
    # Greedy decoding is deterministic: the same image gets the same caption, so a.png matches its reference.
    second = _manifest(
        tmp_path / "second.jsonl",
        [{"image": "a.png", "reference": said.upper() + "."}, {"image": "b.png", "reference": "not it"}, {"image": "c.png", "reference": "x"}],
    )
    code, out = cli("run", str(second), "--max-new-tokens", "6", "--out", str(tmp_path / "exports"))
    assert code == 0, out
    assert "job 2 [completed] caption" in out and "3 items - 2 done, 1 failed" in out
    assert "failed: " in out and "c.png: empty file" in out
    assert "accuracy 33.3% (1/3 items with a reference, 1 without an answer count as wrong)" in out
    for fmt, suffix in (("jsonl", ".jsonl"), ("coco", ".coco.json"), ("label-studio", ".label-studio.json")):
        path = tmp_path / "exports" / f"job-2{suffix}"
        assert f"export {fmt}: {path}" in out and path.is_file()


def test_run_json_task_reports_field_accuracy(cli, tmp_path: Path, png) -> None:
    (tmp_path / "a.png").write_bytes(png(1))
    truth = {"shape": "circle", "color": "red", "count": 1, "position": "center"}
    manifest = _manifest(tmp_path / "m.jsonl", [{"image": "a.png", "question": "What shapes are there?", "reference": truth}])
    code, out = cli("run", str(manifest), "--task", "json", "--schema", str(SCHEMA), "--max-new-tokens", "96")
    assert code == 0, out
    assert re.search(r"accuracy \d+\.\d% \([01]/1 items with a reference\); by field: color \d+\.\d%, count \d+\.\d%, position", out), out


def test_job_commands_and_their_errors(cli, tmp_path: Path, png) -> None:
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(png(i))
    code, out = cli("submit", str(tmp_path / "imgs"), "--name", "first")
    assert code == 0 and "submitted: job 1 [queued] caption" in out and "3 items" in out, out
    code, out = cli("status", "1", "--json")
    assert code == 0 and json.loads(out)["pending"] == 3
    code, out = cli("status")
    assert code == 0 and "queued" in out
    assert "[paused]" in cli("pause", "1")[1]
    assert "[queued]" in cli("resume", "1")[1]
    assert "[cancelled]" in cli("cancel", "1")[1] and "3 cancelled" in cli("status", "1")[1]
    assert cli("cancel", "1") == (1, "error: cannot cancel job 1: it is cancelled\n")
    assert cli("retry-failed", "1") == (1, "error: cannot retry job 1: it is cancelled\n")
    assert cli("status", "99") == (1, "error: no job 99\n")
    code, out = cli("export", "1", "--format", "llava")
    assert code == 0 and "0 records written to" in out and "job-1.llava.json" in out
    assert cli("export", "1", "--format", "csv")[1].startswith("error: unknown export format 'csv'")
    code, out = cli("submit", str(tmp_path / "missing"))
    assert code == 1 and out.startswith("error: source not found")
    code, out = cli("submit", str(tmp_path / "imgs"), "--task", "json")
    assert (code, out) == (1, "error: a json task needs a JSON schema (--schema)\n")
    (tmp_path / "bad.jsonl").write_text('{"image": "0.png"}\n{oops\n')
    code, out = cli("submit", str(tmp_path / "bad.jsonl"))
    assert code == 1 and "bad.jsonl line 2: not valid JSON" in out
    assert [line.split()[1] for line in cli("status")[1].splitlines() if line.startswith("│")] == ["1"], "failed submits write nothing"


def test_openai_batch_files_through_submit_and_export(cli, tmp_path: Path, png, wait_for, monkeypatch) -> None:
    """An OpenAI Batch input file as jobs without the API server, and the job back as OpenAI's output file."""
    import base64

    from labeler.worker import InProcessWorker, load_engine

    monkeypatch.setenv("LLAVA_LABELER_FETCH__ALLOWED_ROOTS", json.dumps([str(tmp_path)]))
    get_settings.cache_clear()
    (tmp_path / "a.png").write_bytes(png(1))

    def line(custom_id: str | None, url: str, text: str = "") -> dict:
        content = [{"type": "text", "text": text}] if text else []
        body = {"model": "llava", "messages": [{"role": "user", "content": [*content, {"type": "image_url", "image_url": {"url": url}}]}]}
        return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": {**body, "max_tokens": 6}}

    inline = "data:image/png;base64," + base64.b64encode(png(2)).decode()
    lines = [line("by-path", str(tmp_path / "a.png")), line("inline", inline, "What is it?"), line(None, inline)]
    requests = _manifest(tmp_path / "requests.jsonl", lines)
    code, out = cli("submit", str(requests), "--format", "openai-batch")
    assert code == 0 and re.search(r"batch batch_\w+: 3 requests; jobs 1; 1 refused", out), out
    assert 'refused: line 3 (None): needs a "custom_id"' in out, out

    settings = get_settings()
    with InProcessWorker(settings, load_engine(settings)):
        wait_for(lambda: json.loads(cli("status", "1", "--json")[1])["pending"] == 0, 120, "the batch's job to finish")
    code, out = cli("export", "1", "--format", "openai-batch", "--out", str(tmp_path / "out.jsonl"))
    assert code == 0 and "2 responses written to" in out and "0 errors written to" in out, out
    answers = {r["custom_id"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert set(answers) == {"by-path", "inline"}
    body = answers["inline"]["response"]["body"]
    assert answers["inline"]["response"]["status_code"] == 200 and body["object"] == "chat.completion"
    assert isinstance(body["choices"][0]["message"]["content"], str) and answers["inline"]["error"] is None
    assert (tmp_path / "out.errors.jsonl").read_text() == ""
    assert cli("submit", str(tmp_path / "a.png"), "--format", "openai-batch")[1].startswith("error: ")
