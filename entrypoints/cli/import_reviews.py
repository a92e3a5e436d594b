"""`import-reviews`: reviews made in Label Studio recorded as the job's reviews (they then feed `retrain`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from entrypoints.cli.errors import fail


def import_reviews(
    job_id: Annotated[int, typer.Argument(help="Job id the file's tasks were exported from.")],
    file: Annotated[Path, typer.Argument(help="A Label Studio JSON export of the project (Export → JSON).")],
    fmt: Annotated[str, typer.Option("--format", help="label-studio")] = "label-studio",
) -> None:
    """Record a review tool's annotations as reviews: accept when equal to the prediction, edit otherwise."""
    from entrypoints.settings import get_settings
    from labeler.import_reviews import ReviewImportError
    from labeler.label_studio import LabelStudioError
    from labeler.service import Labeler

    try:
        summary = Labeler(get_settings()).import_reviews(job_id, file, fmt)
    except (ReviewImportError, LabelStudioError) as exc:
        fail(str(exc))
    typer.echo(summary.line())
    for problem in summary.problems:
        typer.echo(f"  {problem}")


def register(app: typer.Typer) -> None:
    """Mount `import-reviews` on the root CLI."""
    app.command("import-reviews")(import_reviews)
