"""Command-line options generated from a pydantic model, so each option is declared once.

A field's type, default, bounds and description live on the model (the training
config, the request options); `model_options` turns every field into a `--flag` of a
Typer command and hands the command one validated model instance. With
`config_file=True` the command also takes `--config FILE` (the model as JSON): the
file gives the values, and options typed on the command line override them.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from pydantic import BaseModel, ValidationError

from entrypoints.cli.errors import fail

M = TypeVar("M", bound=BaseModel)
CONFIG_PARAMETER = "config_file"


def _option(name: str, field: Any, *, optional: bool) -> inspect.Parameter:
    """The Typer option for one field; `optional`: every value may come from a config file instead."""
    required = field.is_required() and not optional
    declared = None if field.is_required() else field.get_default(call_default_factory=True)
    default = None if optional else declared
    annotation = field.annotation if required or default is not None else Optional[field.annotation]
    shown = f" (default: {declared})" if optional and declared not in (None, [], {}) else ""
    option = typer.Option(help=(field.description or "") + shown, show_default=default is not None)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=... if required else default, annotation=Annotated[annotation, option]
    )


def _read_config(path: Path, model: type[BaseModel]) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        fail(f"config file not found: {path}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        fail(f"config file {path} is not readable JSON: {exc}")
    if not isinstance(data, dict):
        fail(f"config file {path} must hold a JSON object of {model.__name__} fields")
    return data


def validation_message(exc: ValidationError) -> str:
    """Pydantic's errors as one line naming the options: `--max-steps: ...; --stage: ...`."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(part) for part in error["loc"])
        parts.append(f"--{where.replace('_', '-')}: {error['msg']}" if where else error["msg"])
    return "; ".join(parts)


def model_options(
    model: type[M], *, into: str, exclude: Collection[str] = (), config_file: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command taking `into: model`: its signature gains one option per field of `model`."""
    names = [name for name in model.model_fields if name not in exclude]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(command).parameters.values() if p.name != into]
        generated = [_option(name, model.model_fields[name], optional=config_file) for name in names]
        if config_file:
            help_text = f"A JSON file of {model.__name__} fields; options given on the command line override it."
            generated.insert(
                0,
                inspect.Parameter(
                    CONFIG_PARAMETER,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=None,
                    annotation=Annotated[Optional[Path], typer.Option("--config", help=help_text)],
                ),
            )

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            path = kwargs.pop(CONFIG_PARAMETER, None)
            values = _read_config(path, model) if path else {}
            for name in names:  # with a config file every option defaults to None: only typed ones override it
                value = kwargs.pop(name)
                if value is not None:
                    values[name] = value
            try:
                instance = model.model_validate(values)
            except ValidationError as exc:
                fail(validation_message(exc))
            return command(**kwargs, **{into: instance})

        wrapper.__signature__ = inspect.Signature([*own, *generated])  # type: ignore[attr-defined]
        return wrapper

    return decorate
