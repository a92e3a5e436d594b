"""JSON-schema-constrained decoding: valid JSON or an explicit failure, never a crash, on a random model."""

import io
import json
import subprocess
import sys

import jsonschema
import pytest
from pydantic import ValidationError
import referencing.exceptions
from PIL import Image

from engine.backend import GenerationRequest
from engine.structured import MAX_SCHEMA_DEPTH, GrammarCache, SchemaError, check_schema, parse_and_validate, validator

ITEM = {"type": "object", "properties": {"label": {"type": "string", "maxLength": 12}}, "required": ["label"]}

SCHEMAS = {
    "enum": {"type": "string", "enum": ["cat", "dog", "bird"]},
    "bool": {"type": "boolean"},
    "integer-bounded": {"type": "integer", "minimum": 1, "maximum": 4},
    "integer-unbounded": {"type": "integer"},
    "number-bounded": {"type": "number", "minimum": -1.5, "maximum": 2.5},
    "number-unbounded": {"type": "number"},
    "flat-object": {
        "type": "object",
        "properties": {"shape": {"enum": ["circle", "square"]}, "count": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["shape", "count"],
        "additionalProperties": False,
    },
    "optional-fields": {
        "type": "object",
        "properties": {"a": {"type": "boolean"}, "b": {"type": "integer", "minimum": 0, "maximum": 3}},
        "required": ["a"],
        "additionalProperties": False,
    },
    "nested-object": {
        "type": "object",
        "properties": {
            "box": {
                "type": "object",
                "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 99}, "y": {"type": "integer", "minimum": 0, "maximum": 99}},
                "required": ["x", "y"],
            }
        },
        "required": ["box"],
    },
    "array-min-max": {"type": "array", "items": {"enum": ["red", "green"]}, "minItems": 1, "maxItems": 3},
    "array-of-objects": {"type": "array", "items": ITEM, "minItems": 1, "maxItems": 2},
    "defs-ref": {
        "$defs": {"color": {"enum": ["red", "green", "blue"]}},
        "type": "object",
        "properties": {"fg": {"$ref": "#/$defs/color"}, "bg": {"$ref": "#/$defs/color"}},
        "required": ["fg", "bg"],
    },
    "any-of": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 5}, {"enum": ["none"]}]},
    "nullable": {"type": ["string", "null"], "maxLength": 5},
    "const": {"type": "object", "properties": {"kind": {"const": "shape"}}, "required": ["kind"]},
    "string-pattern": {"type": "string", "pattern": "^[a-c]{2,4}$"},
    "deep": {
        "type": "object",
        "properties": {
            "objects": {
                "type": "array",
                "maxItems": 2,
                "items": {
                    "type": "object",
                    "properties": {"shape": {"enum": ["star"]}, "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2}},
                    "required": ["shape"],
                },
            }
        },
        "required": ["objects"],
    },
}


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def test_at_least_fifteen_schemas_are_exercised():
    assert len(SCHEMAS) >= 15


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
def test_every_schema_gives_valid_json_or_an_explicit_failure(tiny_backend, temperature):
    image = png()
    requests = [
        GenerationRequest(image=image, task="json", instruction=name, schema=schema, max_new_tokens=48,
                          temperature=temperature, seed=7)
        for name, schema in SCHEMAS.items()
    ]
    results = tiny_backend.generate(requests)
    valid = 0
    for (name, schema), result in zip(SCHEMAS.items(), results):
        if result.error is None:
            assert result.finish_reason == "stop", name
            jsonschema.validate(result.json, schema)
            assert parse_and_validate(result.text, schema) == (result.json, None)
            valid += 1
        else:
            assert result.json is None, name
            assert result.error.startswith(("length:", "output does not match", "output is not valid JSON")), result.error
            if result.error.startswith("length:"):
                assert result.finish_reason == "length" and result.tokens == 48
    # Enums, booleans and bounded integers are too short to run out of budget: they must all succeed.
    assert valid >= 6


def test_json_cut_off_by_the_length_limit_is_a_failure_not_done(tiny_backend):
    schema = {"type": "array", "items": {"type": "string"}, "minItems": 5}
    result = tiny_backend.generate([GenerationRequest(image=png(), task="json", schema=schema, max_new_tokens=3)])[0]
    assert result.finish_reason == "length"
    assert result.error == "length: the JSON answer was cut off at max_new_tokens=3"
    assert result.json is None


@pytest.mark.parametrize(
    "schema, message",
    [
        ({"type": "strin"}, "invalid JSON schema at type"),
        ({"type": "object", "required": "name"}, "invalid JSON schema at required"),
        ({"type": "integer", "minimum": "zero"}, "invalid JSON schema at minimum"),
    ],
)
def test_invalid_schemas_are_rejected_with_the_problem_named(tiny_backend, schema, message):
    with pytest.raises(SchemaError, match=message):
        check_schema(schema)
    result = tiny_backend.generate([GenerationRequest(image=png(), task="json", schema=schema)])[0]
    assert result.finish_reason == "error" and message.split(" at ")[0] in result.error


def test_a_schema_that_is_not_an_object_is_refused_by_the_request_itself():
    with pytest.raises(SchemaError, match="must be an object, got list"):
        check_schema([1, 2])
    with pytest.raises(ValidationError, match="schema\n  Input should be a valid dictionary"):
        GenerationRequest(image=png(), task="json", schema=[1, 2])


def test_a_schema_xgrammar_cannot_compile_is_a_per_item_error(tiny_backend):
    schema = {"$ref": "#/$defs/missing"}
    result = tiny_backend.generate([GenerationRequest(image=png(), task="json", schema=schema)])[0]
    assert result.error.startswith("constrained decoding cannot use this schema"), result.error


def test_schemas_compile_once_and_are_cached(tiny_backend):
    cache = GrammarCache(tiny_backend.tokenizer, tiny_backend.grammars.vocab_size, max_entries=2)
    calls = []
    original = cache.compiler.compile_grammar
    cache.compiler = type("Counting", (), {"compile_grammar": lambda self, *a, **k: calls.append(a) or original(*a, **k)})()
    first = cache.compile(SCHEMAS["enum"])
    assert cache.compile(dict(SCHEMAS["enum"])) is first
    assert len(calls) == 1
    cache.compile(SCHEMAS["bool"])
    cache.compile(SCHEMAS["integer-bounded"])  # evicts "enum" (LRU of 2)
    cache.compile(SCHEMAS["enum"])
    assert len(calls) == 4
    with pytest.raises(SchemaError):
        cache.compile({"type": "strin"})
    with pytest.raises(SchemaError):
        cache.compile({"type": "strin"})
    assert len(calls) == 4  # invalid schemas fail before compiling


@pytest.mark.parametrize("density", [0.001, 0.02, 0.5, 0.97], ids=["very-sparse", "sparse", "half", "dense"])
def test_cpu_mask_matches_xgrammars_own_kernel(density):
    import torch
    import xgrammar as xgr

    from engine.structured import apply_bitmask

    generator = torch.Generator().manual_seed(0)
    vocab = 32_064 + 7  # not a multiple of 32
    allowed = torch.rand(6, vocab, generator=generator) < density
    width = xgr.allocate_token_bitmask(6, vocab).shape[1]
    padded = torch.zeros(6, width * 32, dtype=torch.int64)
    padded[:, :vocab] = allowed
    packed = (padded.view(6, width, 32) << torch.arange(32)).sum(-1)
    bitmask = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)
    scores = torch.randn(6, vocab, generator=generator)
    rows = [0, 2, 3, 5]
    expected = scores.clone()
    xgr.apply_token_bitmask_inplace(expected, bitmask, indices=rows)
    ours = scores.clone()
    apply_bitmask(ours, bitmask, rows)
    assert torch.equal(ours, expected)
    assert torch.equal(ours[1], scores[1])  # rows not listed are untouched


def test_a_leading_space_is_allowed_because_vicuna_answers_start_with_one(tiny_backend):
    matcher = tiny_backend.grammars.matcher({"type": "boolean"})
    tokenizer = tiny_backend.tokenizer
    for token in tokenizer.encode(" true", add_special_tokens=False):
        assert matcher.accept_token(token)
    assert matcher.accept_token(tokenizer.eos_token_id) and matcher.is_terminated()
    assert parse_and_validate(" true".strip(), {"type": "boolean"}) == (True, None)


ELSEWHERE = "http://127.0.0.1:9"  # nothing listens there; nothing may even try


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": f"{ELSEWHERE}/a.json"},
        {"type": "object", "properties": {"a": {"$ref": f"{ELSEWHERE}/a.json"}}},
        {"$defs": {"a": {"$ref": f"{ELSEWHERE}/a.json"}}, "$ref": "#/$defs/a"},
        {"items": {"anyOf": [{"type": "null"}, {"$dynamicRef": f"{ELSEWHERE}/a.json"}]}},
        {"$id": f"{ELSEWHERE}/root.json", "$ref": "a.json"},
        {"$ref": "file:///etc/hostname"},
    ],
    ids=["root", "property", "defs", "dynamic-ref", "relative-to-id", "file"],
)
def test_references_outside_the_schema_are_refused_everywhere(tiny_backend, schema):
    with pytest.raises(SchemaError, match="points outside the schema"):
        check_schema(schema)
    with pytest.raises(SchemaError, match="points outside the schema"):
        validator(schema)
    with pytest.raises(SchemaError, match="points outside the schema"):
        tiny_backend.grammars.compile(schema)
    value, reason = parse_and_validate("1", schema)
    assert value is None and "points outside the schema" in reason


def test_the_validators_registry_retrieves_nothing_even_past_the_check(tmp_path):
    secret = tmp_path / "schema.json"
    secret.write_text(json.dumps({"type": "integer"}))
    # evolve() swaps the schema but keeps the resolver: a reference the up-front check never saw.
    # jsonschema's default registry would read the file and answer True; ours cannot resolve it.
    unchecked = validator({"type": "object"}).evolve(schema={"$ref": secret.as_uri()})
    with pytest.raises(referencing.exceptions.Unresolvable):
        unchecked.is_valid(1)


def test_local_references_and_a_property_named_ref_are_fine():
    schema = {
        "$defs": {"colour": {"enum": ["red", "blue"]}},
        "type": "object",
        "properties": {"$ref": {"type": "string"}, "fg": {"$ref": "#/$defs/colour"}},
    }
    assert validator(schema).is_valid({"$ref": "x", "fg": "red"})
    assert parse_and_validate('{"fg": "green"}', schema)[1].startswith("output does not match the schema at fg")


def nested(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth - 1):
        schema = {"type": "array", "items": schema}
    return schema


def test_schemas_deeper_than_the_limit_are_refused_before_anything_recurses(tiny_backend):
    validator(nested(MAX_SCHEMA_DEPTH))
    for depth in (MAX_SCHEMA_DEPTH + 1, 505, 5000):
        with pytest.raises(SchemaError, match=f"nests deeper than {MAX_SCHEMA_DEPTH} levels"):
            check_schema(nested(depth))
        with pytest.raises(SchemaError, match=f"nests deeper than {MAX_SCHEMA_DEPTH} levels"):
            tiny_backend.grammars.compile(nested(depth))


@pytest.mark.parametrize(
    "text, schema, reason",
    [
        ("[" * 5000 + "]" * 5000, {"type": "array"}, "nests too deeply to parse"),
        ("[[[[1]]]]", {"allOf": [{"$ref": "#"}]}, "nests too deeply"),
        ("1", {"$ref": "#/$defs/missing"}, "reference to '/$defs/missing' does not resolve within the schema"),
    ],
    ids=["deep-output", "self-referencing-schema", "missing-local-ref"],
)
def test_validation_that_cannot_finish_is_a_reason_not_a_crash(text, schema, reason):
    value, why = parse_and_validate(text, schema)
    assert value is None and reason in why


def test_xgrammar_messages_name_no_source_files(tiny_backend):
    with pytest.raises(SchemaError) as raised:
        tiny_backend.grammars.compile({"$ref": "#"})
    assert "Circular $ref" in str(raised.value) and ".cc:" not in str(raised.value)


def test_validation_does_not_load_the_inference_stack():
    # The review console validates edits against job schemas; it must not import torch to do so.
    code = "import sys, engine.structured as s; s.validator({'type': 'object'}); print('torch' in sys.modules, 'xgrammar' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == ["False", "False"]
