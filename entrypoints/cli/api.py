"""The `llava-labeler api` command: the OpenAI Files and Batches API over jobs (`labeler.api`).

Options override the `api` settings for this run; the database, the broker and the store come
from the environment. Workers (`llava-labeler worker`) do the labeling, as for any job.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from entrypoints.cli.errors import fail


def api(
    host: Annotated[Optional[str], typer.Option(help="Bind address (default: settings api.host, 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(min=0, max=65535, help="Port (default: settings api.port, 8090; 0: any free port).")] = None,
) -> None:
    """Serve the OpenAI Files and Batches API (/v1/files, /v1/batches) and job status (/v1/jobs)."""
    from engine.predictor import ExposureError
    from entrypoints.settings import get_settings
    from labeler.api.app import serve

    settings = get_settings()
    chosen = settings.api.model_copy(update={k: v for k, v in {"host": host, "port": port}.items() if v is not None})
    try:
        serve(settings.model_copy(update={"api": chosen}), announce=lambda line: typer.echo(line))
    except ExposureError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot listen on {chosen.host}:{chosen.port}: {exc.strerror or exc}")


def register(app: typer.Typer) -> None:
    """Mount the API's command on the root CLI."""
    app.command()(api)
