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
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, TypeVar, get_args, get_origin, get_type_hints

import typer
from pydantic import BaseModel, ValidationError

from entrypoints.cli.errors import fail

M = TypeVar("M", bound=BaseModel)
CONFIG_PARAMETER = "config_file"
Values = dict[str, Any]


def _cli_type(annotation: Any) -> Any:
    """The type Typer reads for a field: a variable-length tuple is a repeatable option (a list), and a
    choice is read as text, so that a wrong one fails in the model's validation, in one line."""
    args = [arg for arg in get_args(annotation) if arg is not type(None)]
    inner = args[0] if len(args) == 1 and get_origin(annotation) not in (tuple, Literal) else annotation
    if get_origin(inner) is tuple and len(get_args(inner)) == 2 and get_args(inner)[1] is Ellipsis:
        return list[get_args(inner)[0]]  # type: ignore[misc]
    if get_origin(inner) is Literal:
        return str
    return annotation


def _option(
    name: str, field: Any, *, optional: bool, flags: Sequence[str], cli_type: Any, note: str | None
) -> inspect.Parameter:
    """The Typer option for one field; `optional`: left unset, the value comes from elsewhere (a file, the command)."""
    required = field.is_required() and not optional
    declared = None if field.is_required() else field.get_default(call_default_factory=True)
    default = None if optional else declared
    annotation = _cli_type(field.annotation) if cli_type is None else cli_type
    annotation = annotation if required or default is not None else Optional[annotation]
    note = note or (str(declared) if optional and declared not in (None, [], {}) else None)
    shown = f" (default: {note})" if note else ""
    option = typer.Option(*flags, help=(field.description or "") + shown, show_default=default is not None)
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=... if required else default, annotation=Annotated[annotation, option]
    )


def _read_config(path: Path, model: type[BaseModel]) -> Values:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        fail(f"config file not found: {path}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        fail(f"config file {path} is not readable JSON: {exc}")
    if not isinstance(data, dict):
        fail(f"config file {path} must hold a JSON object of {model.__name__} fields")
    return data


def validation_message(exc: ValidationError, flags: Mapping[str, Sequence[str]] | None = None) -> str:
    """Pydantic's errors as one line naming the options: `--max-steps: ...; --stage: ...`."""
    parts = []
    for error in exc.errors()[:5]:
        field = str(error["loc"][0]) if error["loc"] else ""
        where = (flags or {}).get(field, [f"--{field.replace('_', '-')}"])[0] if field else ""
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "; ".join(parts)


def model_options(
    model: type[M],
    *,
    into: str,
    exclude: Collection[str] = (),
    config_file: bool = False,
    flags: Mapping[str, Sequence[str]] | None = None,
    cli_types: Mapping[str, Any] | None = None,
    unset: Mapping[str, str] | None = None,
    prepare: Callable[[Values], Values] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command taking `into: model`: its signature gains one option per field of `model`.

    `flags` renames a field's option (`{"instruction": ("--instruction", "-q")}`), `cli_types` reads a
    field as another type on the command line (a schema as a file's path), `unset` fields default to
    not given (field -> what then holds, for the help), and `prepare` turns the given values
    (field -> value) into the model's before validation.
    """
    names = [name for name in model.model_fields if name not in exclude]
    flags, cli_types, unset = dict(flags or {}), dict(cli_types or {}), dict(unset or {})

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        hints = get_type_hints(command, include_extras=True)  # the command's own options, resolved (not strings)
        own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in inspect.signature(command).parameters.values() if p.name != into]
        generated = [
            _option(
                name, model.model_fields[name], optional=config_file or name in unset,
                flags=flags.get(name, ()), cli_type=cli_types.get(name), note=unset.get(name),
            )  # fmt: skip
            for name in names
        ]
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
            for name in names:  # an option left at None was not given: the file's value or the model's default holds
                value = kwargs.pop(name)
                if value is not None:
                    values[name] = value
            try:
                instance = model.model_validate(prepare(values) if prepare else values)
            except ValidationError as exc:
                fail(validation_message(exc, flags))
            return command(**kwargs, **{into: instance})

        wrapper.__signature__ = inspect.Signature([*own, *generated])  # type: ignore[attr-defined]
        return wrapper

    return decorate
