"""Trust commands: `calibration` (how a job's confidence maps to being right) and `auto-accept`.

Thin, like the job commands: each calls `labeler.service.Labeler` and prints; a problem a
person must fix (an unknown job, too few reviews to calibrate, a precision outside (0, 1))
ends in one line through `fail`.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from entrypoints.cli.errors import fail

JobId = Annotated[int, typer.Argument(help="Job id (see `status`).")]


def _labeler():
    from entrypoints.settings import get_settings
    from labeler.service import Labeler

    return Labeler(get_settings())


def calibration(job: JobId) -> None:
    """Fit the job's confidence → P(right) on its reviews and print the calibration error and reliability bins."""
    from labeler.calibration import BINS, FOLDS, CalibrationError, Scope

    try:
        fitted = _labeler().calibration(Scope(job_id=job))
    except CalibrationError as exc:
        fail(str(exc))
    typer.echo(f"job {job}: {fitted.reviews} human reviews, {fitted.right} right ({fitted.right / fitted.reviews:.1%})")
    typer.echo(f"expected calibration error ({BINS} bins, {FOLDS}-fold out-of-fold): {fitted.ece:.3f} "
               f"(raw exp(score) read as a probability: {fitted.raw_ece:.3f})")  # fmt: skip
    typer.echo("P(right) predicted   observed   reviews")
    for b in fitted.bins:
        typer.echo(f"  {b.low:.1f}-{b.high:.1f}: {b.predicted:9.3f}   {b.observed:8.3f}   {b.count:7d}")


def auto_accept(
    job: JobId,
    precision: Annotated[float, typer.Option(help="Target precision of the accepted labels (a lower confidence bound).")] = 0.99,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report the threshold and coverage; accept nothing.")] = False,
    min_reviews: Annotated[Optional[int], typer.Option(min=1, help="Human reviews needed before anything is accepted (default 100).")] = None,
    confidence_level: Annotated[Optional[float], typer.Option(help="Confidence level of the Clopper-Pearson bound (default 0.95).")] = None,
    undo: Annotated[bool, typer.Option("--undo", help="Delete the job's auto decisions; their items go back to the queue.")] = False,
) -> None:
    """Accept the job's unreviewed labels above the lowest threshold whose reviewed labels are right at `--precision`."""
    from labeler.auto_accept import GRID, AutoAcceptError

    labeler = _labeler()
    if undo:
        typer.echo(f"job {job}: {labeler.undo_auto_accept(job):,} auto-accepted labels put back in the review queue")
        return
    try:
        limits = {k: v for k, v in {"min_reviews": min_reviews, "level": confidence_level}.items() if v is not None}
        found, accepted = labeler.auto_accept(job, precision, dry_run=dry_run, **limits)
    except AutoAcceptError as exc:
        fail(str(exc))
    if found.threshold is None:
        typer.echo(f"nothing accepted: {found.reason}")
        raise typer.Exit(2)
    typer.echo(
        f"job {job}: threshold {found.threshold:.4f} (trust score); {found.right_above}/{found.reviewed_above} reviewed labels "
        f"above it right, lower bound {found.lower_bound:.4f} >= {precision} (Clopper-Pearson, {found.confidence_level:.0%} "
        f"together over {GRID} candidate thresholds)"
    )
    typer.echo(f"coverage: {found.coverage:,} of {found.unreviewed:,} unreviewed labels ({found.coverage_share:.1%})")
    typer.echo("dry run: nothing recorded" if dry_run else f"recorded {accepted:,} reviews with the decision `auto`")


def register(app: typer.Typer) -> None:
    """Mount the trust commands on the root CLI."""
    app.command()(calibration)
    app.command("auto-accept")(auto_accept)
