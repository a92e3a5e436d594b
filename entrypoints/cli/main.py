"""The `llava-labeler` command: the root Typer app and the explicit list of command modules.

Each module in `COMMAND_MODULES` mounts its commands with `register(app)`; a new
command is one line here, visible without reinstalling anything. The modules import
their heavy dependencies inside the commands, so `llava-labeler --help` stays fast.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

from entrypoints.cli import api, benchmark, console, import_reviews, jobs, predict, retrain, serve, train, trust

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
    if verbose:
        return
    if "transformers" in sys.modules:  # already loaded: tell it directly
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    else:  # read when it loads; importing it here would cost every command (a submit, a status) most of a second
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


COMMAND_MODULES = (predict, serve, jobs, retrain, train, console, import_reviews, trust, api, benchmark)
for _module in COMMAND_MODULES:
    _module.register(app)


def outage(exc: BaseException) -> str | None:
    """One line naming the service a command could not reach (passwords masked), or None for other errors."""
    from kombu import Connection
    from kombu.exceptions import OperationalError as BrokerError
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import InterfaceError, OperationalError

    from entrypoints.settings import get_settings

    settings = get_settings()
    if isinstance(exc, (OperationalError, InterfaceError)):
        where = make_url(settings.database_url).render_as_string(hide_password=True)
        reason = str(exc.orig or exc).strip().splitlines()[0]
        return f"cannot reach the database {where}: {reason} (is it running?)"
    if isinstance(exc, BrokerError):
        where = Connection(settings.broker_url).as_uri()
        return f"cannot reach the broker {where}: {exc} (is it running? `llava-labeler resume JOB` re-sends a job's items)"
    return None


def main() -> None:
    """The console script: an unreachable database or broker is one line on stderr, not a traceback."""
    try:
        app()
    except Exception as exc:
        message = outage(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(1) from None
