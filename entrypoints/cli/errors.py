"""How a command ends on an error a person must fix: one line on stderr, a non-zero exit, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn

import typer


def fail(message: str, code: int = 1) -> NoReturn:
    """Exit with a one-line error on stderr."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def read_json_file(path: Path, what: str) -> object:
    """A JSON file's content, or a one-line failure naming the file and the problem."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        fail(f"{what} file not found: {path}")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {what} file {path}: {exc}")
    except json.JSONDecodeError as exc:
        fail(f"{what} file {path} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")
