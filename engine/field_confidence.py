"""Per-field confidence of a JSON answer: the mean log-probability of each field's value tokens.

One mean over a whole JSON answer hides the field the model guessed: `{"shape": "circle",
"count": 3}` can be sure of everything but the count. Each generated token is mapped to
the characters it decoded to (incremental decoding, so sentencepiece's `▁` and LLaMA's
byte-fallback pieces land where the text has them: a byte piece that only completes a
character together with the next one shares that character), each leaf value of the JSON
to its characters (a string's content, without the quotes), and a field's confidence is
the mean log-prob of the tokens that overlap its value. Fields are keyed by JSON pointer
(`/shape`, `/objects/0/color`, RFC 6901); the weakest field is kept beside them so the
review queue can order by it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

FieldConfidence = dict[str, Any]  # {"fields": {pointer: mean logprob}, "weakest": pointer, "weakest_logprob": float}

_SPACE = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_LITERALS = ("true", "false", "null")
_PARTIAL = "\ufffd"  # what a prefix that ends inside a multi-byte character decodes to


def token_spans(tokens: Sequence[int], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """The decoded text and, per token, the characters it decoded to (start, end).

    Tokens whose bytes only complete a character together (byte fallback) all get that
    character's span, so each of them counts towards the field the character is in.
    """
    spans: list[tuple[int, int]] = []
    pending = 0
    text = ""
    for i in range(len(tokens)):
        prefix = tokenizer.decode(tokens[: i + 1], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if prefix.endswith(_PARTIAL) and i + 1 < len(tokens):
            pending += 1
            continue
        spans.extend([(len(text), len(prefix))] * (pending + 1))
        text, pending = prefix, 0
    return text, spans


def value_spans(text: str) -> dict[str, tuple[int, int]]:
    """Character span of every leaf value in the JSON document `text`, keyed by JSON pointer.

    A string's span is its content (its quotes only when it is empty); raises ValueError on text that is not JSON.
    """
    spans: dict[str, tuple[int, int]] = {}

    def skip(pos: int) -> int:
        return _SPACE.match(text, pos).end()  # type: ignore[union-attr]

    def value(pos: int, pointer: str) -> int:
        pos = skip(pos)
        char = text[pos : pos + 1]
        if char == "{":
            return container(pos + 1, pointer, "}", keyed=True)
        if char == "[":
            return container(pos + 1, pointer, "]", keyed=False)
        if char == '"':
            _, end = json.decoder.scanstring(text, pos + 1)
            spans[pointer] = (pos + 1, end - 1) if end - pos > 2 else (pos, end)
            return end
        match = _NUMBER.match(text, pos)
        literal = next((word for word in _LITERALS if text.startswith(word, pos)), None)
        end = match.end() if match else pos + len(literal) if literal else None
        if end is None:
            raise ValueError(f"not JSON at character {pos}")
        spans[pointer] = (pos, end)
        return end

    def container(pos: int, pointer: str, close: str, *, keyed: bool) -> int:
        pos = skip(pos)
        index = 0
        while text[pos : pos + 1] != close:
            if index:
                if text[pos : pos + 1] != ",":
                    raise ValueError(f"expected ',' at character {pos}")
                pos = skip(pos + 1)
            key = str(index)
            if keyed:
                if text[pos : pos + 1] != '"':
                    raise ValueError(f"expected a key at character {pos}")
                key, pos = json.decoder.scanstring(text, pos + 1)
                pos = skip(pos)
                if text[pos : pos + 1] != ":":
                    raise ValueError(f"expected ':' at character {pos}")
                pos += 1
            pos = skip(value(pos, f"{pointer}/{key.replace('~', '~0').replace('/', '~1')}"))
            index += 1
        return pos + 1

    value(0, "")
    return spans


def field_confidence(tokens: Sequence[int], logprobs: Sequence[float], tokenizer) -> FieldConfidence | None:
    """Mean log-prob per leaf field of the JSON the tokens decode to, and the weakest field; None when it is not JSON."""
    text, token_chars = token_spans(tokens, tokenizer)
    try:
        spans = value_spans(text)
    except (ValueError, IndexError):
        return None
    fields: dict[str, float] = {}
    for pointer, (start, end) in spans.items():
        overlapping = [lp for (first, last), lp in zip(token_chars, logprobs) if first < end and last > start]
        if overlapping:
            fields[pointer] = sum(overlapping) / len(overlapping)
    if not fields:
        return None
    weakest = min(fields, key=fields.__getitem__)
    return {"fields": fields, "weakest": weakest, "weakest_logprob": fields[weakest]}
