"""The `llava-labeler ui` command: checks the console's exposure, then becomes `streamlit run entrypoints/console.py`.

Nothing of Streamlit is imported until the command runs, so the rest of the CLI stays fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from entrypoints.cli.errors import fail

APP = Path(__file__).parents[1] / "console.py"


def ui(
    host: Annotated[Optional[str], typer.Option(help="Bind address (default: settings ui.host, 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(min=1, max=65535, help="Port (default: settings ui.port, 8501).")] = None,
) -> None:
    """Start the review console (Streamlit): jobs, the review queue, browse, models, export."""
    from entrypoints.settings import get_settings
    from ui.access import ExposureError, check_exposure

    settings = get_settings()
    chosen = settings.ui.model_copy(update={k: v for k, v in {"host": host, "port": port}.items() if v is not None})
    try:
        check_exposure(chosen)
    except ExposureError as exc:
        fail(str(exc))
    env = {**os.environ, "LLAVA_LABELER_UI__HOST": chosen.host, "LLAVA_LABELER_UI__PORT": str(chosen.port)}  # the app checks them too
    typer.echo(f"review console on http://{chosen.host}:{chosen.port}/ (login: {chosen.auth})", err=True)
    command = [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", chosen.host,
        "--server.port", str(chosen.port),
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "viewer",
    ]  # fmt: skip
    os.execve(sys.executable, command, env)  # Streamlit takes over this process: signals reach it directly


def register(app: typer.Typer) -> None:
    """Mount the console's command on the root CLI."""
    app.command()(ui)
