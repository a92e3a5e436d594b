"""`llava-labeler benchmark list | run | score`: LLaVA-1.5's paper benchmarks, scored as the official scripts score them.

Heavy imports (torch, transformers, pandas) happen inside the commands. Errors a person must
fix (a missing file of the benchmark's layout, a malformed answer file) end in one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from entrypoints.cli.errors import fail

app = typer.Typer(help="LLaVA-1.5's paper benchmarks: run a model on one, or score an answer file.", no_args_is_help=True)
Name = Annotated[str, typer.Argument(help="The benchmark (`benchmark list` shows them).")]
Data = Annotated[Path, typer.Option(help="The benchmark's folder in LLaVA's layout (playground/data/eval/<name>).")]


@app.command("list")
def list_benchmarks() -> None:
    """Every benchmark: its name, what it reports and the files its folder holds."""
    from training.benchmarks import BENCHMARKS

    for bench in BENCHMARKS.values():
        typer.echo(f"{bench.name:<10} {bench.title}\n{'':<10} files: {bench.layout}")


@app.command()
def run(
    name: Name,
    model: Annotated[str, typer.Option(help="Checkpoint (path or hub id) to evaluate.")],
    data: Data,
    out: Annotated[
        Optional[Path],
        typer.Option(help="Where answers.jsonl, scores.json and the upload file go (default: build/benchmarks/NAME/MODEL)."),
    ] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Ask only the first N questions (a quick check).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Questions per engine batch.")] = 32,
    max_new_tokens: Annotated[
        Optional[int], typer.Option(min=1, help="Token budget per answer (default: the benchmark script's).")
    ] = None,
) -> None:
    """Answer the benchmark's questions (batched; a killed run resumes), then write the scores and the upload file."""
    from engine.backend import EngineError
    from engine.backends import load_backend
    from entrypoints.cli.train import _with_progress
    from entrypoints.settings import get_settings
    from training import benchmarks
    from training.benchmarks import runner
    from training.records import DataError

    try:
        bench = benchmarks.get(name)
        questions = bench.questions(data)[:limit]
        model_id = Path(model.rstrip("/")).name  # as LLaVA's scripts name a model: its folder
        target = out or Path("build/benchmarks") / bench.name / model_id
        backend = load_backend(get_settings(), model=model, max_batch_size=batch_size)
        outcome = _with_progress(
            lambda tick: runner.run(
                bench, backend, data, questions, target, model_id=model_id,
                batch_size=batch_size, max_new_tokens=max_new_tokens, progress=tick,
            ),
            len(questions),
        )  # fmt: skip
    except (DataError, EngineError) as exc:
        fail(str(exc))
    typer.echo(f"{bench.name}: {outcome.asked} questions answered now, {outcome.answered} of {outcome.questions} in {outcome.answers}")
    _report(outcome)


@app.command()
def score(
    name: Name,
    data: Data,
    answers: Annotated[Path, typer.Option(help="A LLaVA answer file (JSON lines), ours or the original scripts'.")],
    out: Annotated[Optional[Path], typer.Option(help="Also write scores.json and the upload file here.")] = None,
) -> None:
    """Score an answer file as the benchmark's official scorer does (and write its upload file with --out)."""
    from training import benchmarks
    from training.benchmarks import runner
    from training.records import DataError

    try:
        outcome = runner.score(benchmarks.get(name), data, answers, out)
    except DataError as exc:
        fail(str(exc))
    _report(outcome)


def _report(outcome) -> None:
    if outcome.scores is not None:
        typer.echo(json.dumps(outcome.scores, indent=1))
    else:
        typer.echo("the answers of this benchmark are private: upload the file below to its server")
    if outcome.submission is not None:
        typer.echo(f"upload file: {outcome.submission}")


def register(root: typer.Typer) -> None:
    """Mount `benchmark` on the root CLI."""
    root.add_typer(app, name="benchmark")
