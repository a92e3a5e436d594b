"""Run the engine over an evaluation file and score it per question type.

An evaluation file is a JSON list of items: `id`, `image` (relative to the images
directory), `type` (the row of the table), `task` (`vqa` | `json` | `caption`), `question`, and
what the type is scored with: `answers` (VQA accuracy), `label` (POPE), `choices` +
`answer` (multiple choice), `schema` + `truth` (JSON), `reference` (captions and other
free text: token F1 and exact match). The engine asks every question
through the same `GenerationRequest` a labeling job uses, in batches, so the scores are
those of the model as it is served.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.backend import Backend, GenerationRequest
from training.evaluate import caption_metrics, json_metrics, multiple_choice_accuracy, pope_metrics, vqa_accuracy
from training.records import DataError

MAX_NEW_TOKENS = {"vqa": 16, "json": 128, "caption": 64}


def load_items(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    try:
        items = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"evaluation file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    if not isinstance(items, list) or not items:
        raise DataError(f"{path} must hold a non-empty JSON list of evaluation items")
    for index, item in enumerate(items):
        missing = [key for key in ("id", "image", "type", "task", "question") if not isinstance(item, dict) or key not in item]
        if missing:
            name = item.get("id", f"#{index}") if isinstance(item, dict) else f"#{index}"
            raise DataError(f"evaluation item {name} lacks {', '.join(missing)}")
    return items


def _request(item: dict[str, Any], images: Path) -> GenerationRequest:
    return GenerationRequest(
        image=images / item["image"],
        task=item["task"],
        instruction=item["question"],
        json_schema=item.get("schema"),
        choices=item.get("choices"),
        max_new_tokens=MAX_NEW_TOKENS.get(item["task"], 64),
    )


def score(items: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per question type: its size and metrics (the main one first)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        groups[item["type"]].append(index)
    table: dict[str, dict[str, Any]] = {}
    for kind, rows in groups.items():
        first = items[rows[0]]
        texts = [outputs[i]["text"] for i in rows]
        if "schema" in first:
            metrics = json_metrics([outputs[i]["json"] for i in rows], [items[i]["truth"] for i in rows], first["schema"])
        elif "label" in first:
            metrics = pope_metrics(texts, [items[i]["label"] for i in rows])
            metrics = {"f1": metrics.pop("f1"), **metrics}
        elif "choices" in first:
            metrics = {
                "accuracy": multiple_choice_accuracy(texts, [items[i]["answer"] for i in rows], [items[i]["choices"] for i in rows])
            }
        elif "answers" in first:
            metrics = {"vqa_accuracy": sum(vqa_accuracy(t, items[i]["answers"]) for t, i in zip(texts, rows)) / len(rows)}
        elif "reference" in first:
            metrics = caption_metrics(texts, [items[i]["reference"] for i in rows])
        else:
            raise DataError(
                f"evaluation item {first['id']}: type {kind!r} has no answers, label, choices, schema or reference to score"
            )
        table[kind] = {"n": len(rows), **metrics}
    return table


def run_eval(
    backend: Backend,
    items: list[dict[str, Any]],
    images: str | Path,
    *,
    batch_size: int = 32,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Generate an answer for every item (batched, JSON questions together) and score them."""
    images = Path(images)
    order = sorted(range(len(items)), key=lambda i: (items[i]["task"], items[i]["type"]))
    outputs: list[dict[str, Any]] = [{}] * len(items)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        results = backend.generate([_request(items[i], images) for i in chunk])
        for i, result in zip(chunk, results):
            outputs[i] = {"id": items[i]["id"], **result.to_dict()}
        if progress:
            progress(len(chunk))
    return score(items, outputs), outputs


def format_table(table: dict[str, dict[str, Any]]) -> str:
    """The scores as a fixed-width text table (the README shows one)."""
    lines = [f"{'type':<10} {'n':>5}  {'metric':<16} {'score':>7}", "-" * 42]
    for kind, row in table.items():
        metrics = [(k, v) for k, v in row.items() if k != "n"]
        for position, (name, value) in enumerate(metrics):
            if isinstance(value, dict):
                for field, sub in value.items():
                    lines.append(f"{'':<10} {'':>5}  {name + '.' + field:<16} {sub:>7.1%}")
                continue
            head = (kind, str(row["n"])) if position == 0 else ("", "")
            lines.append(f"{head[0]:<10} {head[1]:>5}  {name:<16} {value:>7.1%}")
    return "\n".join(lines)
