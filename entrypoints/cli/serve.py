"""Serving commands of the `llava-labeler` CLI: `serve` and `engine build`.

`serve` runs the KServe predictor on a checkpoint (transformers backend) or on engines
built by `engine build` (TensorRT-LLM backend, GPU only). Options override the
`serving` settings for this run; everything else comes from the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from entrypoints.cli.errors import fail

engine_app = typer.Typer(help="Compile models for serving (TensorRT-LLM, GPU only).", no_args_is_help=True)


def serve(
    model: Annotated[Optional[str], typer.Option(help="Checkpoint dir (hf) or `engine build` output dir (trtllm).")] = None,
    backend: Annotated[str, typer.Option(help="hf (transformers) | trtllm (TensorRT-LLM engines, GPU only).")] = "hf",
    host: Annotated[Optional[str], typer.Option(help="Bind address (default: settings, 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(min=0, max=65535, help="Port (0: any free port).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Model name in the URLs (default: settings, llava).")] = None,
    max_batch_size: Annotated[Optional[int], typer.Option(min=1, help="Dynamic batching: most items per engine call.")] = None,
    max_wait_ms: Annotated[Optional[float], typer.Option(min=0, help="Dynamic batching: wait for a batch to fill.")] = None,
) -> None:
    """Serve LLaVA-1.5 as a KServe predictor: v1, v2 and OpenAI-compatible routes, Prometheus /metrics."""
    from engine.backend import EngineError
    from engine.backends import load_backend
    from entrypoints.settings import get_settings

    if backend not in ("hf", "trtllm"):
        fail(f"unknown backend {backend!r}; expected hf or trtllm")
    settings = get_settings()
    overrides = {"host": host, "port": port, "model_name": name, "max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms}
    serving = settings.serving.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    from engine.predictor import ExposureError, check_exposure
    from engine.predictor import serve as run_server

    try:
        check_exposure(serving)
        loaded = load_backend(
            settings, model=model, kind=backend,  # type: ignore[arg-type]
            max_batch_size=max(settings.engine.max_batch_size, serving.max_batch_size),
        )  # fmt: skip
    except (ExposureError, EngineError) as exc:
        fail(str(exc))
    try:
        run_server(loaded, settings=serving, image_limits=settings.images, fetch_policy=settings.fetch,
                   announce=lambda line: typer.echo(line))
    except OSError as exc:
        fail(f"cannot listen on {serving.host}:{serving.port}: {exc.strerror or exc}")


@engine_app.command("build")
def build(
    model: Annotated[Path, typer.Option(help="llava-hf checkpoint directory to compile.")],
    out: Annotated[Path, typer.Option(help="Output directory (llm/, vision/, hf/, build.json).")],
    max_batch_size: Annotated[int, typer.Option(min=1, help="Largest batch the engines accept.")] = 16,
    dtype: Annotated[str, typer.Option(help="float16 | bfloat16")] = "float16",
    int4_awq: Annotated[bool, typer.Option("--int4-awq", help="Quantize the LLM weights to INT4 (AWQ).")] = False,
    max_input_len: Annotated[int, typer.Option(min=1, help="Longest prompt in tokens, image features included.")] = 2048,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest answer in tokens.")] = 512,
    examples_dir: Annotated[
        Optional[Path], typer.Option(help="TensorRT-LLM examples/ (default: $TRTLLM_EXAMPLES or the release image's).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the commands instead of running them.")] = False,
) -> None:
    """Compile a checkpoint with TensorRT-LLM 1.2: convert the LLM, build it, build the visual engine."""
    from engine.trtllm_build import BuildError, BuildPlan, run_plan

    if dtype not in ("float16", "bfloat16"):
        fail(f"unknown dtype {dtype!r}; expected float16 or bfloat16")
    try:
        plan = BuildPlan.create(
            model, out, max_batch_size=max_batch_size, dtype=dtype, int4_awq=int4_awq,  # type: ignore[arg-type]
            max_input_len=max_input_len, max_new_tokens=max_new_tokens, examples_dir=examples_dir,
        )
        if dry_run:
            for step in plan.steps():
                typer.echo(step.shell())
            return
        run_plan(plan, echo=typer.echo)
    except BuildError as exc:
        fail(str(exc))
    typer.echo(f"engines written to {out}; serve them with: llava-labeler serve --backend trtllm --model {out}")


def register(app: typer.Typer) -> None:
    """Mount `serve` and `engine build` on the root CLI."""
    app.command()(serve)
    app.add_typer(engine_app, name="engine")
