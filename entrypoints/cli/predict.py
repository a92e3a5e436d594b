"""Engine commands: `predict` (one image, one answer) and `model init-tiny`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from engine.prompts import TASKS
from entrypoints.cli.errors import fail, read_json_file

model_app = typer.Typer(help="Create and inspect model checkpoints.", no_args_is_help=True)


def predict(
    image: Annotated[Path, typer.Option(help="Image file to label.")],
    model: Annotated[Optional[str], typer.Option(help="Checkpoint directory or hub id (default: settings).")] = None,
    question: Annotated[Optional[str], typer.Option(help="Question (vqa/json) or caption instruction.")] = None,
    schema: Annotated[Optional[Path], typer.Option(help="JSON schema file: constrain the answer to it.")] = None,
    task: Annotated[Optional[str], typer.Option(help="caption | vqa | json (default: from the other options).")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 128,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.0,
) -> None:
    """Label one image and print the result as one JSON object."""
    from engine.backend import EngineError, GenerationRequest
    from engine.backends import load_backend
    from engine.images import ImageError, load_image
    from entrypoints.settings import get_settings
    from engine.structured import SchemaError, check_schema

    chosen = task or ("json" if schema else "vqa" if question else "caption")
    if chosen not in TASKS:
        fail(f"unknown task {chosen!r}; expected one of {', '.join(TASKS)}")
    schema_obj = read_json_file(schema, "schema") if schema else None
    settings = get_settings()
    try:
        if schema_obj is not None:
            check_schema(schema_obj)
        load_image(image, settings.images)
        request = GenerationRequest(
            image=image,
            task=chosen,  # type: ignore[arg-type]
            instruction=question,
            schema=schema_obj,  # type: ignore[arg-type]
            max_new_tokens=max_new_tokens,
            temperature=temperature,
        )
        _ = request.prompt  # render now: a missing question fails before the model loads
        backend = load_backend(settings, model=model)
    except (ImageError, SchemaError, EngineError, ValueError) as exc:
        fail(str(exc))
    result = backend.generate([request])[0]
    typer.echo(json.dumps(result.to_dict(), ensure_ascii=False))
    if result.error:
        fail(result.error)


@model_app.command("init-tiny")
def init_tiny(
    out_dir: Annotated[Path, typer.Argument(help="Where to write the checkpoint.")],
    vocab_size: Annotated[int, typer.Option(help="Tokenizer vocabulary (32000 matches the real LLaVA).")] = 1024,
    image_size: Annotated[int, typer.Option(help="Vision tower input size in pixels.")] = 64,
    seed: int = 0,
) -> None:
    """Build a randomly initialised tiny LLaVA-1.5 (llava-hf format) with a locally trained tokenizer."""
    from engine.tiny_model import TinySpec, build_tiny_model

    if out_dir.exists() and any(out_dir.iterdir()):
        fail(f"{out_dir} exists and is not empty")
    path = build_tiny_model(out_dir, TinySpec(vocab_size=vocab_size, image_size=image_size, seed=seed))
    typer.echo(f"tiny LLaVA-1.5 written to {path}")


def register(app: typer.Typer) -> None:
    """Mount `predict` and `model` on the root CLI."""
    app.command()(predict)
    app.add_typer(model_app, name="model")

