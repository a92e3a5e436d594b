"""Engine commands: `predict` (one image, one answer) and `model init-tiny`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from engine.backend import GenerationOptions
from engine.tiny_model import Geometry
from entrypoints.cli.errors import fail
from entrypoints.cli.request_options import request_options

model_app = typer.Typer(help="Create and inspect model checkpoints.", no_args_is_help=True)


@request_options
def predict(
    ask: GenerationOptions,
    image: Annotated[Path, typer.Option(help="Image file to label.")],
    model: Annotated[Optional[str], typer.Option(help="Checkpoint directory or hub id (default: settings).")] = None,
) -> None:
    """Label one image and print the result as one JSON object."""
    from engine.backend import EngineError, GenerationRequest
    from engine.backends import load_backend
    from engine.images import ImageError, load_image
    from engine.structured import SchemaError, check_schema
    from entrypoints.settings import get_settings

    settings = get_settings()
    try:
        if ask.json_schema is not None:
            check_schema(ask.json_schema)
        load_image(image, settings.images)
        request = GenerationRequest.of(ask, image)  # renders the prompt: a missing question fails before the model loads
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
    vocab_size: Annotated[
        Optional[int], typer.Option(help="Vocabulary of the tokenizer trained here (default 1024; 32000 is the real size).")
    ] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Vision tower input size in pixels (default 64).")] = None,
    geometry: Annotated[
        Optional[Geometry], typer.Option(help="The published llava-hf geometry, with the real LLaMA tokenizer, instead of a tiny one.")
    ] = None,
    text_layers: Annotated[Optional[int], typer.Option(min=1, help="Llama layers (with --geometry; default 1).")] = None,
    vision_layers: Annotated[Optional[int], typer.Option(min=1, help="CLIP layers (with --geometry; default 1).")] = None,
    text_hidden: Annotated[Optional[int], typer.Option(min=2, help="Llama width (with --geometry; default 4096/5120).")] = None,
    vision_hidden: Annotated[Optional[int], typer.Option(min=1, help="CLIP width (with --geometry; default 1024).")] = None,
    tokenizer: Annotated[
        Optional[Path], typer.Option(help="LLaMA tokenizer directory (with --geometry; default: fetched with npm into build/llama-tokenizer).")
    ] = None,
    seed: int = 0,
) -> None:
    """Build a randomly initialised LLaVA-1.5 (llava-hf format): tiny with a locally trained tokenizer, or the real geometry."""
    from engine.backend import EngineError
    from engine.llama_tokenizer import fetch_llama_tokenizer
    from engine.tiny_model import TinySpec, build_tiny_model, real_geometry

    if out_dir.exists() and any(out_dir.iterdir()):
        fail(f"{out_dir} exists and is not empty")
    geometry_only = {"--text-layers": text_layers, "--vision-layers": vision_layers, "--text-hidden": text_hidden,
                     "--vision-hidden": vision_hidden, "--tokenizer": tokenizer}  # fmt: skip
    tiny_only = {"--vocab-size": vocab_size, "--image-size": image_size}
    misplaced = [name for name, value in (tiny_only if geometry else geometry_only).items() if value is not None]
    if misplaced:
        fail(f"{', '.join(misplaced)} {'cannot be used with' if geometry else 'needs'} --geometry")
    try:
        if geometry is None:
            spec = TinySpec(vocab_size=vocab_size or 1024, image_size=image_size or 64, seed=seed)
            path = build_tiny_model(out_dir, spec)
        else:
            spec = real_geometry(geometry, text_layers=text_layers or 1, vision_layers=vision_layers or 1,
                                 text_hidden=text_hidden, vision_hidden=vision_hidden, seed=seed)  # fmt: skip
            tokenizer = tokenizer or fetch_llama_tokenizer(Path("build/llama-tokenizer"))
            path = build_tiny_model(out_dir, spec, tokenizer_dir=tokenizer)
    except (EngineError, ValueError) as exc:
        fail(str(exc))
    what = f"LLaVA-1.5 at the {geometry} geometry" if geometry else "tiny LLaVA-1.5"
    typer.echo(f"{what} written to {path}")


def register(app: typer.Typer) -> None:
    """Mount `predict` and `model` on the root CLI."""
    app.command()(predict)
    app.add_typer(model_app, name="model")

