"""The closed loop's commands: `retrain` (finetune on new reviews, promote if better) and `loop-demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from entrypoints.cli.errors import fail


def retrain(
    full: Annotated[bool, typer.Option("--full", help="Finetune all LLM weights (default: LoRA).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count new reviews and say what would run; change nothing.")] = False,
    min_reviews: Annotated[Optional[int], typer.Option(min=1, help="New reviews needed (default: settings).")] = None,
    margin: Annotated[Optional[float], typer.Option(help="Score gain a candidate needs (default: settings).")] = None,
) -> None:
    """Finetune the active model on new reviews; promote it only if it beats the active one by the margin.

    Exit 0: promoted, rejected or too few reviews; 1: an error (active model unchanged); 3: another retrain runs.
    """
    from entrypoints.settings import get_settings
    from labeler.locks import LockHeld
    from labeler.retrain import RetrainError
    from labeler.service import Labeler, RegistryError

    settings = get_settings()
    overrides = {key: value for key, value in (("min_reviews", min_reviews), ("margin", margin)) if value is not None}
    labeler = Labeler(settings.model_copy(update={"retrain": settings.retrain.model_copy(update=overrides)}))
    try:
        outcome = labeler.retrain(full=full, dry_run=dry_run, echo=typer.echo)
    except LockHeld as exc:
        fail(f"another retrain is running: {exc}", code=3)
    except (RetrainError, RegistryError) as exc:
        fail(str(exc))
    typer.echo(f"{outcome.decision}: {outcome.reason}")


def loop_demo(
    model: Annotated[Path, typer.Option(help="The weak model (`demo-model --withhold-colour ...`).")] = Path("build/weak-model"),
    out: Annotated[Path, typer.Option(help="A fresh directory for the demo's data, database, models and report.")] = Path(
        "build/loop-demo"
    ),
    withhold_colour: Annotated[list[str], typer.Option(help="A colour the weak model never saw (repeat).")] = ["purple", "orange"],
    batch_images: Annotated[int, typer.Option(min=10, help="Fresh images to label and review.")] = 600,
    heldout_images: Annotated[int, typer.Option(min=10, help="Held-out images to measure on.")] = 300,
) -> None:
    """One turn of the closed loop on the shapes world: label, review (simulated), retrain, measure before and after."""
    from entrypoints.settings import get_settings
    from labeler.loop_demo import LoopDemoError, LoopSizes, run_loop_demo
    from labeler.retrain import RetrainError
    from labeler.subcommands import CommandFailed

    sizes = LoopSizes(batch_images=batch_images, heldout_images=heldout_images)
    try:
        run_loop_demo(model, out, tuple(withhold_colour), get_settings(), sizes=sizes, echo=typer.echo)
    except (LoopDemoError, RetrainError, CommandFailed) as exc:
        fail(str(exc))
    typer.echo(f"report: {out / 'loop_report.md'} and {out / 'loop_report.json'}")


def register(app: typer.Typer) -> None:
    """Mount `retrain` and `loop-demo` on the root CLI."""
    app.command()(retrain)
    app.command("loop-demo")(loop_demo)
