"""A form generated from a job's JSON schema, for correcting a JSON prediction field by field.

Enums become select boxes, integers and numbers number inputs (with the schema's bounds),
booleans checkboxes, strings text inputs, objects a group of their properties (recursively),
arrays of enums a multiselect and other arrays a list of entries of their item schema.
Optional properties can be left empty and are then left out. What the form cannot express
(anyOf, $ref, tuples, free-form objects) is edited as JSON text. `edit` returns the value and
every problem with it (unparsable JSON text, schema violations from `jsonschema`), so
nothing is saved that the job's schema would refuse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import streamlit as st

from engine.structured import validator

EMPTY = "—"


@dataclass
class Edited:
    value: Any
    problems: list[str] = field(default_factory=list)


def edit(schema: dict[str, Any], value: Any, key: str) -> Edited:
    """Render the form for `value` (widget keys under `key`) and return the edited value and its problems."""
    problems: list[str] = []
    edited = _field(schema, value, key, "", True, problems)
    if not problems:
        problems = validation_errors(edited, schema)
    return Edited(edited, problems)


def flag_field(schema: dict[str, Any], pointer: str, note: str) -> dict[str, Any]:
    """A copy of `schema` whose field at JSON pointer `pointer` is titled with `note` (the least-sure field's mark).

    Only titles change, so the form's widget keys and the validation stay those of `schema`;
    a pointer the schema does not describe leaves it as it is.
    """
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]
    if not tokens:
        return schema
    flagged = dict(schema)
    node, name = flagged, ""
    for token in tokens:
        if isinstance(node.get("properties"), dict) and token in node["properties"]:
            node["properties"] = dict(node["properties"])
            node["properties"][token] = dict(node["properties"][token])
            node, name = node["properties"][token], token
        elif isinstance(node.get("items"), dict) and token.isdigit():
            node["items"] = dict(node["items"])
            node, name = node["items"], node["items"].get("title") or name
        else:
            return schema
    node["title"] = f"{node.get('title') or name} · {note}"
    return flagged


def validation_errors(value: Any, schema: dict[str, Any]) -> list[str]:
    """Every way `value` breaks `schema`, each naming where ("at count: 7 is greater than ...")."""
    found = sorted(validator(schema).iter_errors(value), key=lambda error: list(error.absolute_path))
    return [f"at {_where(error.absolute_path)}: {error.message}" for error in found]


def _where(path) -> str:
    return ".".join(str(part) for part in path) or "the top level"


def _type(schema: dict[str, Any]) -> tuple[str | None, bool]:
    """The schema's one non-null type and whether null is allowed."""
    declared = schema.get("type")
    if isinstance(declared, list):
        others = [t for t in declared if t != "null"]
        return (others[0] if len(others) == 1 else None), "null" in declared
    return declared, False


def _field(schema: dict[str, Any], value: Any, key: str, label: str, required: bool, problems: list[str]) -> Any:
    kind, nullable = _type(schema)
    optional = not required or nullable
    title = schema.get("title") or label or "value"
    hint = schema.get("description")
    if "enum" in schema:
        return _enum(schema["enum"], value, key, title, optional, hint)
    if kind == "object" and isinstance(schema.get("properties"), dict):
        return _object(schema, value, key, label, problems)
    if kind == "array" and isinstance(schema.get("items", {}), dict):
        return _array(schema, value, key, title, problems)
    if kind in ("integer", "number"):
        return _number(schema, value, key, title, optional, kind == "integer", hint)
    if kind == "boolean":
        if optional:
            return _enum([True, False], value, key, title, True, hint)
        return st.checkbox(title, value=bool(value), key=key, help=hint)
    if kind == "string" and not {"anyOf", "oneOf", "allOf", "$ref"} & schema.keys():
        text = st.text_input(title, value=value if isinstance(value, str) else "", key=key, help=hint)
        return None if optional and text == "" else text
    return _json_text(value, key, title, problems)


def _enum(options: list[Any], value: Any, key: str, title: str, optional: bool, hint: str | None) -> Any:
    choices = ([None] if optional else []) + list(options)
    index = choices.index(value) if value in choices else (0 if choices else None)
    if value is not None and value not in choices:
        st.caption(f"The model answered {json.dumps(value)}, which is not an allowed {title}.")
    return st.selectbox(title, choices, index=index, key=key, help=hint, format_func=_show)


def _show(option: Any) -> str:
    if option is None:
        return EMPTY
    return option if isinstance(option, str) else json.dumps(option)


def _object(schema: dict[str, Any], value: Any, key: str, label: str, problems: list[str]) -> dict[str, Any]:
    current = value if isinstance(value, dict) else {}
    required = set(schema.get("required", []))
    result = {name: v for name, v in current.items() if name not in schema["properties"]}  # kept as the model wrote them
    container = st.container(border=bool(label))
    if label:
        container.markdown(f"**{schema.get('title') or label}**")
    with container:
        for name, sub in schema["properties"].items():
            edited = _field(sub, current.get(name), f"{key}.{name}", name, name in required, problems)
            if edited is not None or name in required:
                result[name] = edited
    return result


def _array(schema: dict[str, Any], value: Any, key: str, title: str, problems: list[str]) -> list[Any]:
    current = value if isinstance(value, list) else []
    items = schema.get("items", {})
    if "enum" in items:
        default = [v for v in current if v in items["enum"]]
        return st.multiselect(title, items["enum"], default=default, key=key, format_func=_show)
    low = int(schema.get("minItems", 0))
    high = schema.get("maxItems")
    start = max(low, min(len(current), high if high is not None else len(current)))
    count = st.number_input(f"{title}: number of entries", min_value=low, max_value=high, value=start, step=1, key=f"{key}#n")
    entry = items.get("title") or title
    return [
        _field(items, current[i] if i < len(current) else None, f"{key}[{i}]", f"{entry} {i + 1}", True, problems)
        for i in range(int(count))
    ]


def _number(
    schema: dict[str, Any], value: Any, key: str, title: str, optional: bool, integer: bool, hint: str | None
) -> int | float | None:
    cast = int if integer else float
    low, high = schema.get("minimum"), schema.get("maximum")
    low, high = (cast(low) if low is not None else None), (cast(high) if high is not None else None)
    start = cast(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if start is not None and ((low is not None and start < low) or (high is not None and start > high)):
        st.caption(f"The model answered {value} for {title}, outside the allowed range.")
        start = min(max(start, low if low is not None else start), high if high is not None else start)
    if start is None and not optional:
        start = low if low is not None else cast(0)
    return st.number_input(title, min_value=low, max_value=high, value=start, step=cast(1) if integer else None, key=key, help=hint)


def _json_text(value: Any, key: str, title: str, problems: list[str]) -> Any:
    text = st.text_area(f"{title} (JSON)", value=json.dumps(value, indent=2, ensure_ascii=False), key=key)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        problems.append(f"{title} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")
        return None
