"""Training commands of the `llava-labeler` CLI: `data shapes`, `train`, `eval`, `demo-model`.

Heavy imports (torch, transformers) happen inside the commands, so `llava-labeler
--help` stays fast. Errors a person must fix end in one line via `fail`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from entrypoints.cli.errors import fail
from entrypoints.cli.model_options import model_options
from training.config import TrainConfig

WithholdColours = Annotated[
    Optional[list[str]],
    typer.Option(help="Keep this colour out of the image-text training data (repeat); the held-out split keeps it."),
]
data_app = typer.Typer(help="Build training and evaluation data.", no_args_is_help=True)


@data_app.command("shapes")
def data_shapes(
    out: Annotated[Path, typer.Option(help="Directory to write images/, pretrain.json, finetune.json, eval.json.")],
    n: Annotated[int, typer.Option(min=1, help="Training images.")] = 10000,
    seed: Annotated[int, typer.Option(help="Same seed, same data set.")] = 0,
    n_eval: Annotated[int, typer.Option(min=0, help="Held-out evaluation images.")] = 200,
    noise: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of images with background noise.")] = 0.3,
    withhold_colour: WithholdColours = None,
) -> None:
    """Render the shapes world: stage-1 captions, the stage-2 instruction mix and a held-out eval split."""
    from rich.progress import Progress

    from training.shapes_data import write_dataset

    try:
        with Progress(transient=True) as bar:
            task = bar.add_task("rendering", total=n + n_eval)
            counts = write_dataset(
                out, n, seed, n_eval=n_eval, noise_fraction=noise, withhold_colours=tuple(withhold_colour or ()),
                progress=lambda k: bar.advance(task, k),
            )  # fmt: skip
    except ValueError as exc:
        fail(str(exc))
    typer.echo(f"shapes world written to {out}: {json.dumps(counts)}")


@model_options(TrainConfig, into="config", config_file=True)
def train(config: TrainConfig) -> None:
    """Train LLaVA-1.5 (stage 1 or 2, full or LoRA) and save a llava-hf checkpoint the engine loads."""
    from engine.backend import EngineError
    from training.records import DataError
    from training.config import TrainingError
    from training.train import run_training

    try:
        metrics = run_training(config)
    except (DataError, TrainingError, EngineError) as exc:
        fail(str(exc))
    if metrics:
        out = config.out
        typer.echo(f"checkpoint written to {out} (final loss {metrics['final_loss']}); metrics in {out / 'train_metrics.json'}")


def evaluate(
    model: Annotated[str, typer.Option(help="Checkpoint to evaluate.")],
    data: Annotated[Path, typer.Option(help="Evaluation JSON (e.g. eval.json of `data shapes`).")],
    images: Annotated[Path, typer.Option(help="Directory the items' image paths are relative to.")],
    out: Annotated[Optional[Path], typer.Option(help="Write the scores and every answer as JSON here.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
) -> None:
    """Run the engine over an evaluation file (batched) and print a table per question type."""
    from engine.backend import EngineError
    from engine.backends import load_backend
    from entrypoints.settings import get_settings
    from training.eval_runner import format_table, load_items, run_eval
    from training.records import DataError

    try:
        items = load_items(data)
        backend = load_backend(get_settings(), model=model, max_batch_size=batch_size)
        table, outputs = _with_progress(lambda tick: run_eval(backend, items, images, batch_size=batch_size, progress=tick), len(items))
    except (DataError, EngineError) as exc:
        fail(str(exc))
    typer.echo(format_table(table))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"model": model, "data": str(data), "scores": table, "outputs": outputs}, indent=1) + "\n")
        typer.echo(f"scores and answers written to {out}")


def _with_progress(work, total: int):
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("answering", total=total)
        return work(lambda k: bar.advance(task, k))


def demo_model(
    out: Annotated[Path, typer.Option(help="Where the demo checkpoint goes.")] = Path("build/demo-model"),
    force: Annotated[bool, typer.Option(help="Rebuild even when OUT already holds a model.")] = False,
    strict: Annotated[bool, typer.Option(help="Exit 1 when the model misses the demo's quality targets.")] = False,
    withhold_colour: WithholdColours = None,
    baseline: Annotated[
        Optional[Path], typer.Option(help="A demo model to print the scores beside (default: the shipped one).")
    ] = Path("training/demo_model"),
) -> None:
    """Train the demo model from scratch on the shapes world (stage 1 + stage 2) and print its scores.

    Missed quality targets are reported, and the model is kept (it is usable, only weaker);
    `--strict` turns them into a failure, for a quality gate."""
    from training.demo import Recipe, build_demo, compare_scores, missed_targets
    from training.shapes_data import check_withheld

    if (out / "config.json").exists() and not force:
        typer.echo(f"{out} already holds a model (--force rebuilds it)")
        return
    try:
        check_withheld(tuple(withhold_colour or ()))
    except ValueError as exc:
        fail(str(exc))
    scores = build_demo(out, Recipe(withheld_colours=tuple(withhold_colour or ())), echo=typer.echo)
    shipped = baseline / "demo_metrics.json" if baseline else None
    if shipped is not None and shipped.is_file() and shipped.resolve() != (out / "demo_metrics.json").resolve():
        typer.echo(f"beside {baseline}:\n" + compare_scores(scores, json.loads(shipped.read_text())["scores"]))
    missed = missed_targets(scores)
    if withhold_colour:  # weak on purpose: the targets are for the full model
        typer.echo(f"a deliberately weak model: {', '.join(withhold_colour)} never appeared in its image-text data")
        return
    if missed and strict:
        fail("the demo model missed its targets: " + "; ".join(missed))
    if missed:
        typer.echo("warning: the demo model missed its targets: " + "; ".join(missed), err=True)


def register(app: typer.Typer) -> None:
    """Mount the training commands on the root CLI."""
    app.add_typer(data_app, name="data")
    app.command()(train)
    app.command("eval")(evaluate)
    app.command("demo-model")(demo_model)
