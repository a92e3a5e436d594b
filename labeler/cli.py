"""The `llava-labeler` command: the one CLI, composed from each package's commands.

This module is the composition root: engine and training each expose `register(app)`
and are mounted here, so every command is one `llava-labeler …` away.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated

import typer

from engine import cli as engine_cli

app = typer.Typer(
    name="llava-labeler",
    help="Label millions of images with LLaVA-1.5: caption, JSON VQA, review, retrain.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _configure(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False) -> None:
    """Quiet library chatter unless asked: the CLI's own output is the interface."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


engine_cli.register(app)


def main() -> None:
    app()
