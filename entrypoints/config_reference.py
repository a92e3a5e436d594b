"""docs/configuration.md, generated from the settings models (`python -m entrypoints.config_reference`).

Every setting is an environment variable: `LLAVA_LABELER_` + the section and field names in
upper case, joined with `__`. The page is rendered from the models' types, defaults and
descriptions, so it cannot drift from the code (tests/test_architecture.py fails when
the committed page is stale).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from entrypoints.settings import Settings

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
PREFIX = "LLAVA_LABELER_"
HEADER = """# Configuration reference

Generated from the settings models by `python -m entrypoints.config_reference`; do not edit by hand.

Every setting is an environment variable: `LLAVA_LABELER_` followed by the section and the
field in upper case, joined with `__` (`LLAVA_LABELER_FETCH__ALLOW_PRIVATE=true`). Lists and
objects are JSON (`LLAVA_LABELER_FETCH__OBJECT_STORES='["s3"]'`). The defaults are the
embedded laptop mode; a cluster sets URLs, secrets and addresses (the Helm chart does).
"""


def _type(field: FieldInfo) -> str:
    text = str(field.annotation).replace("typing.", "").replace("pathlib.", "").replace("pydantic.types.", "")
    return text.replace("<class '", "").replace("'>", "").replace("|", "\\|")


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value: Any = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{json.dumps(value, default=str)}`"


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{prefix}{name.upper()}` | {_type(field)} | {_default(field)} | {description} |")
    return rows


def render() -> str:
    """The whole page: the top-level settings, then one table per section (its model's docstring first)."""
    sections = {name: f for name, f in Settings.model_fields.items() if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)}
    top = [name for name in Settings.model_fields if name not in sections]
    table = ["| variable | type | default | meaning |", "|---|---|---|---|"]
    lines = [HEADER, "## Top level", "", *table]
    lines += [row for row in _rows(Settings, PREFIX) if any(f"`{PREFIX}{name.upper()}`" in row for name in top)]
    for name, field in sections.items():
        model = field.annotation
        assert isinstance(model, type)
        doc = " ".join((model.__doc__ or "").split())
        lines += ["", f"## `{name}`: {doc}", "", *table, *_rows(model, f"{PREFIX}{name.upper()}__")]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
