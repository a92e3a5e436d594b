"""Reading a benchmark's files in the layout of LLaVA's evaluation data, with one-line errors.

Every benchmark reads `playground/data/eval/<name>/` as LLaVA-1.5's docs/Evaluation.md lays
it out; a file that is missing or not what the benchmark expects is a `BenchmarkError` that
names the file and what it should hold, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.records import DataError


class BenchmarkError(DataError):
    """A benchmark's data or answers cannot be used; the message names the file and what was expected."""


def require(path: Path, what: str) -> Path:
    """`path` when it exists, else the error naming it and what it should be."""
    if not path.exists():
        raise BenchmarkError(f"{path} not found: expected {what}")
    return path


def read_json(path: Path, what: str) -> Any:
    """A JSON file's content."""
    try:
        return json.loads(require(path, what).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchmarkError(f"cannot read {path}: {exc} (expected {what})") from None
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}): expected {what}") from None


def read_jsonl(path: Path, what: str, keys: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """A JSON-lines file's records (blank lines skipped), each a JSON object holding `keys`."""
    require(path, what)
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise BenchmarkError(f"{path} line {number} is not JSON: expected {what}") from None
            missing = [key for key in keys if not isinstance(row, dict) or key not in row]
            if missing:
                raise BenchmarkError(f"{path} line {number} lacks {', '.join(missing)}: expected {what}")
            rows.append(row)
    if not rows:
        raise BenchmarkError(f"{path} is empty: expected {what}")
    return rows


def object_with(value: Any, path: Path, keys: tuple[str, ...], what: str) -> dict[str, Any]:
    """`value` (read from `path`) as a JSON object holding `keys`, else the error naming the file."""
    if not isinstance(value, dict) or any(key not in value for key in keys):
        raise BenchmarkError(f"{path} is not {what} (an object with {', '.join(keys)})")
    return value
