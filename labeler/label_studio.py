"""Label Studio both ways: a job's labeling config, its tasks with the model's pre-annotations, answers read back.

One description of a job's answer (`fields`) decides all three, so the config Label Studio
shows, the predictions the export writes and what `import-reviews` reads back agree:
- caption and VQA jobs: one TextArea `answer` on the Image `image`;
- JSON jobs: one control per leaf of the schema, named by its path (`color`, `box.width`):
  Choices for an `enum` or a boolean, Number for numbers and integers, TextArea for strings,
  and a TextArea holding JSON text for anything else (arrays, unions, `$ref`).

The formats are Label Studio's documented ones: a task is `{"data", "meta", "predictions"}`,
a prediction `{"model_version", "score", "result"}`, a result entry `{"id", "from_name",
"to_name", "type", "value"}` whose value is `{"text": [...]}`, `{"choices": [...]}` or
`{"number": n}`; its JSON export adds `annotations` with the same `result`, plus
`completed_by` and `was_cancelled`. Label Studio renumbers tasks on import, so each task
carries the job, item and prediction ids in `data` (which every export keeps) and `meta`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal
from xml.sax.saxutils import quoteattr

ANSWER = "answer"
IMAGE = "image"
Kind = Literal["text", "json", "choices", "number"]
TAG = {"text": "TextArea", "json": "TextArea", "choices": "Choices", "number": "Number"}
VALUE_KEY = {"text": "text", "json": "text", "choices": "choices", "number": "number"}


class LabelStudioError(ValueError):
    """An annotation or file that cannot be read back; the message says which and why."""


@dataclass(frozen=True)
class Field:
    """One control of the labeling config and where its value sits in the job's answer."""

    name: str
    path: tuple[str, ...]
    kind: Kind
    choices: tuple[Any, ...] = ()
    integer: bool = False
    minimum: float | None = None
    maximum: float | None = None

    def choice_text(self, value: Any) -> str:
        return value if isinstance(value, str) else json.dumps(value)


def fields(task: str, schema: dict[str, Any] | None) -> list[Field]:
    """The controls for a job: one TextArea for text answers, one control per schema leaf for JSON jobs."""
    if task != "json" or schema is None:
        return [Field(ANSWER, (), "text")]
    found = list(_leaves(schema, ()))
    names = [field.name for field in found]
    if len(set(names)) != len(names):
        raise LabelStudioError(f"the job's schema has property paths that collide as control names: {names}")
    return found


def _leaves(schema: dict[str, Any], path: tuple[str, ...]) -> Iterator[Field]:
    properties = schema.get("properties")
    if schema.get("type") == "object" and isinstance(properties, dict) and properties:
        for key, sub in properties.items():
            yield from _leaves(sub if isinstance(sub, dict) else {}, (*path, key))
        return
    name = ".".join(path) or ANSWER
    kind = schema.get("type")
    if isinstance(schema.get("enum"), list):
        yield Field(name, path, "choices", tuple(schema["enum"]))
    elif kind == "boolean":
        yield Field(name, path, "choices", (True, False))
    elif kind in ("number", "integer"):
        yield Field(name, path, "number", integer=kind == "integer", minimum=schema.get("minimum"), maximum=schema.get("maximum"))
    elif kind == "string":
        yield Field(name, path, "text")
    else:
        yield Field(name, path, "json")


def config(task: str, schema: dict[str, Any] | None) -> str:
    """The labeling config (Label Studio's XML) for a job's answer, shown beside the image and its question."""
    lines = ["<View>", f'  <Image name="{IMAGE}" value="$image"/>', '  <Header value="$question"/>']
    for field in fields(task, schema):
        if field.path:
            lines.append(f"  <Header value={quoteattr(field.name)} size=\"6\"/>")
        lines.append("  " + _control(field))
    lines.append("</View>")
    return "\n".join(lines) + "\n"


def _control(field: Field) -> str:
    attributes = f'name={quoteattr(field.name)} toName="{IMAGE}"'
    if field.kind == "choices":
        options = "".join(f"<Choice value={quoteattr(field.choice_text(value))}/>" for value in field.choices)
        return f'<Choices {attributes} choice="single" showInline="true">{options}</Choices>'
    if field.kind == "number":
        limits = "".join(f' {key}="{value}"' for key, value in (("min", field.minimum), ("max", field.maximum)) if value is not None)
        return f'<Number {attributes}{limits} step="{1 if field.integer else 0.001}"/>'
    return f'<TextArea {attributes} editable="true" maxSubmissions="1"/>'


def result(found: list[Field], output: Any, entry_id: str) -> list[dict[str, Any]]:
    """An answer as result entries of the config's controls (a pre-annotation); missing leaves have none."""
    entries = []
    for n, field in enumerate(found):
        present, value = _get(output, field.path)
        if not present:
            continue
        if field.kind == "choices":
            shown: Any = [field.choice_text(value)]
        elif field.kind == "number":
            shown = value
        elif field.kind == "text" and isinstance(value, str):
            shown = [value]
        else:
            shown = [json.dumps(value, ensure_ascii=False)]
        entries.append(
            {"id": f"{entry_id}-{n}", "from_name": field.name, "to_name": IMAGE, "type": TAG[field.kind].lower(),
             "value": {VALUE_KEY[field.kind]: shown}}
        )  # fmt: skip
    return entries


def _get(output: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    for key in path:
        if not isinstance(output, dict) or key not in output:
            return False, None
        output = output[key]
    return True, output


def answer(found: list[Field], entries: list[Any]) -> Any:
    """The answer an annotation's result entries give (the inverse of `result`); `LabelStudioError` if unreadable."""
    by_name = {field.name: field for field in found}
    output: Any = {}
    for entry in entries:
        name = entry.get("from_name") if isinstance(entry, dict) else None
        field = by_name.get(name)  # type: ignore[arg-type]
        if field is None:
            raise LabelStudioError(f"a result entry for {name!r}, which is not a control of this job's labeling config")
        value = _read(field, entry.get("value"))
        if not field.path:
            return value
        target = output
        for key in field.path[:-1]:
            target = target.setdefault(key, {})
        target[field.path[-1]] = value
    return output if found[0].path else None


def _read(field: Field, value: Any) -> Any:
    key = VALUE_KEY[field.kind]
    if not isinstance(value, dict) or key not in value:
        raise LabelStudioError(f"the result entry for {field.name!r} has no value.{key}")
    given = value[key]
    if field.kind == "number":
        if not isinstance(given, (int, float)) or isinstance(given, bool):
            raise LabelStudioError(f"{field.name!r}: expected a number, got {given!r}")
        return int(given) if field.integer and float(given).is_integer() else given
    if not isinstance(given, list) or not all(isinstance(v, str) for v in given):
        raise LabelStudioError(f"{field.name!r}: expected a list of strings in value.{key}, got {given!r}")
    if field.kind == "choices":
        options = {field.choice_text(option): option for option in field.choices}
        if len(given) != 1 or given[0] not in options:
            raise LabelStudioError(f"{field.name!r}: expected one of {sorted(options)}, got {given}")
        return options[given[0]]
    text = "\n".join(given)
    if field.kind == "text":
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise LabelStudioError(f"{field.name!r}: the text is not valid JSON ({exc.msg})") from None


def task(
    *, job_id: int, item_id: int, prediction_id: int, image: str, question: str,
    found: list[Field], output: Any, model_version: str | None, score: float | None,
) -> dict[str, Any]:  # fmt: skip
    """One Label Studio task: the image and question, our ids (in `data` and `meta`), the prediction."""
    ids = {"job_id": job_id, "item_id": item_id, "prediction_id": prediction_id}
    prediction = {"model_version": model_version, "score": score, "result": result(found, output, f"p{prediction_id}")}
    return {"data": {"image": image, "question": question, **ids}, "meta": ids, "predictions": [prediction]}
