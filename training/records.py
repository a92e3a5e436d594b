"""Reading LLaVA conversation files, and accounting for every record that cannot be used.

The original LLaVA code printed "WARNING: tokenization mismatch ... (ignored)" and
trained on with loss 0 for those samples; users hit it again and again. Here a
record that cannot be used is a `BadSample` with its id and a reason a person can
act on; the `DataReport` counts them by reason, and loading fails when they exceed
the threshold the user set. A file that is not JSON fails at once, naming the
record it broke in.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.prompts import IMAGE_TOKEN

ROLES = ("human", "gpt")
_ID_BEFORE = re.compile(r'"id"\s*:\s*"?([^",}\s]*)')


class DataError(ValueError):
    """The data cannot be trained on; the message names the file, the record and the problem."""


class Unusable(Exception):
    """A record that cannot be trained on: `reason` is the category counted in the report."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class BadSample:
    """One record that was left out, and why."""

    id: str
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.id} ({self.reason}{': ' + self.detail if self.detail else ''})"


@dataclass
class DataReport:
    """What loading a data file found: usable records and every bad one."""

    source: str
    total: int = 0
    bad: list[BadSample] = field(default_factory=list)

    @property
    def usable(self) -> int:
        return self.total - len(self.bad)

    def by_reason(self) -> dict[str, int]:
        return dict(Counter(sample.reason for sample in self.bad).most_common())

    def summary(self, examples: int = 5) -> str:
        line = f"{self.source}: {self.total} records, {self.usable} usable, {len(self.bad)} bad"
        if self.bad:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in self.by_reason().items())
            shown = "; ".join(str(sample) for sample in self.bad[:examples])
            more = f"; and {len(self.bad) - examples} more" if len(self.bad) > examples else ""
            line += f" ({reasons}) — {shown}{more}"
        return line

    def check(self, max_bad_fraction: float) -> None:
        """Raise `DataError` when more records are bad than the user allows."""
        if self.total == 0:
            raise DataError(f"{self.source}: no records")
        if self.usable == 0 or len(self.bad) > max_bad_fraction * self.total:
            raise DataError(
                f"{self.summary()}; {len(self.bad) / self.total:.2%} bad is over the allowed "
                f"{max_bad_fraction:.2%} (--max-bad-fraction)"
            )

    def to_dict(self, *, with_samples: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "total": self.total, "usable": self.usable}
        out["bad_by_reason"] = self.by_reason()
        if with_samples:
            out["bad"] = [{"id": s.id, "reason": s.reason, "detail": s.detail} for s in self.bad]
        return out


def _record_near(text: str, position: int) -> str:
    """The id of the record a JSON syntax error is in (the last id before the error)."""
    found = _ID_BEFORE.findall(text, 0, position)
    return f"in or after record {found[-1]!r}" if found else "before the first record id"


def read_records(path: str | Path, report: DataReport) -> list[dict[str, Any]]:
    """Records of a LLaVA JSON list (or JSON Lines) file; broken JSON Lines lines are bad samples."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"data file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read data file {path}: {exc}") from None
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                found = _ID_BEFORE.findall(line)
                report.bad.append(BadSample(found[0] if found else f"line {number}", "bad JSON", f"line {number}: {exc.msg}"))
                report.total += 1
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}, "
            f"{_record_near(text, exc.pos)}"
        ) from None
    if not isinstance(data, list):
        raise DataError(f"{path} must hold a JSON list of records, found a {type(data).__name__}")
    return data


def record_id(record: Any, index: int) -> str:
    if isinstance(record, dict) and isinstance(record.get("id"), (str, int)) and str(record["id"]):
        return str(record["id"])
    return f"record #{index}"


def image_first(message: str) -> str:
    """The image token moved to the front of its message, then a newline: what the original LLaVA's
    `preprocess_multimodal` does to every record, so LLaVA-1.5 only ever saw (and our prompts only
    ever give) the image before the text. `What is it? <image>` trains as `<image>\nWhat is it?`."""
    return f"{IMAGE_TOKEN}\n{message.replace(IMAGE_TOKEN, '').strip()}".strip()


def check_record(record: Any, images: Path | None) -> tuple[list[str], Path | None]:
    """The messages and the image path of a well-formed record; raises `Unusable` saying why not."""
    if not isinstance(record, dict):
        raise Unusable("bad record", f"expected an object, found {type(record).__name__}")
    if not isinstance(record.get("id"), (str, int)) or not str(record["id"]):
        raise Unusable("bad record", "no 'id'")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise Unusable("bad record", "'conversations' must be a non-empty list")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or turn.get("from") not in ROLES:
            raise Unusable("bad record", f"turn {i} needs 'from' (human or gpt) and a string 'value'")
        if turn["from"] != ROLES[i % 2]:
            raise Unusable("turns in wrong order", f"turn {i} is from {turn['from']!r}, expected {ROLES[i % 2]!r}")
        messages.append(turn["value"])
    if len(messages) % 2:
        raise Unusable("turns in wrong order", "the conversation ends with a human turn (nothing to learn)")
    image = record.get("image")
    tokens = [m.count(IMAGE_TOKEN) for m in messages]
    if image is None:
        if any(tokens):
            raise Unusable("bad record", f"{IMAGE_TOKEN} in the text but no 'image'")
        return messages, None
    if not isinstance(image, str) or not image:
        raise Unusable("bad record", "'image' must be a relative path")
    if tokens[0] != 1 or sum(tokens) != 1:
        raise Unusable("bad record", f"the first human turn must hold exactly one {IMAGE_TOKEN} (and no other turn)")
    messages[0] = image_first(messages[0])
    if images is None:
        raise Unusable("missing image", "the record has an image but no --images directory was given")
    root = images.resolve()
    path = (root / image).resolve()
    if not path.is_relative_to(root):
        raise Unusable("missing image", f"{image} points outside the images directory")
    if not path.is_file():
        raise Unusable("missing image", f"{image} not found under {images}")
    return messages, path
