"""JSON-schema-constrained decoding with xgrammar, and the validity check after it.

Each schema is checked (jsonschema's meta-schema) and compiled by xgrammar once,
then cached; a schema that cannot be compiled is a `SchemaError` naming the
problem. During decoding a grammar matcher per constrained row masks the logits
so only tokens that keep the output a valid prefix survive. After decoding,
`parse_and_validate` is the final gate: a result with a schema is JSON that
validates, or an explicit failure.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

import jsonschema
import torch
import xgrammar as xgr

# vicuna_v1 answers follow "ASSISTANT:" after a space (" {...}"), so models emit a leading-space
# token first; the grammar allows that one space instead of forcing an unseen first token.
_LEADING_SPACE = xgr.Grammar.from_ebnf('root ::= " "?')


class SchemaError(ValueError):
    """A JSON schema that is invalid or that constrained decoding cannot compile."""


def canonical(schema: dict[str, Any]) -> str:
    """A cache key for a schema (key order matters to the grammar, so it is kept)."""
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


def check_schema(schema: Any) -> None:
    """Raise `SchemaError` unless `schema` is a valid JSON schema object."""
    if not isinstance(schema, dict):
        raise SchemaError(f"a JSON schema must be an object, got {type(schema).__name__}")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(part) for part in exc.absolute_path) or "(root)"
        raise SchemaError(f"invalid JSON schema at {where}: {exc.message}") from None


def parse_and_validate(text: str, schema: dict[str, Any]) -> tuple[Any, str | None]:
    """(parsed JSON, None) when `text` is JSON valid against `schema`, else (None, reason)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"output is not valid JSON: {exc.msg} at character {exc.pos}"
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "(root)"
        return None, f"output does not match the schema at {where}: {error.message}"
    return value, None


class GrammarCache:
    """Compiles schemas for one tokenizer, once each (bounded LRU), thread-safe."""

    def __init__(self, tokenizer, vocab_size: int, *, max_entries: int = 256) -> None:
        self.info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=[tokenizer.eos_token_id]
        )
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=2)
        self.vocab_size = vocab_size
        self._compiled: OrderedDict[str, xgr.CompiledGrammar | SchemaError] = OrderedDict()
        self._max_entries = max_entries
        self._lock = threading.Lock()

    def compile(self, schema: dict[str, Any]) -> xgr.CompiledGrammar:
        """The compiled grammar for `schema`; raises `SchemaError` (also cached) when it cannot compile."""
        key = canonical(schema)
        with self._lock:
            hit = self._compiled.get(key)
            if hit is not None:
                self._compiled.move_to_end(key)
        if hit is None:
            try:
                check_schema(schema)
                schema_grammar = xgr.Grammar.from_json_schema(key, any_whitespace=False, strict_mode=True)
                hit = self.compiler.compile_grammar(xgr.Grammar.concat(_LEADING_SPACE, schema_grammar))
            except SchemaError as exc:
                hit = exc
            except (RuntimeError, ValueError, xgr.InvalidJSONError) as exc:
                message = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                message = message.split("] ", 1)[-1]  # drop xgrammar's "[time] file:line" prefix
                hit = SchemaError(f"constrained decoding cannot use this schema: {message}")
            with self._lock:
                self._compiled[key] = hit
                while len(self._compiled) > self._max_entries:
                    self._compiled.popitem(last=False)
        if isinstance(hit, SchemaError):
            raise SchemaError(str(hit))
        return hit

    def matcher(self, schema: dict[str, Any]) -> xgr.GrammarMatcher:
        return xgr.GrammarMatcher(self.compile(schema))


_SHIFTS = torch.arange(32, dtype=torch.int32)
_BYTE_BITS = torch.tensor([[(byte >> bit) & 1 for bit in range(8)] for byte in range(256)], dtype=torch.bool)
# Below this many allowed-bit words per row, masking by the allowed tokens' indices beats a dense unpack.
_SPARSE_WORDS_PER_ROW = 64


def apply_bitmask(scores: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
    """Set to -inf, in place, the logits of `rows` whose tokens the grammar bitmask forbids.

    On GPUs this is xgrammar's kernel. On the CPU xgrammar tests bit by bit (about 1 ms
    for 8 rows of a 32k vocabulary, more than a tiny model's whole decoding step), so we
    vectorise with torch: by the allowed tokens' indices when few are allowed (the usual
    case inside JSON structure), else by unpacking bytes through a lookup table.
    """
    if scores.device.type != "cpu":
        xgr.apply_token_bitmask_inplace(scores, bitmask.to(scores.device), indices=rows)
        return
    vocab = scores.shape[-1]
    index = torch.tensor(rows, dtype=torch.long)
    words = bitmask[index]
    if int(torch.count_nonzero(words)) <= _SPARSE_WORDS_PER_ROW * len(rows):
        row_of, word = torch.nonzero(words, as_tuple=True)
        bits = ((words[row_of, word].unsqueeze(-1) >> _SHIFTS) & 1).bool()
        which, bit = torch.nonzero(bits, as_tuple=True)
        tokens = word[which] * 32 + bit
        keep = tokens < vocab
        target_rows, tokens = index[row_of[which]][keep], tokens[keep]
        allowed = scores[target_rows, tokens]
        scores[index] = float("-inf")
        scores[target_rows, tokens] = allowed
    else:
        allowed = _BYTE_BITS[words.view(torch.uint8).long()].view(len(rows), -1)[:, :vocab]
        scores[index] = scores[index].masked_fill(~allowed, float("-inf"))
