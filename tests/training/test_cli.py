"""The training commands on the root CLI: mounted, fast to list, one-way dependencies, `eval` end to end."""

import ast
import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from entrypoints.cli.main import app

REPO = Path(__file__).resolve().parents[2]


def test_commands_are_mounted_and_help_does_not_import_torch():
    result = CliRunner().invoke(app, ["--help"])
    for command in ("data", "train", "eval", "demo-model"):
        assert command in result.output
    code = "import sys, entrypoints.cli.main; sys.exit('torch' in sys.modules or 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_training_imports_only_engine_never_labeler():
    for path in (REPO / "training").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.split(".")[0] in ("labeler", "ui")], path


def test_eval_runs_the_engine_and_prints_a_table_per_question_type(tiny_model_dir, shapes_dir, tmp_path):
    out = tmp_path / "scores.json"
    result = CliRunner().invoke(
        app, ["eval", "--model", str(tiny_model_dir), "--data", str(shapes_dir / "eval.json"),
              "--images", str(shapes_dir / "images"), "--out", str(out), "--batch-size", "8"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for row in ("color", "shape", "count", "position", "pope", "mc", "json", "vqa_accuracy", "exact_match", "f1"):
        assert row in result.output
    report = json.loads(out.read_text())
    scores, outputs = report["scores"], report["outputs"]
    assert scores["pope"]["n"] == 12 and scores["color"]["n"] == 6
    assert scores["json"]["validity"] == 1.0  # a random model still answers valid JSON: decoding is constrained
    items = json.loads((shapes_dir / "eval.json").read_text())
    assert [o["id"] for o in outputs] == [i["id"] for i in items]


def test_eval_names_a_bad_file(tiny_model_dir, tmp_path):
    (tmp_path / "eval.json").write_text('[{"id": "q1", "image": "a.png"}]')
    result = CliRunner().invoke(app, ["eval", "--model", str(tiny_model_dir), "--data", str(tmp_path / "eval.json"), "--images", str(tmp_path)])
    assert result.exit_code == 1 and "evaluation item q1 lacks type, task, question" in result.output
