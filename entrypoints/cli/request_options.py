"""The request's options on the command line (`predict`, `submit`, `run`), generated from `GenerationOptions`.

The engine's request model declares every option once (type, default, bounds, help); here
it only gets its command-line spelling: `--schema FILE` (read as JSON), `--question`/`-q`
for the instruction, `--choice` (repeat) for multiple choice. Without `--task`, the task
follows from the other options: `json` with a schema, `vqa` with a question or choices,
else `caption`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from engine.backend import GenerationOptions
from entrypoints.cli.errors import fail, read_json_file
from entrypoints.cli.model_options import Values, model_options

FLAGS = {
    "instruction": ("--instruction", "--question", "-q"),
    "json_schema": ("--schema",),
    "choices": ("--choice",),
}


def _resolve(values: Values) -> Values:
    """The schema file read, and the task chosen when not given."""
    path = values.get("json_schema")
    if isinstance(path, Path):
        schema = read_json_file(path, "schema")
        if not isinstance(schema, dict):
            fail(f"schema file {path} must hold a JSON object")
        values["json_schema"] = schema
    if "task" not in values:
        asks = values.get("instruction") or values.get("choices")
        values["task"] = "json" if "json_schema" in values else "vqa" if asks else "caption"
    return values


def request_options(command: Any) -> Any:
    """Give `command(ask: GenerationOptions, ...)` the request's options."""
    return model_options(
        GenerationOptions,
        into="ask",
        flags=FLAGS,
        cli_types={"json_schema": Optional[Path]},
        unset={
            "task": "json with --schema, vqa with a question or choices, else caption",
            "max_new_tokens": "128; a job's bounded JSON schema: its token bound",
        },
        prepare=_resolve,
    )(command)
