"""How many tokens a JSON answer can need: an upper bound read off its schema's bounds, or None.

A JSON answer cut off by `max_new_tokens` is lost work, and a budget far above what the schema
allows is a guess. Where every value of the schema is bounded (enums and consts, strings with
`maxLength`, integers with `minimum` and `maximum`, arrays with `maxItems`, objects with fixed
properties) the longest answer is known, and so is the budget that never cuts it off.

The bound is tokenizer-agnostic: a token is at least one byte of text (byte-fallback tokenizers
such as LLaMA's spell anything byte by byte at worst), so the answer's longest UTF-8 spelling
bounds its tokens. The spelling is the one constrained decoding allows (engine.structured:
xgrammar without free whitespace, separators ", " and ": ", no properties beyond the schema's).
A string character takes at most `BYTES_PER_CHAR` bytes, its `\\uXXXX` escape; enum and const
values are measured as they are. Anything unbounded (a float, a string without `maxLength`,
an array without `maxItems`, extra properties, `allOf`, a recursive `$ref`) makes the whole
answer unbounded: None, and callers fall back to a default.
"""

from __future__ import annotations

import json
from typing import Any

BYTES_PER_CHAR = 6  # the longest spelling of one string character: a \uXXXX escape
ITEM_SEPARATOR, KEY_SEPARATOR = ", ", ": "
END_TOKENS = 2  # end-of-sequence, and a leading space some tokenizers spend before the answer
SCALAR_BYTES = {"boolean": len("false"), "null": len("null")}
MAX_REF_DEPTH = 32


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(ITEM_SEPARATOR, KEY_SEPARATOR)).encode())


def _resolve(root: dict[str, Any], ref: str) -> Any:
    """A local reference (`#/$defs/x`); anything else is not ours to follow (engine.structured refuses it)."""
    if not ref.startswith("#"):
        return None
    node: Any = root
    for part in filter(None, ref[1:].split("/")):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _integer_bytes(node: dict[str, Any]) -> int | None:
    low, high = node.get("minimum"), node.get("maximum")
    if not isinstance(low, int | float) or not isinstance(high, int | float):
        return None
    return max(len(str(int(low))), len(str(int(high))))


def _bound(node: Any, root: dict[str, Any], depth: int) -> int | None:
    """The most bytes a value matching `node` takes, or None when nothing bounds it."""
    if depth > MAX_REF_DEPTH or not isinstance(node, dict):
        return None
    if "const" in node:
        return _json_bytes(node["const"])
    if "enum" in node:
        if not isinstance(node["enum"], list):
            return None
        return max((_json_bytes(value) for value in node["enum"]), default=None)
    if "$ref" in node:
        return _bound(_resolve(root, node["$ref"]), root, depth + 1)
    branches = node.get("anyOf") or node.get("oneOf")
    if isinstance(branches, list) and branches:
        bounds = [_bound(branch, root, depth + 1) for branch in branches]
        return None if None in bounds else max(bounds)  # type: ignore[type-var]
    kinds = node.get("type")
    if isinstance(kinds, list):
        bounds = [_bound({**node, "type": kind}, root, depth) for kind in kinds]
        return None if not bounds or None in bounds else max(bounds)  # type: ignore[type-var]
    if kinds in SCALAR_BYTES:
        return SCALAR_BYTES[kinds]
    if kinds == "integer":
        return _integer_bytes(node)
    if kinds == "string":
        limit = node.get("maxLength")
        return None if not isinstance(limit, int) else 2 + BYTES_PER_CHAR * limit
    if kinds == "array":
        return _array_bytes(node, root, depth)
    if kinds == "object":
        return _object_bytes(node, root, depth)
    return None  # a number (any count of digits), or no type at all


def _array_bytes(node: dict[str, Any], root: dict[str, Any], depth: int) -> int | None:
    count = node.get("maxItems")
    if not isinstance(count, int) or "prefixItems" in node:
        return None
    if count == 0:
        return 2
    item = _bound(node.get("items"), root, depth + 1)
    return None if item is None else 2 + count * item + (count - 1) * len(ITEM_SEPARATOR)


def _object_bytes(node: dict[str, Any], root: dict[str, Any], depth: int) -> int | None:
    if node.get("additionalProperties") not in (None, False) or "patternProperties" in node:
        return None
    properties = node.get("properties") or {}
    if not isinstance(properties, dict):
        return None
    total = 2 + max(0, len(properties) - 1) * len(ITEM_SEPARATOR)
    for key, value in properties.items():
        bound = _bound(value, root, depth + 1)
        if bound is None:
            return None
        total += _json_bytes(key) + len(KEY_SEPARATOR) + bound
    return total


def json_token_bound(schema: dict[str, Any]) -> int | None:
    """The most tokens a JSON answer to `schema` can take, end-of-sequence included; None when unbounded."""
    bound = _bound(schema, schema, 0)
    return None if bound is None else bound + END_TOKENS


def reask_budget(schema: dict[str, Any], used: int, cap: int) -> int | None:
    """The budget to ask again with after an answer was cut off at `used` tokens: the schema's bound
    when it is larger, else twice `used`, at most `cap`; None when that is no larger than `used`."""
    bound = json_token_bound(schema)
    budget = min(cap, bound if bound is not None and bound > used else 2 * used)
    return budget if budget > used else None
