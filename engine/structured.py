"""JSON schemas from users: validated without ever leaving the document, and compiled for constrained decoding.

A schema arrives from whoever calls the predictor or submits a job, so it is untrusted.
It must be self-contained: `validator` (the one way anything here validates against a
user's schema) refuses a `$ref` that is not a fragment of the schema itself (`#...`)
before anything else sees it, refuses schemas nested deeper than `MAX_SCHEMA_DEPTH`
(deep enough for any labeling schema, shallow enough that no check recurses out of
stack), and resolves references through a registry that retrieves nothing, so no
request, file read or hang can come from a schema. Each schema is then checked
(jsonschema's meta-schema), held to limits on what makes a grammar explode over a 32k
vocabulary (enum size, pattern length and repetition), and compiled by xgrammar once
within a deadline, then cached; a schema that cannot be compiled is a `SchemaError`
naming the problem or the limit. During decoding a grammar
matcher per constrained row masks the logits so only tokens that keep the output a
valid prefix survive. After decoding, `parse_and_validate` is the final gate: a result
with a schema is JSON that validates, or an explicit failure.

torch and xgrammar are imported where they are used, so validation (the review console
uses it) does not load the inference stack.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar

import jsonschema
import referencing
import referencing.exceptions
from jsonschema.protocols import Validator

if TYPE_CHECKING:
    import torch
    import xgrammar as xgr

MAX_SCHEMA_DEPTH = 64  # nested objects and arrays in a schema document
# Bounds on what xgrammar compiles (see `_check_grammar_size`), and the deadline for anything else that explodes.
MAX_ENUM_CHARS = 65_536  # all enum and const values of a schema, as JSON
MAX_PATTERN_LENGTH = 1_000
MAX_PATTERN_REPEAT = 1_000  # the largest n or m of a counted repetition {n}, {n,}, {n,m}
MAX_COMPILE_SECONDS = 10.0
_REPEAT_COUNTS = re.compile(r"(?<!\\)\{(\d+)(?:,(\d*))?\}")
T = TypeVar("T")
_REFERENCE_KEYWORDS = ("$ref", "$dynamicRef", "$recursiveRef")
# xgrammar prefixes its messages with "[time] path/file.cc:line: "; the path is the build machine's, not the user's business.
_XGRAMMAR_PREFIX = re.compile(r"^(?:\[[^\]]*\]\s*)?(?:\S+\.(?:cc|cpp|h|hpp):\d+:\s*)?")


class SchemaError(ValueError):
    """A JSON schema that is invalid, not self-contained, or that constrained decoding cannot compile."""


def _retrieve_nothing(uri: str) -> referencing.Resource:
    raise referencing.exceptions.NoSuchResource(ref=uri)


# Every reference resolves within the schema or not at all: nothing is fetched, read or waited for.
_SELF_CONTAINED = referencing.Registry(retrieve=_retrieve_nothing)


def canonical(schema: dict[str, Any]) -> str:
    """A cache key for a schema (key order matters to the grammar, so it is kept)."""
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


def _nodes(schema: dict[str, Any]) -> Iterator[tuple[Any, int]]:
    """Every object and array of a schema document with its depth, iteratively (a deep schema cannot exhaust the stack)."""
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        yield node, depth
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def _self_contained(schema: Any) -> dict[str, Any]:
    """`schema` if it is an object with no reference outside itself and no deeper than `MAX_SCHEMA_DEPTH`, else `SchemaError`.

    It looks at every object, keyword or not, because a `#/...` pointer can make any part
    of the document a schema.
    """
    if not isinstance(schema, dict):
        raise SchemaError(f"a JSON schema must be an object, got {type(schema).__name__}")
    for node, depth in _nodes(schema):
        if depth > MAX_SCHEMA_DEPTH:
            raise SchemaError(f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels of objects and arrays")
        if isinstance(node, dict):
            for keyword in _REFERENCE_KEYWORDS:
                target = node.get(keyword)
                if isinstance(target, str) and not target.startswith("#"):
                    raise SchemaError(
                        f"the schema's {keyword} {target!r} points outside the schema: only references "
                        "within it (#...) are allowed, and nothing is fetched"
                    )
    return schema


def _check_grammar_size(schema: dict[str, Any]) -> None:
    """Refuse, naming the limit, what makes xgrammar's grammar explode on a 32k vocabulary before compiling it.

    Measured on LLaMA's vocabulary: 100,000 short enum values or 4,096 values of 200
    characters take 20 s to over a minute, and a counted repetition of a group,
    `(ab|cd){1,10000}`, 25 s; the labeling schemas this tool is for stay far below these limits.
    """
    enum_chars = 0
    for node, _ in _nodes(schema):
        if not isinstance(node, dict):
            continue
        enum_chars += _enum_chars(node)
        if enum_chars > MAX_ENUM_CHARS:
            raise SchemaError(f"the schema's enum and const values total over {MAX_ENUM_CHARS:,} characters (limit)")
        if isinstance(node.get("pattern"), str):
            _check_pattern(node["pattern"])


def _enum_chars(node: dict[str, Any]) -> int:
    """The JSON length of a schema object's enum and const values: what each adds to the grammar."""
    values = list(node["enum"]) if isinstance(node.get("enum"), list) else []
    if "const" in node:
        values.append(node["const"])
    return sum(len(json.dumps(value, ensure_ascii=False)) for value in values)


def _check_pattern(pattern: str) -> None:
    """Refuse a pattern over `MAX_PATTERN_LENGTH` characters or with a counted repetition over `MAX_PATTERN_REPEAT`."""
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise SchemaError(f"the schema's pattern is {len(pattern):,} characters, over the {MAX_PATTERN_LENGTH:,}-character limit")
    counts = [int(count) for bounds in _REPEAT_COUNTS.findall(pattern) for count in bounds if count]
    if counts and max(counts) > MAX_PATTERN_REPEAT:
        raise SchemaError(f"the schema's pattern {pattern!r} repeats {max(counts):,} times, over the limit of {MAX_PATTERN_REPEAT:,}")


def _within(seconds: float, work: Callable[[], T]) -> T:
    """`work()`, or `SchemaError` when it has not finished after `seconds`.

    xgrammar's compilation cannot be interrupted, so it runs in a daemon thread that is
    left to finish (its failure is cached, so the same schema never starts another);
    the request waiting for it fails within the deadline instead of hanging a batch.
    """
    done: Future[T] = Future()

    def run() -> None:
        try:
            done.set_result(work())
        except BaseException as exc:  # handed to the waiting caller, which sorts it
            done.set_exception(exc)

    threading.Thread(target=run, name="grammar-compile", daemon=True).start()
    try:
        return done.result(timeout=seconds)
    except FutureTimeout:
        raise SchemaError(
            f"constrained decoding cannot use this schema: its grammar did not compile within {seconds:g} s (limit)"
        ) from None


def validator(schema: Any) -> Validator:
    """A jsonschema validator for a user's schema: the one way llava-labeler validates against one.

    Raises `SchemaError` unless `schema` is a valid, self-contained JSON schema object. Its
    registry retrieves nothing, so even a reference the up-front check could not see
    fails as unresolvable instead of fetching.
    """
    schema = _self_contained(schema)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(part) for part in exc.absolute_path) or "(root)"
        raise SchemaError(f"invalid JSON schema at {where}: {exc.message}") from None
    return cls(schema, registry=_SELF_CONTAINED)


def check_schema(schema: Any) -> None:
    """Raise `SchemaError` unless `schema` is a valid, self-contained JSON schema object."""
    validator(schema)


def parse_and_validate(text: str, schema: dict[str, Any]) -> tuple[Any, str | None]:
    """(parsed JSON, None) when `text` is JSON valid against `schema`, else (None, reason)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"output is not valid JSON: {exc.msg} at character {exc.pos}"
    except RecursionError:
        return None, "output is not valid JSON: it nests too deeply to parse"
    try:
        error = jsonschema.exceptions.best_match(validator(schema).iter_errors(value))
    except SchemaError as exc:
        return None, str(exc)
    except referencing.exceptions.Unresolvable as exc:
        return None, f"the schema's reference to {exc.ref!r} does not resolve within the schema"
    except RecursionError:
        return None, "output cannot be validated: it (or the schema's references) nests too deeply"
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "(root)"
        return None, f"output does not match the schema at {where}: {error.message}"
    return value, None


class GrammarCache:
    """Compiles schemas for one tokenizer, once each (bounded LRU), thread-safe."""

    def __init__(
        self, tokenizer, vocab_size: int, *, max_entries: int = 256, compile_timeout_s: float = MAX_COMPILE_SECONDS
    ) -> None:
        import xgrammar as xgr

        self.info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=[tokenizer.eos_token_id]
        )
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=2)
        self.vocab_size = vocab_size
        # vicuna_v1 answers follow "ASSISTANT:" after a space (" {...}"), so models emit a leading-space
        # token first; the grammar allows that one space instead of forcing an unseen first token.
        self._leading_space = xgr.Grammar.from_ebnf('root ::= " "?')
        self._compiled: OrderedDict[str, xgr.CompiledGrammar | SchemaError] = OrderedDict()
        self._max_entries = max_entries
        self.compile_timeout_s = compile_timeout_s
        self._lock = threading.Lock()

    def compile(self, schema: dict[str, Any]) -> xgr.CompiledGrammar:
        """The compiled grammar for `schema`; raises `SchemaError` (also cached) when it cannot compile.

        A reference outside the schema is refused before the cache key is even made, so
        xgrammar never sees one; a schema over the grammar-size limits is refused before
        compiling, and any other compilation is given `compile_timeout_s`.
        """
        import xgrammar as xgr

        key = canonical(_self_contained(schema))
        with self._lock:
            hit = self._compiled.get(key)
            if hit is not None:
                self._compiled.move_to_end(key)
        if hit is None:
            try:
                check_schema(schema)
                _check_grammar_size(schema)
                hit = _within(self.compile_timeout_s, lambda: self._compile(key))
            except SchemaError as exc:
                hit = exc
            except (RuntimeError, ValueError, xgr.InvalidJSONError) as exc:
                message = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                hit = SchemaError(f"constrained decoding cannot use this schema: {_XGRAMMAR_PREFIX.sub('', message)}")
            with self._lock:
                self._compiled[key] = hit
                while len(self._compiled) > self._max_entries:
                    self._compiled.popitem(last=False)
        if isinstance(hit, SchemaError):
            raise SchemaError(str(hit))
        return hit

    def _compile(self, key: str) -> xgr.CompiledGrammar:
        """The grammar of the canonical schema `key`, after the optional leading space."""
        import xgrammar as xgr

        schema_grammar = xgr.Grammar.from_json_schema(key, any_whitespace=False, strict_mode=True)
        return self.compiler.compile_grammar(xgr.Grammar.concat(self._leading_space, schema_grammar))

    def matcher(self, schema: dict[str, Any]) -> xgr.GrammarMatcher:
        import xgrammar as xgr

        return xgr.GrammarMatcher(self.compile(schema))


# Below this many allowed-bit words per row, masking by the allowed tokens' indices beats a dense unpack.
_SPARSE_WORDS_PER_ROW = 64


@cache
def _bit_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """The 32 shifts of a bitmask word, and each byte's 8 bits as booleans (built on first use)."""
    import torch

    byte_bits = torch.tensor([[(byte >> bit) & 1 for bit in range(8)] for byte in range(256)], dtype=torch.bool)
    return torch.arange(32, dtype=torch.int32), byte_bits


def apply_bitmask(scores: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
    """Set to -inf, in place, the logits of `rows` whose tokens the grammar bitmask forbids.

    On GPUs this is xgrammar's kernel. On the CPU xgrammar tests bit by bit (about 1 ms
    for 8 rows of a 32k vocabulary, more than a tiny model's whole decoding step), so we
    vectorise with torch: by the allowed tokens' indices when few are allowed (the usual
    case inside JSON structure), else by unpacking bytes through a lookup table.
    """
    import torch
    import xgrammar as xgr

    if scores.device.type != "cpu":
        xgr.apply_token_bitmask_inplace(scores, bitmask.to(scores.device), indices=rows)
        return
    vocab = scores.shape[-1]
    shifts, byte_bits = _bit_tables()
    index = torch.tensor(rows, dtype=torch.long)
    words = bitmask[index]
    if int(torch.count_nonzero(words)) <= _SPARSE_WORDS_PER_ROW * len(rows):
        row_of, word = torch.nonzero(words, as_tuple=True)
        bits = ((words[row_of, word].unsqueeze(-1) >> shifts) & 1).bool()
        which, bit = torch.nonzero(bits, as_tuple=True)
        tokens = word[which] * 32 + bit
        keep = tokens < vocab
        target_rows, tokens = index[row_of[which]][keep], tokens[keep]
        allowed = scores[target_rows, tokens]
        scores[index] = float("-inf")
        scores[target_rows, tokens] = allowed
    else:
        allowed = byte_bits[words.view(torch.uint8).long()].view(len(rows), -1)[:, :vocab]
        scores[index] = scores[index].masked_fill(~allowed, float("-inf"))
